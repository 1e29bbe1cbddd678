"""`atss predict`: detections drawn on image files, plus a JSON of them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Depth, Device, FpnChannels, HeadChannels, StackedConvs, fail


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("predict", no_args_is_help=True)(predict_command)


def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files (JPEG, PNG, ...).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the drawn pictures and detections.json.",
                                      file_okay=False)],
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="Our checkpoint or MMDetection's ATSS one.", exists=True, dir_okay=False,
        resolve_path=True)] = None,
    onnx: Annotated[Optional[Path], typer.Option(
        "--onnx", help="An `atss export` file, run with ONNX Runtime on the CPU (instead of --checkpoint).",
        exists=True, dir_okay=False, resolve_path=True)] = None,
    score_thr: Annotated[float, typer.Option("--score-thr", min=0.0, max=1.0,
                                             help="Keep detections scoring at least this.")] = 0.3,
    coco: Annotated[Optional[Path], typer.Option(
        "--coco", exists=True, file_okay=False, resolve_path=True,
        help="Take class names from this COCO root's --split (default: the checkpoint's, else COCO's 80).")] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose categories name the classes.")] = "val2017",
    ann: Annotated[Optional[Path], typer.Option(
        "--ann", exists=True, dir_okay=False, resolve_path=True,
        help="Take class names from this COCO-format JSON (instead of --coco).")] = None,
    depth: Depth = None,
    fpn_channels: FpnChannels = None,
    head_channels: HeadChannels = None,
    stacked_convs: StackedConvs = None,
    device: Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")] = Device.auto,
    scale: Annotated[Optional[str], typer.Option("--scale", help="Test resize LONG,SHORT (default: checkpoint "
                                                                 "config, else 1333,800).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1,
                                                   help="--onnx: ONNX Runtime threads (default: all cores).")] = None,
) -> None:
    """Detect objects in images; write the pictures with boxes and a detections JSON."""
    from atss_cli.inference.checkpoint import parse_scale
    from atss_cli.inference.predict import predict_checkpoint

    scale_wh = parse_scale(scale)
    if (checkpoint is None) == (onnx is None):
        fail("give either --checkpoint CKPT or --onnx FILE")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a folder")

    def on_skip(path: Path, reason: str) -> None:
        reason = reason.replace(f" {path}", "")  # the decoder's message names the file again
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)

    def on_image(record: dict) -> None:
        typer.echo(f"{record['file']}: {len(record['detections'])} detections -> {record['output']}")

    summary = predict_checkpoint(
        checkpoint, images, out, coco=coco, split=split, ann=ann, onnx=onnx, device=device.value, scale=scale_wh,
        score_thr=score_thr, threads=threads, on_skip=on_skip, on_image=on_image,
        model_overrides={"depth": depth, "fpn_channels": fpn_channels, "head_channels": head_channels,
                         "stacked_convs": stacked_convs})
    n_ok, n_skip = len(summary["images"]), len(summary["skipped"])
    if n_ok == 0:
        fail(f"none of the {n_skip} images could be read")
    line = f"{n_ok} image{'s' if n_ok != 1 else ''} drawn in {out}, detections in {summary['detections']}"
    if n_skip:
        line += f"; {n_skip} skipped"
    typer.echo(line)
