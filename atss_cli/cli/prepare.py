"""`atss prepare`: check a COCO folder or any COCO-format JSON with its image folder and build
the cache, or generate the synthetic dataset."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from atss_cli.cli import common

DEFAULT_SPLITS = "train2017,val2017"


@contextlib.contextmanager
def _progress_bar(description: str, enabled: bool):
    """A Rich progress bar (on a terminal only) fed by progress(done, total) calls."""
    console = common.console()
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _write_json(path: Path, data: dict) -> None:
    from atss_cli.atomic import atomic_write_json

    atomic_write_json(path, data, indent=2)


def _print_report(console, result: dict) -> None:
    from rich.table import Table

    for split in result.get("absent", []):
        console.print(f"{split}: not present (no annotation file), skipped")
    for r in result["splits"]:
        console.print(f"{r['split']}: {r['ann_file']}")
        t = Table(show_header=False)
        t.add_column("what")
        t.add_column("count", justify="right")
        t.add_row("images", str(r["images"]))
        t.add_row("  for training", str(r["training_images"]))
        nt = r["not_for_training"]
        t.add_row("  not for training: no annotation", str(nt["no_annotation"]))
        t.add_row("  not for training: min side < 32", str(nt["too_small"]))
        t.add_row("  without a usable box", str(r["images_without_usable_box"]))
        t.add_row("  missing on disk", str(r["missing_files"]))
        t.add_row("categories", str(r["categories"]))
        t.add_row("annotations", str(r["annotations"]))
        t.add_row("  usable boxes", str(r["usable_boxes"]))
        t.add_row("  crowd boxes (not training GT)", str(r["crowd_boxes"]))
        for reason, n in r["skipped"].items():
            t.add_row(f"  skipped: {reason.replace('_', ' ')}", str(n))
        if "check_images" in r:
            c = r["check_images"]
            t.add_row("decoded", str(c["checked"]))
            t.add_row("  undecodable", str(c["undecodable"]))
            t.add_row("  size differs from JSON", str(c["size_mismatch"]))
        console.print(t)
        if r["missing_examples"]:
            console.print(f"  missing, e.g.: {', '.join(r['missing_examples'][:5])}")
        if "check_images" in r:
            for name in r["check_images"]["undecodable_examples"][:5]:
                console.print(f"  undecodable: {name}")
            for line in r["check_images"]["size_mismatch_examples"][:5]:
                console.print(f"  size differs: {line}")
        lst = r["image_list"]
        console.print(f"  image list: {lst['path']} ({lst['status']})" + (f": {lst['note']}" if "note" in lst else ""))
        console.print(f"  cache: {r['cache']['path']} ({r['cache']['status']})")
        dropped = r.get("dropped_categories") or []
        if dropped:
            console.print("  dropped categories (no annotation, only another's supercategory): "
                          + ", ".join(f"{c['name']} (id {c['id']})" for c in dropped))
    drawn = result.get("drawn")
    if drawn is not None:
        if drawn["files"]:
            console.print(f"drew {len(drawn['files'])} training images of {drawn['split']} with their boxes: "
                          f"{drawn['folder']}")
        else:
            console.print("--draw: no training image to draw")
        for name in drawn["unreadable"][:5]:
            console.print(f"  not drawn (unreadable): {name}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("prepare")(prepare_command)


def prepare_command(
    coco: Annotated[Path | None, typer.Option("--coco", help="COCO 2017 folder: annotations/, train2017/, val2017/.")] = None,
    train_ann: Annotated[Path | None, typer.Option("--train-ann", help="Training annotations: any COCO-format JSON.")] = None,
    train_images: Annotated[Path | None, typer.Option("--train-images", help="Folder the --train-ann file_name values are relative to.")] = None,
    val_ann: Annotated[Path | None, typer.Option("--val-ann", help="Validation annotations: any COCO-format JSON.")] = None,
    val_images: Annotated[Path | None, typer.Option("--val-images", help="Folder the --val-ann file_name values are relative to.")] = None,
    synthetic: Annotated[Path | None, typer.Option("--synthetic", help="Generate the synthetic shapes dataset in this (new or empty) folder, then prepare it.")] = None,
    splits: Annotated[str | None, typer.Option("--splits", help=f"--coco: comma-separated splits [default: {DEFAULT_SPLITS}, those present].")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder: cache, image lists, drawings [default: .atss_cache in the dataset]; with it nothing is written into the dataset.")] = None,
    check_images: Annotated[bool, typer.Option("--check-images", help="Decode every image and compare its size with the JSON.")] = False,
    draw: Annotated[int, typer.Option("--draw", min=0, help="Draw N training images with their boxes and class names (PNG) into the output folder.")] = 0,
    json_out: common.JsonOut = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads decoding images with --check-images.")] = 2,
    num_train: Annotated[int, typer.Option("--num-train", help="--synthetic: training images.")] = 400,
    num_val: Annotated[int, typer.Option("--num-val", help="--synthetic: validation images.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="--synthetic: random seed (same seed, same dataset).")] = 0,
    size: Annotated[int, typer.Option("--size", help="--synthetic: long side of the images in pixels.")] = 320,
) -> None:
    """Check a dataset (a COCO folder, or COCO-format JSONs with their image folders) and build
    the annotation cache, or generate a synthetic dataset."""
    from atss_cli.data.prepare import prepare_dataset

    console = common.console()

    def generated(summary: dict) -> None:
        verb = "already there" if summary["status"] == "exists" else "written"
        console.print(f"synthetic dataset {verb}: {synthetic} (seed {seed}, {num_train} train and "
                      f"{num_val} val images, long side {size})")

    result = prepare_dataset(coco=coco, synthetic=synthetic, train_ann=train_ann, train_images=train_images,
                             val_ann=val_ann, val_images=val_images, splits=splits, out=out,
                             check_images=check_images, draw=draw, workers=workers, num_train=num_train,
                             num_val=num_val, seed=seed, size=size,
                             progress_bar=lambda what: _progress_bar(what, enabled=True),
                             on_generated=generated)
    _print_report(console, result)
    if json_out is not None:
        _write_json(json_out, result)
