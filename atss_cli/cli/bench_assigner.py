"""`atss bench assigner`: the ATSS assignment kernels against the pure-PyTorch reference."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import JsonOut, console, fail


class BenchDevice(str, enum.Enum):
    all = "all"
    cpu = "cpu"
    cuda = "cuda"


class Impl(str, enum.Enum):
    reference = "reference"
    extension = "extension"


class GeometryMode(str, enum.Enum):
    auto = "auto"
    on = "on"
    off = "off"
    both = "both"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("assigner")(bench_assigner_command)


def bench_assigner_command(
    batch: Annotated[Optional[list[int]], typer.Option(
        "--batch", min=1, help="Images per batch; repeat for several (default 2 and 16).")] = None,
    num_gt: Annotated[Optional[list[int]], typer.Option(
        "--num-gt", "-m", min=0, help="GT boxes per image; repeat (default 8, 100, 1000, 3000).")] = None,
    device: Annotated[BenchDevice, typer.Option(
        "--device", help="all (CPU, and CUDA when present), cpu or cuda.")] = BenchDevice.all,
    backend: Annotated[Optional[list[Impl]], typer.Option(
        "--backend", help="reference and/or extension; repeat (default both).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed calls per case.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=1, help="Untimed calls first (the first also "
                                                                 "measures peak memory).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generated scenes.")] = 0,
    no_validate: Annotated[bool, typer.Option(
        "--no-validate", help="validate=False: skip the value checks (on CUDA: no device sync).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    reference_seconds: Annotated[float, typer.Option(
        "--reference-seconds", min=0, help="Skip a reference case estimated to take longer per call.")] = 30.0,
    reference_memory_gb: Annotated[float, typer.Option(
        "--reference-memory-gb", min=0, help="Skip a reference case estimated to need more memory.")] = 4.0,
    geometry: Annotated[GeometryMode, typer.Option(
        "--geometry", help="Pass ops.GridGeometry to the extension: auto/on (when the build has it), off, "
                           "or both (a row each).")] = GeometryMode.auto,
    graph: Annotated[bool, typer.Option(
        "--graph/--no-graph", help="On CUDA, also time the replay of a captured CUDA graph.")] = True,
    gpu_calls: Annotated[int, typer.Option(
        "--gpu-calls", min=1, help="On CUDA, calls per CUDA-event sample and per captured graph.")] = 50,
    case_seconds: Annotated[float, typer.Option(
        "--case-seconds", min=0.1, help="Fewer repeats where a case would take longer.")] = 20.0,
    quick: Annotated[bool, typer.Option(
        "--quick", help="A few seconds: batch 2, M = 8 and 100, 5 runs (unless given explicitly).")] = False,
    markdown: Annotated[Optional[Path], typer.Option(
        "--markdown", dir_okay=False, help="Also write the table as markdown to this path.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Time ops.atss_assign on 1333x800 batches: median, spread, peak memory, speed-up."""
    from atss_cli.atomic import atomic_write_text
    from atss_cli.benchmarks import assigner as bench

    if json_out is not None and not json_out.parent.exists():
        fail(f"--json: directory {json_out.parent} does not exist")
    if markdown is not None and not markdown.parent.exists():
        fail(f"--markdown: directory {markdown.parent} does not exist")
    settings = bench.Settings(
        batches=batch or (bench.QUICK_BATCHES if quick else bench.DEFAULT_BATCHES),
        num_gts=num_gt or (bench.QUICK_NUM_GTS if quick else bench.DEFAULT_NUM_GTS),
        devices=("cpu", "cuda") if device == BenchDevice.all else (device.value,),
        backends=[b.value for b in backend] if backend else ("reference", "extension"),
        repeats=5 if quick and repeats == 20 else repeats,
        warmup=1 if quick and warmup == 2 else warmup,
        seed=seed, validate=not no_validate, threads=threads,
        reference_seconds=reference_seconds, reference_memory_gb=reference_memory_gb,
        case_seconds=case_seconds, geometry=geometry.value, gpu_calls=gpu_calls, cuda_graph=graph,
    )
    if device == BenchDevice.cuda:
        import torch

        if not torch.cuda.is_available():
            fail("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    out = console()
    if not out.is_terminal:
        out.width = max(out.width, 140)

    def save(result: dict) -> None:
        # After every case, so that a run cut short (a time-boxed GPU check) keeps what it measured.
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
        if markdown is not None:
            atomic_write_text(markdown, bench.markdown_table(result))

    result = bench.run(settings, progress=lambda msg: out.print(f"[dim]timing {msg}[/dim]")
                       if out.is_terminal else None, checkpoint=save)
    save(result)
    print_result(out, result)
    for path in (json_out, markdown):
        if path is not None:
            out.print(f"wrote {path}")


def print_result(out, result: dict) -> None:
    from rich.table import Table

    from atss_cli.benchmarks.assigner import _f, _has_gpu_times, _range, _spread, _x

    env = result["environment"]
    out.print(f"torch {env['torch']} (CUDA {env['torch_cuda']}), python {env['python']}; "
              f"CPU {env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} torch threads, "
              f"load {env['load_average']}); GPU {env['gpu'] or 'none'}")
    out.print(env["extension"])
    table = Table(title=f"atss bench assigner: {env['image_hw'][1]}x{env['image_hw'][0]} images, "
                        f"validate={env['validate']}, seed {env['seed']} (ms per call)", title_justify="left")
    for col, justify in (("device", "left"), ("backend", "left"), ("batch", "right"), ("M", "right"),
                         ("median", "right"), ("IQR", "right"), ("min-max", "right"), ("peak MB", "right"),
                         ("speed-up", "right"), ("mem ratio", "right"), ("runs", "right")):
        table.add_column(col, justify=justify)
    gpu = _has_gpu_times(result)
    if gpu:
        for col in ("GPU us events", "GPU us graph", "GPU speed-up", "enqueue us"):
            table.add_column(col, justify="right")
    table.add_column("note", justify="left")
    for r in result["rows"]:
        cells = [r["device"], r["backend"] + (" +geo" if r.get("geometry") else ""), str(r["batch"]),
                 str(r["num_gt"]), _f(r["median_ms"]), _range(r["q1_ms"], r["q3_ms"]),
                 _range(r["min_ms"], r["max_ms"]), _f(r["peak_mb"]), _x(r["speedup"], r["backend"]),
                 _x(r["memory_ratio"], r["backend"]), str(r["runs"])]
        if gpu:
            cells += [_spread(r.get("event_us"), r.get("event_q1_us"), r.get("event_q3_us")),
                      _spread(r.get("graph_us"), r.get("graph_q1_us"), r.get("graph_q3_us")),
                      _x(r.get("speedup_gpu"), r["backend"]), _f(r.get("host_us"))]
        table.add_row(*cells, r["note"])
    out.print(table)
    for note in result["notes"]:
        out.print(f"note: {note}")
