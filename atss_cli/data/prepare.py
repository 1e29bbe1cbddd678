"""`prepare_split`: check one COCO split, write its image list and cache, return the report.

The report (a JSON-able dict; the CLI prints it as a table):

    split, ann_file, image_dir, cache ({"path", "status": "built" | "up to date"}),
    images, annotations, categories, usable_boxes (non-crowd), crowd_boxes,
    skipped ({reason: count}, reasons of `atss_cli.data.coco`), images_without_usable_box,
    training_images, not_for_training ({"no_annotation", "too_small"}), boxes_per_category,
    missing_files (count), missing_examples (up to 10 names),
    image_list ({"path", "status": "written" | "exists" | "differs" | "read-only", "note"}),
    check_images (with check_images=True: {"checked", "undecodable", "size_mismatch",
                  "undecodable_examples", "size_mismatch_examples"}; sizes are the displayed ones,
                  EXIF orientation applied, and a JSON size that is the stored, unrotated one of
                  an EXIF-rotated photo says so in its example)

User files are never modified: the image list `<coco>/<split>.txt` is written only when absent
and no `out_dir` was given; when an existing one differs, the dataset is read-only or `out_dir`
is given, ours goes to the cache folder, so that with `out_dir` nothing at all is written into
the dataset folder. A dataset given as files (`prepare_ann`: any COCO-format JSON and its image
folder) keeps its list in the cache folder as `<cache name>.txt`.

`draw_training_images(cache, n, out_dir)` draws n training images with their boxes and class
names into PNG files, so a user sees at a glance that the annotations were read right.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atss_cli.atomic import atomic_write_text
from atss_cli.data.cache import (CocoCache, check_split, ensure_ann_cache, ensure_cache, resolve_ann_cache_root,
                                 resolve_cache_root)
from atss_cli.errors import AtssError, param

_EXAMPLES = 10


def _missing_files(image_dir: Path, names) -> list[str]:
    try:
        present = {e.name for e in os.scandir(image_dir)}
    except OSError as exc:
        raise AtssError(f"cannot list {image_dir}: {exc.strerror}") from None
    return [n for n in names if (n not in present if "/" not in n else not (image_dir / n).is_file())]


def _write_ours(ours: Path, text: str) -> str:
    """Write our list unless it is there already: "written" or "exists"."""
    try:
        if ours.read_text(encoding="utf-8") == text:
            return "exists"
    except (OSError, UnicodeDecodeError):
        pass
    ours.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(ours, text)
    return "written"


def _image_list(coco_root: Path | None, split: str, names: list[str], cache_root: Path,
                dataset_writable: bool = True) -> dict:
    """Write `<coco>/<split>.txt` if absent and allowed; never overwrite a user's file.

    `coco_root` None (a dataset given as files) or `dataset_writable` False (`out_dir` given)
    keeps the list in `cache_root`; a user's differing list is still reported."""
    text = "".join(n + "\n" for n in names)
    ours = cache_root / f"{split}.txt"
    if coco_root is None:
        return {"path": str(ours), "status": _write_ours(ours, text)}
    target = Path(coco_root) / f"{split}.txt"
    if not dataset_writable and not target.exists():
        return {"path": str(ours), "status": _write_ours(ours, text)}
    if target.exists():
        try:
            existing = [ln.strip() for ln in target.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            existing = None
        if existing == names:
            return {"path": str(target), "status": "exists"}
        if not (ours.exists() and ours.read_text() == text):
            cache_root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(ours, text)
        return {"path": str(ours), "status": "differs",
                "note": f"{target} differs from the annotation file's images; ours is {ours}"}
    if dataset_writable and os.access(coco_root, os.W_OK):
        atomic_write_text(target, text)
        return {"path": str(target), "status": "written"}
    if not (ours.exists() and ours.read_text() == text):
        cache_root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ours, text)
    return {"path": str(ours), "status": "read-only", "note": f"{coco_root} is read-only; the list is {ours}"}


