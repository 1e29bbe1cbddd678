"""`atss prepare`: check a COCO folder or any COCO-format JSON with its image folder and build
the cache, or generate the synthetic dataset."""

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
        from atss_cli.data.layouts import recognise

        layout = recognise(coco)
        if layout is not None:
            raise AtssError(f"no COCO 2017 layout in {coco}: {layout.hint()}")
        raise AtssError(f"no split of {', '.join(names)} in {coco}: expected annotations/instances_<split>.json "
                        "(pass --splits to name others)")
    reports = []
    for s in present:
        with _progress_bar(f"decoding {s}", enabled=check_images) as progress:
            reports.append(prepare_split(coco, s, out_dir=out, check_images=check_images, workers=workers,
                                         progress=progress))
    return {"coco": str(coco), "splits": reports, "absent": absent}


def run_prepare_files(pairs: list[tuple[str, Path, Path]], out: Path | None = None, check_images: bool = False,
                      workers: int = 2) -> dict:
    """Prepare each (name, annotation file, image folder); {"splits": [report...], "absent": []}."""
    from atss_cli.data.cache import check_ann
    from atss_cli.data.prepare import prepare_ann

    if workers < 1:
        raise AtssError(f"--workers must be >= 1, got {workers}")
    for _, ann, images in pairs:
        check_ann(ann, images)  # before any work: a missing piece stops with one line
    reports = []
    for name, ann, images in pairs:
        with _progress_bar(f"decoding {name}", enabled=check_images) as progress:
            reports.append(prepare_ann(ann, images, out_dir=out, name=name, check_images=check_images,
                                       workers=workers, progress=progress))
    return {"splits": reports, "absent": []}


def _file_pairs(train_ann, train_images, val_ann, val_images) -> list[tuple[str, Path, Path]]:
    pairs = []
    for name, ann, images in (("train", train_ann, train_images), ("val", val_ann, val_images)):
        if (ann is None) != (images is None):
            given, wanted = (f"--{name}-ann", f"--{name}-images DIR") if images is None else \
                (f"--{name}-images", f"--{name}-ann FILE")
            raise AtssError(f"{given} needs {wanted} too")
        if ann is not None:
            pairs.append((name, Path(ann), Path(images)))
    return pairs


def _draw(result: dict, n: int, out: Path | None) -> None:
    """Draw `n` training images of the first split that has some into the output folder."""
    from atss_cli.data.cache import CocoCache
    from atss_cli.data.prepare import draw_training_images

    for r in result["splits"]:
        if r["training_images"] > 0:
            split_dir = Path(r["cache"]["path"])
            cache = CocoCache(split_dir, Path(r["image_dir"]), Path(r["ann_file"]))
            folder = (Path(out) if out is not None else split_dir.parent) / "drawn" / r["split"]
            result["drawn"] = {"split": r["split"], **draw_training_images(cache, n, folder)}
            return
    result["drawn"] = {"split": None, "folder": None, "files": [], "unreadable": []}


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
    @app.command("prepare")
    def prepare(
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
        files_given = any(v is not None for v in (train_ann, train_images, val_ann, val_images))
        if synthetic is not None and files_given:
            raise AtssError("--train-ann/--train-images/--val-ann/--val-images name your dataset's files; "
                            "with --synthetic give the image counts as --num-train N and --num-val N")
        if sum((coco is not None, synthetic is not None, files_given)) != 1:
            raise AtssError("give exactly one of --coco PATH, --synthetic DIR, or --train-ann FILE --train-images DIR "
                            "and/or --val-ann FILE --val-images DIR")
        if files_given and splits is not None:
            raise AtssError("--splits is for --coco; with --train-ann/--val-ann the splits are train and val")
        split_list = None if splits is None else [s.strip() for s in splits.split(",") if s.strip()]
        console = common.console()
        result: dict = {}
        if files_given:
            result.update(run_prepare_files(_file_pairs(train_ann, train_images, val_ann, val_images), out=out,
                                            check_images=check_images, workers=workers))
        else:
            if synthetic is not None:
                from atss_cli.data.synthetic import generate_synthetic

                summary = generate_synthetic(synthetic, train_images=num_train, val_images=num_val,
                                             seed=seed, size=size)
                verb = "already there" if summary["status"] == "exists" else "written"
                console.print(f"synthetic dataset {verb}: {synthetic} (seed {seed}, {num_train} train and "
                              f"{num_val} val images, long side {size})")
                result["synthetic"] = summary
                coco = synthetic
            result.update(run_prepare(coco, split_list, out=out, check_images=check_images, workers=workers))
        if draw:
            _draw(result, draw, out)
        _print_report(console, result)
        if json_out is not None:
            _write_json(json_out, result)
