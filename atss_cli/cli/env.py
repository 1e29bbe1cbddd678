"""`atss env`: versions, the extension (loaded or why not, CUDA or not, archs) and the GPUs."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

import typer

from atss_cli.cli.common import JsonOut, console


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("env")(env_command)


def _nvcc_version() -> str | None:
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    nvcc = nvcc if os.path.exists(nvcc) else shutil.which("nvcc")
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].strip()
    return None


def kernel_image(capability: str, archs: str) -> str | None:
    """The extension's code a GPU of `capability` runs ('sm_80', 'compute_90 PTX'), or None."""
    from atss_cli import build_flags

    try:
        return build_flags.kernel_image_for(capability, archs)
    except ValueError:
        return None


def collect_env() -> dict:
    """Everything `atss env` reports, as plain data."""
    import torch

    from atss_cli import __version__
    from atss_cli.ops import extension

    info = extension.build_info()
    archs = info.get("cuda_archs") or ""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            cap = f"{p.major}.{p.minor}"
            image = kernel_image(cap, archs) if info.get("with_cuda") else None
            gpus.append({"index": i, "name": p.name, "capability": cap,
                         "memory_gb": round(p.total_memory / 2**30, 1),
                         "kernels_built_for_it": image is not None, "kernel_image": image})
    try:
        import torchvision

        tv = torchvision.__version__
    except ImportError:
        tv = None
    return {
        "atss": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": tv,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "nvcc": _nvcc_version(),
        "cpu_threads": torch.get_num_threads(),
        "extension_loaded": extension.available(),
        "extension_reason": extension.reason() or None,
        "extension_path": getattr(extension._C, "__file__", None),
        "extension_with_cuda": info.get("with_cuda"),
        "extension_cuda_version": info.get("cuda_version"),
        "extension_cuda_archs": archs or None,
        "extension_cuda_code": extension.describe_archs(archs) if archs else None,
        "extension_compiler": info.get("compiler"),
        "extension_torch": info.get("torch_version"),
        "ops_backend_cpu": "extension" if extension.supports(torch.device("cpu")) else "reference",
        "ops_backend_cuda": ("extension" if extension.supports(torch.device("cuda")) else "reference")
        if gpus else None,
        "ops_cuda_fallback_reason": (extension.no_cuda_kernels_reason() or None) if gpus else None,
        "gpus": gpus,
    }


def env_command(json_out: JsonOut = None) -> None:
    """Show versions, whether the C++/CUDA extension loaded (and why not), and the GPUs."""
    data = collect_env()
    out = console()
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()

    def row(key, value):
        table.add_row(key, "-" if value is None else str(value))

    row("atss", data["atss"])
    row("python", data["python"])
    row("platform", data["platform"])
    row("torch", f"{data['torch']} (CUDA {data['torch_cuda']}, cuDNN {data['cudnn']})")
    row("torchvision", data["torchvision"])
    row("nvcc", data["nvcc"])
    row("CPU threads", data["cpu_threads"])
    if data["extension_loaded"]:
        row("extension", f"loaded: {data['extension_path']}")
        cuda = (f"yes, CUDA {data['extension_cuda_version']}, {data['extension_cuda_code']} "
                f"(TORCH_CUDA_ARCH_LIST {data['extension_cuda_archs']})"
                if data["extension_with_cuda"] else "no (CPU kernels only)")
        row("  with CUDA", cuda)
        row("  compiler", data["extension_compiler"])
        row("  built for torch", data["extension_torch"])
    else:
        row("extension", f"NOT loaded: {data['extension_reason']}")
    row("ops on CPU", data["ops_backend_cpu"])
    if not data["gpus"]:
        row("GPUs", "none")
    for g in data["gpus"]:
        runs = (f", runs the {g['kernel_image']} code" if g["kernel_image"]
                else " (the extension has no kernels built for this arch)" if data["extension_with_cuda"] else "")
        row(f"GPU {g['index']}", f"{g['name']}, sm_{g['capability'].replace('.', '')}, {g['memory_gb']} GB{runs}")
    if data["gpus"]:
        reason = data["ops_cuda_fallback_reason"]
        row("ops on CUDA", data["ops_backend_cuda"] + (f" ({reason})" if reason else ""))
    out.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(data, indent=2) + "\n")
        out.print(f"wrote {json_out}")
