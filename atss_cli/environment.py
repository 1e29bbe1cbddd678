"""The facts about this machine and its software that a report needs: one collector for `atss env`,
the benchmarks' headers and the checkpoints' meta.

    cpu_name() -> str           the CPU model (/proc/cpuinfo), standard library only
    load_average(ndigits=None)  os.getloadavg() as a list, or None
    versions() -> dict          atss, torch, torchvision, CUDA (torch's build) and Python versions
    device_name(device) -> str  a CUDA device's name, or the CPU's
    collect_env() -> dict       everything `atss env` shows (versions, the extension, the GPUs)

Importing this module imports the standard library only (bench/driver_common.py uses cpu_name
in MMDetection's environment and in the torch-free ONNX Runtime one).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (what a benchmark row was measured on)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average(ndigits: int | None = None) -> list[float] | None:
    if not hasattr(os, "getloadavg"):
        return None
    values = list(os.getloadavg())
    return [round(x, ndigits) for x in values] if ndigits is not None else values


def versions() -> dict:
    import torch
    import torchvision

    from atss_cli import __version__

    return {"atss": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


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
