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

User files are never modified: the image list `<coco>/<split>.txt` is written only when absent;
when an existing one differs (or the dataset is read-only) ours goes to the cache folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atss_cli.atomic import atomic_write_text
from atss_cli.data.cache import CocoCache, check_split, ensure_cache, resolve_cache_root
from atss_cli.errors import AtssError

_EXAMPLES = 10


def _missing_files(image_dir: Path, names) -> list[str]:
    try:
        present = {e.name for e in os.scandir(image_dir)}
    except OSError as exc:
        raise AtssError(f"cannot list {image_dir}: {exc.strerror}") from None
    return [n for n in names if (n not in present if "/" not in n else not (image_dir / n).is_file())]


def _image_list(coco_root: Path, split: str, names: list[str], cache_root: Path) -> dict:
    """Write `<coco>/<split>.txt` if absent; never overwrite a user's file."""
    text = "".join(n + "\n" for n in names)
    target = Path(coco_root) / f"{split}.txt"
    ours = cache_root / f"{split}.txt"
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
    if os.access(coco_root, os.W_OK):
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
    cache_root = resolve_cache_root(coco_root, out_dir)
    names = list(cache.file_names)
    missing = _missing_files(image_dir, names)
    report = {"split": split, "ann_file": str(ann), "image_dir": str(image_dir),
              "cache": {"path": str(split_dir), "status": "built" if built else "up to date"},
              **cache.stats, "missing_files": len(missing), "missing_examples": missing[:_EXAMPLES],
              "image_list": _image_list(coco_root, split, names, cache_root)}
    if check_images:
        report["check_images"] = check_image_files(cache, workers, progress)
    return report
