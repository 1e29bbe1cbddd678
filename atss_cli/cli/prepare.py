"""`atss prepare`: check a COCO folder and build its cache, or generate the synthetic dataset."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer

from atss_cli.cli import common
from atss_cli.errors import AtssError

DEFAULT_SPLITS = "train2017,val2017"


def run_prepare(coco: Path, splits: list[str] | None = None, out: Path | None = None, check_images: bool = False,
                workers: int = 2) -> dict:
    """Prepare each split of `coco`; {"coco", "splits": [report...], "absent": [...]}.

    With `splits` None the default splits are tried and those without an annotation file are
    listed as absent (a dataset with only val2017 is fine); an explicit split must exist.
    """
    from atss_cli.data.cache import ann_file_for, check_split
    from atss_cli.data.prepare import prepare_split

    coco = Path(coco)
    explicit = splits is not None
    names = splits if explicit else DEFAULT_SPLITS.split(",")
    if not names:
        raise AtssError("--splits is empty; give split names such as train2017,val2017")
    if workers < 1:
        raise AtssError(f"--workers must be >= 1, got {workers}")
    present, absent = [], []
    for split in names:
        if not explicit and coco.is_dir() and not ann_file_for(coco, split).exists():
            absent.append(split)
            continue
        check_split(coco, split)  # before any work: a missing piece stops with one line
        present.append(split)
    if not present:
        raise AtssError(f"no split of {', '.join(names)} in {coco}: expected annotations/instances_<split>.json "
                        "(pass --splits to name others)")
    reports = []
    for s in present:
        with _progress_bar(f"decoding {s}", enabled=check_images) as progress:
            reports.append(prepare_split(coco, s, out_dir=out, check_images=check_images, workers=workers,
                                         progress=progress))
    return {"coco": str(coco), "splits": reports, "absent": absent}


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


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare(
        coco: Annotated[Path | None, typer.Option("--coco", help="COCO 2017 folder: annotations/, train2017/, val2017/.")] = None,
        synthetic: Annotated[Path | None, typer.Option("--synthetic", help="Generate the synthetic shapes dataset in this (new or empty) folder, then prepare it.")] = None,
        splits: Annotated[str | None, typer.Option("--splits", help=f"Comma-separated splits [default: {DEFAULT_SPLITS}, those present].")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Cache folder [default: <coco>/.atss_cache]; needed for a read-only dataset.")] = None,
        check_images: Annotated[bool, typer.Option("--check-images", help="Decode every image and compare its size with the JSON.")] = False,
        json_out: common.JsonOut = None,
        workers: Annotated[int, typer.Option("--workers", help="Threads decoding images with --check-images.")] = 2,
        train_images: Annotated[int, typer.Option("--train-images", help="--synthetic: training images.")] = 400,
        val_images: Annotated[int, typer.Option("--val-images", help="--synthetic: validation images.")] = 50,
        seed: Annotated[int, typer.Option("--seed", help="--synthetic: random seed (same seed, same dataset).")] = 0,
        size: Annotated[int, typer.Option("--size", help="--synthetic: long side of the images in pixels.")] = 320,
    ) -> None:
        """Check a COCO folder and build the annotation cache, or generate a synthetic dataset."""
        if (coco is None) == (synthetic is None):
            raise AtssError("give exactly one of --coco PATH or --synthetic DIR")
        split_list = None if splits is None else [s.strip() for s in splits.split(",") if s.strip()]
        console = common.console()
        result: dict = {}
        if synthetic is not None:
            from atss_cli.data.synthetic import generate_synthetic

            summary = generate_synthetic(synthetic, train_images=train_images, val_images=val_images,
                                         seed=seed, size=size)
            verb = "already there" if summary["status"] == "exists" else "written"
            console.print(f"synthetic dataset {verb}: {synthetic} (seed {seed}, {train_images} train and "
                          f"{val_images} val images, long side {size})")
            result["synthetic"] = summary
            coco = synthetic
        result.update(run_prepare(coco, split_list, out=out, check_images=check_images, workers=workers))
        _print_report(console, result)
        if json_out is not None:
            _write_json(json_out, result)
