"""`atss env`: versions, the extension (loaded or why not, CUDA or not, archs) and the GPUs."""

from __future__ import annotations

import json

import typer

from atss_cli.cli.common import JsonOut, console
from atss_cli.environment import collect_env


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("env")(env_command)


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
