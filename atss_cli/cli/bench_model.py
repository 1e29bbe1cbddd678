"""`atss bench model`: images/s of the detector's forward, training step and predict."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Device, JsonOut, console, progress_printer, write_json


class Backend(str, enum.Enum):
    torch = "torch"
    onnxruntime = "onnxruntime"


class Mode(str, enum.Enum):
    forward = "forward"
    train = "train"
    predict = "predict"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("model")(bench_model_command)


def bench_model_command(
    device: Annotated[Device, typer.Option("--device", help="auto (CPU, and CUDA when present), cpu or cuda.")] = Device.auto,
    size: Annotated[Optional[list[str]], typer.Option(
        "--size", help="Image size WxH before padding to 32; repeat for several (default 1333x800 and 640x480).")] = None,
    mode: Annotated[Optional[list[Mode]], typer.Option(
        "--mode", help="forward, train (forward+loss+backward+SGD) or predict; repeat (default all).")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per call.")] = 2,
    depth: Annotated[int, typer.Option("--depth", help="ResNet depth: 18, 34, 50 or 101.")] = 50,
    preset: Annotated[Optional[str], typer.Option("--preset", help="A named model preset instead of --depth "
                                                                   "(r50, r101, tiny).")] = None,
    amp: Annotated[Amp, typer.Option("--amp", help="Autocast: none, bf16 or fp16.")] = Amp.none,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Model and images in channels_last.")] = False,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per case.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before timing.")] = 1,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", exists=True, dir_okay=False, help="Load these weights (default: random init).")] = None,
    dense_scores: Annotated[bool, typer.Option(
        "--dense-scores", help="Every score above the threshold: post-processing at its worst.")] = False,
    backend: Annotated[Optional[list[Backend]], typer.Option(
        "--backend", help="torch and/or onnxruntime (predict rows, CPU); repeat for both (default torch).")] = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", exists=True, dir_okay=False,
        help="--backend onnxruntime: time this `atss export` file (default: the --depth/--preset model, "
             "exported in memory).")] = None,
    json_out: JsonOut = None,
) -> None:
    """Time the ATSS detector: median seconds per call, spread and images/s."""
    from atss_cli.benchmarks import model as bench

    sizes = [bench.parse_size(s) for s in size] if size else list(bench.DEFAULT_SIZES)
    backends = [b.value for b in backend] if backend else ["torch"]
    modes = [m.value for m in mode] if mode else (list(bench.MODES) if "torch" in backends else ["predict"])
    devices = bench.resolve_devices(device.value) if "torch" in backends else ["cpu"]
    out = console()
    if not out.is_terminal:
        out.width = max(out.width, 132)  # logs and pipes: keep the table on one line per row
    rows = bench.bench_model(
        devices=devices, sizes=sizes, modes=modes, batch=batch, depth=depth, preset=preset,
        amp=amp.value, channels_last=channels_last, repeats=repeats, warmup=warmup, threads=threads,
        checkpoint=str(checkpoint) if checkpoint else None, dense_scores=dense_scores,
        backends=backends, onnx=str(onnx) if onnx else None,
        progress=progress_printer(out, "timing "))
    env = bench.environment(devices)
    print_rows(out, rows, env)
    write_json(out, json_out, {"environment": env, "rows": [r.as_dict() for r in rows]})


def print_rows(out, rows, env: dict) -> None:
    from rich.table import Table

    devices = ", ".join(f"{k}: {v}" for k, v in env["devices"].items())
    out.print(f"torch {env['torch']} (CUDA {env['cuda']}), torchvision {env['torchvision']}, "
              f"python {env['python']}, {env['threads']} CPU threads; {devices}")
    if env.get("load_average"):
        out.print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in env["load_average"])
                  + " (a shared machine: compare rows of one run)")
    table = Table(title="atss bench model (seconds per call; spread = min..max and IQR/median; "
                        "CPU s = process CPU time per call, all threads)",
                  title_justify="left")
    for name in ("device", "backend", "mode", "size (padded)", "B", "model", "median s", "min..max s", "IQR",
                 "s/img", "img/s", "CPU s", "dets", "peak GB"):
        table.add_column(name, justify="left" if name in ("device", "backend", "mode", "size (padded)", "model")
                         else "right", no_wrap=True)
    for r in rows:
        variant = f"R{r.depth} {'fp32' if r.amp == 'none' else r.amp}" + (" NHWC" if r.channels_last else "")
        table.add_row(r.device, r.backend, r.mode, f"{r.size} ({r.padded})", str(r.batch), variant,
                      f"{r.median_s:.3f}", f"{r.min_s:.3f}..{r.max_s:.3f}", f"{r.iqr_pct:.0f}%",
                      f"{r.s_per_image:.3f}", f"{r.images_per_s:.2f}", f"{r.cpu_s:.2f}",
                      "" if r.detections is None else f"{r.detections:.0f}",
                      "" if r.peak_gb is None else f"{r.peak_gb:.1f}")
    out.print(table)
