"""`atss eval`: COCO box AP of a checkpoint (ours or MMDetection's) on a COCO split or on any
COCO-format annotation file with its image folder (`--ann FILE --images DIR`).

One process, or N processes through torch.distributed.run (`--gpus N` on CUDA with NCCL,
`--device cpu --nproc N` with gloo): atss_cli.launch.evaluation writes the request to a launch
file and each process (atss_cli/launch/worker.py) evaluates its share of the images; rank 0
writes the detections and prints the table.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Depth, Device, FpnChannels, HeadChannels, StackedConvs


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
    analyze: Annotated[Optional[Path], typer.Option(
        "--analyze", file_okay=False, resolve_path=True,
        help="Also write the error analysis here: PR curves, per-class AP, confusion matrix, TIDE, "
             "a gallery, analysis.json and report.html.")] = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", help="An `atss export` file, run with ONNX Runtime on the CPU (instead of --checkpoint).",
        exists=True, dir_okay=False, resolve_path=True)] = None,
) -> None:
    """Evaluate a checkpoint with COCOeval (bbox): the 12 standard metrics."""
    from atss_cli import terminal
    from atss_cli.inference.checkpoint import parse_scale
    from atss_cli.launch.evaluation import analyze_evaluation, evaluation_request, run_evaluation
    from atss_cli.launch.plan import Processes

    request = evaluation_request(
        checkpoint=checkpoint, onnx=onnx, detections=detections, coco=coco, split=split, ann=ann, images=images,
        cache_dir=cache_dir, model_overrides={"depth": depth, "fpn_channels": fpn_channels,
                                              "head_channels": head_channels, "stacked_convs": stacked_convs},
        device=device.value, batch_size=batch_size, workers=workers, scale=parse_scale(scale),
        evaluator=evaluator.value, per_class=per_class, results=results, amp=amp.value, json_out=json_out,
        analyze=analyze)
    con = terminal.console()
    progress, stop = terminal.progress_bar(con) if int(os.environ.get("RANK", "0")) == 0 else (None, lambda: None)
    try:
        metrics = run_evaluation(request, Processes(gpus=gpus, nproc=nproc, device=device.value), progress=progress)
    finally:
        stop()
    if metrics is None or int(os.environ.get("RANK", "0")) != 0:
        return  # the launched processes printed it (rank 0), or this is not rank 0
    terminal.print_metrics(con, metrics, title=request.title)
    if json_out is not None:
        typer.echo(f"metrics: {json_out}")
    terminal.print_analysis(analyze_evaluation(request, metrics), analyze)