def _check_one(path: Path, width: int, height: int) -> str:
    """'' if `path` decodes at the JSON's size, else 'missing' / 'undecodable' / 'size WxH[ note]'.

    Decoded as training decodes (OpenCV, EXIF orientation applied), so the size is the displayed one.
    """
    from atss_cli.data.transforms import TRANSPOSING_ORIENTATIONS, DecodeError, exif_orientation, read_image

    if not path.is_file():
        return "missing"
    try:
        img = read_image(path)
    except DecodeError:
        return "undecodable"
    h, w = int(img.shape[0]), int(img.shape[1])
    if (w, h) == (width, height):
        return ""
    orientation = exif_orientation(path) if (h, w) == (width, height) else 1
    if orientation in TRANSPOSING_ORIENTATIONS:
        return f"size {w}x{h}; shown after EXIF orientation {orientation}, the JSON holds the stored, unrotated size"
    return f"size {w}x{h}"


def check_image_files(cache: CocoCache, workers: int = 2,
                      progress: Callable[[int, int], None] | None = None) -> dict:
    """Decode every image of `cache` in `workers` threads (OpenCV decodes without the GIL).

    `progress(done, total)` is called now and then, so that the CLI can draw a bar.
    """
    n = cache.num_images
    widths, heights = cache.widths.tolist(), cache.heights.tolist()
    names = list(cache.file_names)
    results = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for r in pool.map(_check_one, (cache.image_dir / nm for nm in names), widths, heights):
            results.append(r)
            if progress is not None and (len(results) % 64 == 0 or len(results) == n):
                progress(len(results), n)
    bad = [names[i] for i in range(n) if results[i] == "undecodable"]
    sized = [f"{names[i]} ({results[i][5:].split(';')[0]} on disk, {widths[i]}x{heights[i]} in JSON"
             f"{';' + results[i].split(';', 1)[1] if ';' in results[i] else ''})"
             for i in range(n) if results[i].startswith("size")]
    return {"checked": n - sum(r == "missing" for r in results), "undecodable": len(bad),
            "size_mismatch": len(sized), "undecodable_examples": bad[:_EXAMPLES],
            "size_mismatch_examples": sized[:_EXAMPLES]}


def prepare_split(coco_root: Path, split: str, out_dir: Path | None = None, check_images: bool = False,
                  workers: int = 2, progress: Callable[[int, int], None] | None = None) -> dict:
    """Check `split` of `coco_root`, write its image list and cache (when needed); the report dict.

    `out_dir` is the cache root (default `<coco_root>/.atss_cache`, which must be writable).
    A second run with nothing changed writes nothing. `progress(done, total)` reports the image check.
    """
    coco_root = Path(coco_root)
    ann, image_dir = check_split(coco_root, split)
    split_dir, built, _ = ensure_cache(coco_root, split, out_dir)
    cache = CocoCache(split_dir, image_dir, ann)
    names = list(cache.file_names)
    image_list = _image_list(coco_root, split, names, resolve_cache_root(coco_root, out_dir),
                             dataset_writable=out_dir is None)
    return _report(cache, split, split_dir, built, names, image_list, check_images, workers, progress)


def prepare_ann(ann_file: Path, image_dir: Path, out_dir: Path | None = None, name: str | None = None,
                check_images: bool = False, workers: int = 2,
                progress: Callable[[int, int], None] | None = None) -> dict:
    """`prepare_split` for a dataset given as files: any COCO-format JSON and its image folder.

    `out_dir` is the cache root (default `.atss_cache` beside the JSON); `name` the report's
    "split" (e.g. "train"), default the cache name. The report also holds "cache_name".
    """
    split_dir, built = ensure_ann_cache(ann_file, image_dir, out_dir)
    cache = CocoCache(split_dir, Path(image_dir), Path(ann_file))
    names = list(cache.file_names)
    image_list = _image_list(None, split_dir.name, names, resolve_ann_cache_root(ann_file, out_dir))
    report = _report(cache, name or split_dir.name, split_dir, built, names, image_list, check_images, workers,
                     progress)
    report["cache_name"] = split_dir.name
    return report


