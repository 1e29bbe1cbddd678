"""`atss export`: a detector checkpoint as one ONNX file (network + post-processing inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Depth, FpnChannels, HeadChannels, StackedConvs


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("export", no_args_is_help=True)(export_command)


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="Our checkpoint or MMDetection's ATSS one.", exists=True,
                                               dir_okay=False, resolve_path=True, show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="The .onnx file to write (its folder must exist).",
                                      show_default=False)],
    scale: Annotated[Optional[str], typer.Option(
        "--scale", help="Test resize LONG,SHORT stored for the runtime (default: checkpoint config, else "
                        "1333,800).")] = None,
    score_thr: Annotated[Optional[float], typer.Option(
        "--score-thr", min=0.0, max=1.0, help="Pre-NMS score threshold inside the graph (default: the "
                                              "model's, 0.05).")] = None,
    ann: Annotated[Optional[Path], typer.Option(
        "--ann", exists=True, dir_okay=False, resolve_path=True,
        help="Take category ids and names from this COCO-format JSON.")] = None,
    depth: Depth = None,
    fpn_channels: FpnChannels = None,
    head_channels: HeadChannels = None,
    stacked_convs: StackedConvs = None,
) -> None:
    """Export a detector to ONNX (opset 17): uint8 resized images in, final detections out."""
    from atss_cli.inference.checkpoint import parse_scale
    from atss_cli.export.onnx_export import check_out_path, export_onnx

    check_out_path(out)
    categories = None
    if ann is not None:
        from atss_cli.data.categories import ann_categories

        categories = ann_categories(ann)
    meta = export_onnx(checkpoint, out, scale=parse_scale(scale), score_thr=score_thr, categories=categories,
                       model_overrides={"depth": depth, "fpn_channels": fpn_channels,
                                        "head_channels": head_channels, "stacked_convs": stacked_convs})
    size = out.stat().st_size / 1e6
    typer.echo(f"wrote {out} ({size:.1f} MB, opset {meta['opset']}, {meta['num_classes']} classes, "
               f"test scale {meta['scale'][0]}x{meta['scale'][1]})")
