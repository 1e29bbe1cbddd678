"""`atss eval`: COCO box AP of a checkpoint (ours or MMDetection's) on a COCO split or on any
COCO-format annotation file with its image folder (`--ann FILE --images DIR`).

One process, or N processes through torch.distributed.run (`--gpus N` on CUDA with NCCL,
`--device cpu --nproc N` with gloo): the parent re-runs this same command under the launcher,
and each process, seeing WORLD_SIZE in its environment, evaluates its share of the images;
rank 0 writes the detections and prints the table.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Depth, Device, FpnChannels, HeadChannels, StackedConvs, fail, process_plan


class Evaluator(str, enum.Enum):
    faster = "faster-coco-eval"
    pycocotools = "pycocotools"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("eval", no_args_is_help=True)(eval_command)


def eval_command(
    coco: Annotated[Optional[Path], typer.Option("--coco", help="COCO root (annotations/, val2017/).",
                                                 exists=True, file_okay=False, resolve_path=True)] = None,
    ann: Annotated[Optional[Path], typer.Option(
        "--ann", help="Any COCO-format annotation file (instead of --coco); needs --images.",
        resolve_path=True)] = None,
    images: Annotated[Optional[Path], typer.Option(
        "--images", help="Folder the --ann file_name values are relative to.", resolve_path=True)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Our checkpoint or MMDetection's ATSS one.", exists=True, dir_okay=False,
        resolve_path=True)] = None,
    detections: Annotated[Optional[Path], typer.Option(
        "--detections", help="Score this COCO results file instead of running a model.", exists=True,
        dir_okay=False, resolve_path=True)] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="--coco: image folder and annotation suffix "
                                                                 "[default: val2017].")] = None,
    depth: Depth = None,
    fpn_channels: FpnChannels = None,
    head_channels: HeadChannels = None,
    stacked_convs: StackedConvs = None,
    evaluator: Annotated[Evaluator, typer.Option(
        "--evaluator", help="faster-coco-eval or pycocotools.")] = Evaluator.faster,
    json_out: Annotated[Optional[Path], typer.Option(
        "--json", dir_okay=False, help="Also write the metrics as JSON here.")] = None,
    results: Annotated[Optional[Path], typer.Option(
        "--results", dir_okay=False,
        help="Detections file (COCO result format); default <checkpoint>.<split>.bbox.json here.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also report AP per category.")] = False,
    device: Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")] = Device.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 1,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Data loader processes.")] = 2,
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=1, help="CUDA processes on this node (NCCL).")] = None,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes with --device cpu (gloo).")] = 1,
    scale: Annotated[Optional[str], typer.Option("--scale", help="Test resize LONG,SHORT (default: checkpoint "
                                                                 "config, else 1333,800).")] = None,
    amp: Annotated[Amp, typer.Option("--amp", help="Mixed precision: none, bf16 or fp16.")] = Amp.none,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", file_okay=False,
                                                      help="Annotation cache folder.")] = None,
    # ---- issue 19: --analyze DIR, --onnx FILE
    analyze: Annotated[Optional[Path], typer.Option(
        "--analyze", file_okay=False, resolve_path=True,
        help="Also write the error analysis here: PR curves, per-class AP, confusion matrix, TIDE, "
             "a gallery, analysis.json and report.html.")] = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", help="An `atss export` file, run with ONNX Runtime on the CPU (instead of --checkpoint).",
        exists=True, dir_okay=False, resolve_path=True)] = None,
) -> None:
    """Evaluate a checkpoint with COCOeval (bbox): the 12 standard metrics."""
    from atss_cli.engine.inference import parse_scale

    scale_wh = parse_scale(scale)  # checked before anything slow
    if coco is not None and (ann is not None or images is not None):
        fail("give either --coco ROOT or --ann FILE --images DIR, not both")
    if coco is None:
        if ann is None or images is None:
            fail("give --coco ROOT, or --ann FILE with --images DIR" if ann is None and images is None else
                 ("--ann needs --images DIR too" if images is None else "--images needs --ann FILE too"))
        if split is not None:
            fail("--split is for --coco; with --ann the annotation file is the split")
        from atss_cli.data.cache import check_ann

        check_ann(ann, images)
    split = "val2017" if split is None else split.strip()
    if not split or "/" in split:
        fail(f"--split {split!r}: expected a split name like val2017")
    # What the results file and the table are named after: the split, or the annotation file.
    set_name = split if coco is not None else (ann.name[:-5] if ann.name.endswith(".json") else ann.name)
    if sum(x is not None for x in (checkpoint, detections, onnx)) != 1:
        fail("give --checkpoint CKPT or --onnx FILE (run a model) or --detections FILE (score a results file), "
             "one of them")
    if detections is not None:
        metrics = _score_file(detections, coco, split, ann, images, cache_dir, evaluator.value, per_class, json_out,
                              set_name)
        _analyze(analyze, metrics, coco, split, ann, images, cache_dir, set_name)  # issue 19
        return
    if onnx is not None:  # ---- issue 19: --onnx, one process on the CPU
        metrics = _eval_onnx(onnx, results, coco, split, ann, images, cache_dir, evaluator.value, per_class,
                             json_out, set_name, gpus, nproc)
        _analyze(analyze, metrics, coco, split, ann, images, cache_dir, set_name)
        return
    if results is None:
        results = Path.cwd() / f"{checkpoint.stem}.{set_name}.bbox.json"
    results = results.resolve()
    for out in (results, json_out):
        if out is not None and out.exists() and out.is_dir():
            fail(f"{out} is a folder; give a file path")

    in_worker = int(os.environ.get("WORLD_SIZE", "1")) > 1
    procs = 1
    dev = device.value
    if not in_worker:
        procs, dev = process_plan(gpus, nproc, device)
    overrides = {"depth": depth, "fpn_channels": fpn_channels, "head_channels": head_channels,
                 "stacked_convs": stacked_convs}
    if procs > 1:
        from atss_cli.engine.distributed import launch
        from atss_cli.engine.evaluate import check_eval_inputs

        check_eval_inputs(checkpoint, coco, split=split, ann=ann, images=images, cache_dir=cache_dir,
                          model_overrides=overrides)

        args = _worker_args(dict(
            coco=coco, ann=ann, images=images, checkpoint=checkpoint, split=split, depth=depth, fpn_channels=fpn_channels,
            head_channels=head_channels, stacked_convs=stacked_convs, evaluator=evaluator.value,
            json_out=json_out, results=results, per_class=per_class, device=dev, batch_size=batch_size,
            workers=workers, scale=scale, amp=amp.value, cache_dir=cache_dir, analyze=analyze))
        launch("atss_cli", args, nproc=procs, what="evaluation")
        return

    from atss_cli.cli.common import console
    from atss_cli.engine.evaluate import evaluate_checkpoint

    rank = int(os.environ.get("RANK", "0"))
    con = console()
    progress, stop = _progress(con) if rank == 0 else (None, lambda: None)
    try:
        metrics = evaluate_checkpoint(
            checkpoint, coco, split=split, ann=ann, images=images, cache_dir=cache_dir,
            model_overrides=overrides, device=dev, batch_size=batch_size, workers=workers, scale=scale_wh, evaluator=evaluator.value,
            per_class=per_class, results_path=results, amp=None if amp is Amp.none else amp.value,
            progress=progress)
    finally:
        stop()
    if rank != 0:
        return
    print_metrics(con, metrics, title=f"COCO bbox: {checkpoint.name} on {set_name}")
    _write_metrics(json_out, metrics)
    _analyze(analyze, metrics, coco, split, ann, images, cache_dir, set_name)  # issue 19


# ---- issue 19: --analyze and --onnx ------------------------------------------------------------
def _analyze(out_dir: Path | None, metrics: dict, coco, split, ann, images, cache_dir, set_name: str) -> None:
    """--analyze DIR: the error analysis of the detections just scored, against the ground truth
    COCOeval scored them on (rank 0 only; the caller returns on the other ranks first)."""
    if out_dir is None:
        return
    from atss_cli.engine.evaluate import _open, eval_ground_truth
    from atss_cli.evaluation.analysis import analyze

    cache = _open(coco, split, ann, images, cache_dir)
    result = analyze(eval_ground_truth(cache), metrics["results"], out_dir,
                     images_dir=cache.image_dir if cache.image_dir.is_dir() else None, name=set_name)
    if result["gallery"].get("skipped"):
        typer.echo(result["gallery"]["skipped"])
    t = result["tide"]
    worst = max(t["dap"], key=t["dap"].get)
    typer.echo(f"analysis: {out_dir / 'report.html'} (TIDE AP50 {t['ap50']:.1f}; most lost to {worst}: "
               f"{t['dap'][worst]:.1f}; {result['seconds']['total']:.1f} s)")


def _eval_onnx(onnx: Path, results: Path | None, coco, split, ann, images, cache_dir, evaluator: str,
               per_class: bool, json_out: Path | None, set_name: str, gpus, nproc: int) -> dict:
    from atss_cli.cli.common import console
    from atss_cli.engine.evaluate_onnx import evaluate_onnx

    if gpus is not None or nproc != 1:
        fail("--onnx runs in one process on the CPU; drop --gpus / --nproc")
    results = (results or Path.cwd() / f"{onnx.stem}.{set_name}.bbox.json").resolve()
    con = console()
    progress, stop = _progress(con)
    try:
        metrics = evaluate_onnx(onnx, coco, split=split, ann=ann, images=images, cache_dir=cache_dir,
                                evaluator=evaluator, per_class=per_class, results_path=results, progress=progress)
    finally:
        stop()
    print_metrics(con, metrics, title=f"COCO bbox: {onnx.name} on {set_name}")
    _write_metrics(json_out, metrics)
    return metrics
# ---- end of issue 19 ---------------------------------------------------------------------------


def _score_file(detections: Path, coco: Path | None, split: str, ann: Path | None, images: Path | None,
                cache_dir: Path | None, evaluator: str, per_class: bool, json_out: Path | None,
                set_name: str) -> dict:
    from atss_cli.cli.common import console
    from atss_cli.engine.evaluate import evaluate_detections_file

    metrics = evaluate_detections_file(detections, coco, split=split, ann=ann, images=images, cache_dir=cache_dir,
                                       evaluator=evaluator, per_class=per_class)
    print_metrics(console(), metrics, title=f"COCO bbox: {detections.name} on {set_name}")
    _write_metrics(json_out, metrics)
    return metrics


def _write_metrics(json_out: Path | None, metrics: dict) -> None:
    if json_out is not None:
        from atss_cli.engine.coco_results import write_json_atomic

        write_json_atomic(json_out, metrics, indent=2)
        typer.echo(f"metrics: {json_out}")


def _worker_args(a: dict) -> list[str]:
    """The command line each launched process runs: `eval` with the resolved options, one process each."""
    where = (["--coco", str(a["coco"]), "--split", a["split"]] if a["coco"] is not None else
             ["--ann", str(a["ann"]), "--images", str(a["images"])])
    args = ["eval", *where, "--checkpoint", str(a["checkpoint"]), "--evaluator", a["evaluator"], "--results", str(a["results"]), "--device", a["device"],
            "--batch-size", str(a["batch_size"]), "--workers", str(a["workers"]), "--amp", a["amp"]]
    for flag, key in (("--depth", "depth"), ("--fpn-channels", "fpn_channels"), ("--head-channels", "head_channels"),
                      ("--stacked-convs", "stacked_convs"), ("--scale", "scale"), ("--json", "json_out"),
                      ("--cache-dir", "cache_dir"), ("--analyze", "analyze")):
        if a[key] is not None:
            args += [flag, str(a[key])]
    if a["per_class"]:
        args.append("--per-class")
    return args


def _progress(con):
    """A Rich progress bar on a terminal; nothing otherwise."""
    if not con.is_terminal:
        return None, lambda: None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=con, transient=True)
    state = {"task": None}

    def update(done: int, total: int) -> None:
        if state["task"] is None:
            bar.start()
            state["task"] = bar.add_task("eval", total=total or None)
        bar.update(state["task"], completed=done)

    return update, bar.stop


def print_metrics(con, metrics: dict, title: str = "COCO bbox") -> None:
    """The 12 metrics (and per-class AP) as Rich tables, then where the detections went."""
    from rich.table import Table

    from atss_cli.engine.evaluate import METRIC_NAMES, METRIC_TITLES

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("COCOeval line")
    for name in METRIC_NAMES:
        table.add_row(name, _fmt(metrics[name]), METRIC_TITLES[name])
    con.print(table)
    per_class = metrics.get("per_class")
    if per_class:
        pc = Table(title="AP per category (IoU=.50:.95)")
        pc.add_column("category")
        pc.add_column("AP", justify="right")
        for name, ap in per_class.items():
            pc.add_row(name, _fmt(ap))
        con.print(pc)
    line = f"{metrics.get('num_images', 0)} images, {metrics.get('num_detections', 0)} detections"
    if "seconds_inference" in metrics:
        line += f" -> {metrics.get('results')}; inference {metrics['seconds_inference']:.1f} s,"
    else:
        line += f" from {metrics.get('results')};"
    typer.echo(f"{line} COCOeval {metrics.get('seconds_eval', 0.0):.1f} s")


def _fmt(value: float) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.3f}"