def _report(cache: CocoCache, split: str, split_dir: Path, built: bool, names: list[str], image_list: dict,
            check_images: bool, workers: int, progress) -> dict:
    missing = _missing_files(cache.image_dir, names)
    report = {"split": split, "ann_file": str(cache.ann_file), "image_dir": str(cache.image_dir),
              "cache": {"path": str(split_dir), "status": "built" if built else "up to date"},
              **cache.stats, "missing_files": len(missing), "missing_examples": missing[:_EXAMPLES],
              "image_list": image_list}
    report.setdefault("dropped_categories", [])
    if check_images:
        report["check_images"] = check_image_files(cache, workers, progress)
    return report


def _picture_name(index: int, file_name: str) -> str:
    stem = file_name.rsplit(".", 1)[0] if "." in file_name.rsplit("/", 1)[-1] else file_name
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem.replace("/", "__"))
    return f"{index:04d}_{safe[-80:]}.png"


def draw_training_images(cache: CocoCache, n: int, out_dir: Path) -> dict:
    """Draw `n` training images (spread over the split) with their boxes and class names as PNG
    files in `out_dir`: {"folder", "files", "unreadable": [file names]}."""
    import numpy as np

    from atss_cli.atomic import atomic_write_bytes
    from atss_cli.data.transforms import DecodeError, bgr_to_rgb_tensor, read_image
    from atss_cli.drawing import draw_boxes, encode_png

    if n < 0:
        raise AtssError(f"{param('draw')} must be >= 0, got {n}")
    indices = cache.train_indices()
    if n < len(indices):
        indices = indices[np.linspace(0, len(indices) - 1, n).round().astype(np.int64)] if n else indices[:0]
    names = [c["name"] for c in cache.categories]
    out_dir = Path(out_dir)
    files, unreadable = [], []
    for i in indices.tolist():
        try:
            bgr = read_image(cache.image_path(i))
        except (DecodeError, OSError):
            unreadable.append(cache.file_name(i))
            continue
        import torch

        picture = draw_boxes(bgr_to_rgb_tensor(bgr), torch.from_numpy(cache.boxes(i)), cache.labels(i).tolist(),
                             names)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / _picture_name(i, cache.file_name(i))
        atomic_write_bytes(path, encode_png(picture))
        files.append(str(path))
    return {"folder": str(out_dir), "files": files, "unreadable": unreadable}


# ----------------------------------------------------------------------------- `atss prepare`

DEFAULT_SPLITS = "train2017,val2017"


def prepare_dataset(*, coco: Path | None = None, synthetic: Path | None = None, train_ann: Path | None = None,
                    train_images: Path | None = None, val_ann: Path | None = None, val_images: Path | None = None,
                    splits: str | None = None, out: Path | None = None, check_images: bool = False, draw: int = 0,
                    workers: int = 2, num_train: int = 400, num_val: int = 50, seed: int = 0, size: int = 320,
                    progress_bar: Callable | None = None, on_generated: Callable[[dict], None] | None = None) -> dict:
    """`atss prepare` as a function: one dataset form (a COCO folder, a synthetic dataset to
    generate first, or COCO-format JSONs with their image folders), each split checked and
    cached, optionally `draw` training images drawn. Returns {"splits": [report...], "absent":
    [...], "coco"?, "synthetic"?, "drawn"?}. `progress_bar(description)`, when given, is a
    context manager yielding a progress(done, total) callable (or None) for image decoding;
    `on_generated(summary)` is called once a synthetic dataset is there, before it is prepared."""
    files_given = any(v is not None for v in (train_ann, train_images, val_ann, val_images))
    if synthetic is not None and files_given:
        raise AtssError(f"{param('train_ann')}/{param('train_images')}/{param('val_ann')}/{param('val_images')} name "
                        f"your dataset's files; with {param('synthetic')} give the image counts as "
                        f"{param('num_train')} N and {param('num_val')} N")
    if sum((coco is not None, synthetic is not None, files_given)) != 1:
        raise AtssError(f"give exactly one of {param('coco')} PATH, {param('synthetic')} DIR, or {param('train_ann')} "
                        f"FILE {param('train_images')} DIR and/or {param('val_ann')} FILE {param('val_images')} DIR")
    if files_given and splits is not None:
        raise AtssError(f"{param('splits')} is for {param('coco')}; with {param('train_ann')}/{param('val_ann')} "
                        "the splits are train and val")
    split_list = None if splits is None else [s.strip() for s in splits.split(",") if s.strip()]
    result: dict = {}
    if files_given:
        result.update(run_prepare_files(file_pairs(train_ann, train_images, val_ann, val_images), out=out,
                                        check_images=check_images, workers=workers, progress_bar=progress_bar))
    else:
        if synthetic is not None:
            from atss_cli.data.synthetic import generate_synthetic

            result["synthetic"] = generate_synthetic(synthetic, train_images=num_train, val_images=num_val,
                                                     seed=seed, size=size)
            if on_generated is not None:
                on_generated(result["synthetic"])
            coco = synthetic
        result.update(run_prepare(coco, split_list, out=out, check_images=check_images, workers=workers,
                                  progress_bar=progress_bar))
    if draw:
        draw_first_split(result, draw, out)
    return result


@contextlib.contextmanager
def _progress(progress_bar, description: str, enabled: bool):
    if progress_bar is None or not enabled:
        yield None
        return
    with progress_bar(description) as progress:
        yield progress


def run_prepare(coco: Path, splits: list[str] | None = None, out: Path | None = None, check_images: bool = False,
                workers: int = 2, progress_bar=None) -> dict:
    """Prepare each split of `coco`; {"coco", "splits": [report...], "absent": [...]}.

    With `splits` None the default splits are tried and those without an annotation file are
    listed as absent (a dataset with only val2017 is fine); an explicit split must exist.
    """
    from atss_cli.data.cache import ann_file_for

    coco = Path(coco)
    explicit = splits is not None
    names = splits if explicit else DEFAULT_SPLITS.split(",")
    if not names:
        raise AtssError(f"{param('splits')} is empty; give split names such as train2017,val2017")
    if workers < 1:
        raise AtssError(f"{param('workers')} must be >= 1, got {workers}")
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
                        f"(pass {param('splits')} to name others)")
    reports = []
    for s in present:
        with _progress(progress_bar, f"decoding {s}", check_images) as progress:
            reports.append(prepare_split(coco, s, out_dir=out, check_images=check_images, workers=workers,
                                         progress=progress))
    return {"coco": str(coco), "splits": reports, "absent": absent}


def run_prepare_files(pairs: list[tuple[str, Path, Path]], out: Path | None = None, check_images: bool = False,
                      workers: int = 2, progress_bar=None) -> dict:
    """Prepare each (name, annotation file, image folder); {"splits": [report...], "absent": []}."""
    from atss_cli.data.cache import check_ann

    if workers < 1:
        raise AtssError(f"{param('workers')} must be >= 1, got {workers}")
    for _, ann, images in pairs:
        check_ann(ann, images)  # before any work: a missing piece stops with one line
    reports = []
    for name, ann, images in pairs:
        with _progress(progress_bar, f"decoding {name}", check_images) as progress:
            reports.append(prepare_ann(ann, images, out_dir=out, name=name, check_images=check_images,
                                       workers=workers, progress=progress))
    return {"splits": reports, "absent": []}


def file_pairs(train_ann, train_images, val_ann, val_images) -> list[tuple[str, Path, Path]]:
    pairs = []
    for name, ann, images in (("train", train_ann, train_images), ("val", val_ann, val_images)):
        if (ann is None) != (images is None):
            given, wanted = (param(f"{name}_ann"), f"{param(f'{name}_images')} DIR") if images is None else \
                (param(f"{name}_images"), f"{param(f'{name}_ann')} FILE")
            raise AtssError(f"{given} needs {wanted} too")
        if ann is not None:
            pairs.append((name, Path(ann), Path(images)))
    return pairs


def draw_first_split(result: dict, n: int, out: Path | None) -> None:
    """Draw `n` training images of the first split that has some into the output folder."""
    for r in result["splits"]:
        if r["training_images"] > 0:
            split_dir = Path(r["cache"]["path"])
            cache = CocoCache(split_dir, Path(r["image_dir"]), Path(r["ann_file"]))
            folder = (Path(out) if out is not None else split_dir.parent) / "drawn" / r["split"]
            result["drawn"] = {"split": r["split"], **draw_training_images(cache, n, folder)}
            return
    result["drawn"] = {"split": None, "folder": None, "files": [], "unreadable": []}
