"""The annotation cache: flat numpy arrays on disk that every process memory-maps.

Layout of `<cache_root>/<split>/` (written once, atomically: a temporary folder renamed into place):

    image_ids.npy     int64   [N]      COCO image ids, in the JSON's image order
    heights.npy       int32   [N]      image sizes from the JSON
    widths.npy        int32   [N]
    names.npy         uint8   [bytes]  UTF-8 file names, concatenated
    name_offsets.npy  int64   [N + 1]  file name i is names[name_offsets[i]:name_offsets[i + 1]]
    has_ann.npy       bool    [N]      image has an annotation of a known category (training filter)
    boxes.npy         float32 [K, 4]   usable boxes, xyxy in original pixels, grouped by image
    labels.npy        int32   [K]      contiguous labels 0..C-1
    crowd.npy         bool    [K]      iscrowd=1 boxes (kept out of training GT)
    ann_ids.npy       int64   [K]      COCO annotation ids
    box_offsets.npy   int64   [N + 1]  image i owns boxes[box_offsets[i]:box_offsets[i + 1]]
    meta.json         format version, the source file's size, mtime and SHA-1, categories, stats

The cache is fresh while the annotation file has the recorded size and mtime (or, when only the
mtime moved, the same SHA-1). Opening it maps the arrays and reads meta.json: milliseconds.
A `CocoCache` pickles as its paths, so DataLoader workers re-map the files instead of copying.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from atss_cli.atomic import atomic_write_text, make_temp_dir
from atss_cli.data.coco import MIN_TRAIN_SIDE, ParsedSplit, load_json, parse_coco
from atss_cli.errors import AtssError, param

FORMAT = 1
CACHE_DIRNAME = ".atss_cache"
_ARRAYS = ("image_ids", "heights", "widths", "names", "name_offsets", "has_ann", "boxes", "labels",
           "crowd", "ann_ids", "box_offsets")


def ann_file_for(coco_root: Path, split: str) -> Path:
    return Path(coco_root) / "annotations" / f"instances_{split}.json"


class FileNames:
    """A read-only sequence of file names over the names blob (no list of str in memory)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self._blob, self._off = blob, offsets

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> str:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._blob[int(self._off[i]):int(self._off[i + 1])].tobytes().decode("utf-8")

    def __iter__(self):
        blob, off = self._blob.tobytes(), self._off
        for i in range(len(self)):
            yield blob[off[i]:off[i + 1]].decode("utf-8")


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be memory-mapped
        return np.load(path)


class CocoCache:
    """One prepared split: the arrays of the cache, memory-mapped, and the category table.

    Attributes: `split`, `num_images`, `image_ids` (int64 [N]), `heights`, `widths` (int32 [N],
    from the JSON), `file_names` (sequence of str), `image_dir`, `ann_file`, `cache_dir`,
    `categories` ([{"id", "name"}] in label order), `label_to_cat_id` (int64 [C]),
    `cat_id_to_label` (dict), `num_classes`, `stats` (the summary numbers of the parse).
    """

    def __init__(self, cache_dir: Path, image_dir: Path, ann_file: Path):
        self.cache_dir, self.image_dir, self.ann_file = Path(cache_dir), Path(image_dir), Path(ann_file)
        meta = json.loads((self.cache_dir / "meta.json").read_text())
        self.split: str = meta["split"]
        self.categories: list[dict] = meta["categories"]
        self.stats: dict = meta["stats"]
        a = {name: _load_array(self.cache_dir / f"{name}.npy") for name in _ARRAYS}
        self.image_ids, self.heights, self.widths = a["image_ids"], a["heights"], a["widths"]
        self._has_ann, self._box_offsets = a["has_ann"], a["box_offsets"]
        self._boxes, self._labels, self._crowd, self._ann_ids = a["boxes"], a["labels"], a["crowd"], a["ann_ids"]
        self.file_names = FileNames(a["names"], a["name_offsets"])
        self.label_to_cat_id = np.array([c["id"] for c in self.categories], dtype=np.int64)
        self.cat_id_to_label = {int(c): i for i, c in enumerate(self.label_to_cat_id)}

    # Pickling keeps only the paths: a worker re-maps the files (shared page cache, no copy).
    def __getstate__(self):
        return {"cache_dir": str(self.cache_dir), "image_dir": str(self.image_dir), "ann_file": str(self.ann_file)}

    def __setstate__(self, state):
        self.__init__(Path(state["cache_dir"]), Path(state["image_dir"]), Path(state["ann_file"]))

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"CocoCache({self.split!r}, images={self.num_images}, classes={self.num_classes}, "
                f"cache={str(self.cache_dir)!r})")

    @property
    def num_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    def file_name(self, i: int) -> str:
        return self.file_names[i]

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.file_names[i]

    def _span(self, i: int) -> tuple[int, int]:
        return int(self._box_offsets[i]), int(self._box_offsets[i + 1])

    def boxes(self, i: int) -> np.ndarray:
        """float32 [M, 4] xyxy (original pixels) of image i's non-crowd usable boxes."""
        s, e = self._span(i)
        return np.array(self._boxes[s:e][~self._crowd[s:e]], dtype=np.float32).reshape(-1, 4)

    def labels(self, i: int) -> np.ndarray:
        """int64 [M] contiguous labels matching `boxes(i)`."""
        s, e = self._span(i)
        return np.array(self._labels[s:e][~self._crowd[s:e]], dtype=np.int64)

    def crowd_boxes(self, i: int) -> np.ndarray:
        """float32 [Mc, 4] of image i's iscrowd=1 boxes (not training GT; COCOeval reads the JSON)."""
        s, e = self._span(i)
        return np.array(self._boxes[s:e][self._crowd[s:e]], dtype=np.float32).reshape(-1, 4)

    def train_indices(self, min_size: int = MIN_TRAIN_SIDE) -> np.ndarray:
        """int64 indices of the images training uses (SPEC.md section 5), in image order."""
        ok = np.asarray(self._has_ann) & (np.minimum(self.heights, self.widths) >= min_size)
        return np.flatnonzero(ok).astype(np.int64)

    def landscape(self, indices=None) -> np.ndarray:
        """bool per image (of `indices`, default all): width >= height, the aspect-ratio group."""
        idx = slice(None) if indices is None else np.asarray(indices)
        return np.asarray(self.widths[idx] >= self.heights[idx])


# --------------------------------------------------------------------------- building


def source_stat(ann_file: Path) -> dict:
    st = ann_file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_and_hash(ann_file: Path) -> tuple[bytes, str]:
    """The file's bytes and their SHA-1 (hashed in a thread while the caller goes on)."""
    with open(ann_file, "rb") as f:
        data = f.read()
    return data, hashlib.sha1(data).hexdigest()


def read_meta(split_dir: Path) -> dict | None:
    try:
        meta = json.loads((split_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or not all((split_dir / f"{n}.npy").exists() for n in _ARRAYS):
        return None
    return meta


def is_fresh(split_dir: Path, ann_file: Path) -> bool:
    """Whether the cache in `split_dir` was built from `ann_file` as it is now."""
    meta = read_meta(split_dir)
    if meta is None:
        return False
    src, now = meta.get("source", {}), source_stat(ann_file)
    if src.get("size") != now["size"]:
        return False
    if src.get("mtime_ns") == now["mtime_ns"]:
        return True
    # Touched but perhaps unchanged: compare the content, and remember the new mtime if it is the same.
    _, sha = read_and_hash(ann_file)
    if sha != src.get("sha1"):
        return False
    meta["source"] = {**src, **now}
    with contextlib.suppress(OSError):
        atomic_write_text(split_dir / "meta.json", json.dumps(meta, indent=1))
    return True

def parse_file(ann_file: Path) -> tuple[ParsedSplit, dict]:
    """Read, hash and parse `ann_file`; returns the arrays and the source fingerprint."""
    stat = source_stat(ann_file)  # before reading: a change during the read makes the cache stale
    with open(ann_file, "rb") as f:
        data = f.read()
    digest: dict = {}
    hasher = threading.Thread(target=lambda: digest.update(sha1=hashlib.sha1(data).hexdigest()))
    hasher.start()  # hashlib releases the GIL: the hash costs nothing next to the JSON parse
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of new objects, no cycles: the collector would only rescan them
    try:
        parsed = parse_coco(ann_file, load_json(ann_file, data))
    finally:
        if gc_was_on:
            gc.enable()
        hasher.join()
    return parsed, {**stat, "sha1": digest["sha1"]}


def write_cache(split_dir: Path, parsed: ParsedSplit, split: str, ann_file: Path, source: dict) -> None:
    """Write the arrays into a temporary folder beside `split_dir` and rename it into place."""
    parent = split_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(parent, f".{split}.tmp-")
    try:
        arrays = {"image_ids": parsed.image_ids, "heights": parsed.heights, "widths": parsed.widths,
                  "names": parsed.names_blob, "name_offsets": parsed.name_offsets, "has_ann": parsed.has_known_ann,
                  "boxes": parsed.boxes, "labels": parsed.labels, "crowd": parsed.crowd,
                  "ann_ids": parsed.ann_ids, "box_offsets": parsed.box_offsets}
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
        meta = {"format": FORMAT, "split": split, "ann_file": str(ann_file), "source": source,
                "categories": parsed.categories, "stats": parsed.stats}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        old = None
        if split_dir.exists():
            old = Path(tempfile.mkdtemp(dir=parent, prefix=f".{split}.old-"))
            os.rename(split_dir, old / "x")
        os.rename(tmp, split_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _locked(parent: Path, split: str):
    """An exclusive lock per split, so concurrent builders (several ranks) build once."""
    import fcntl

    with open(parent / f".{split}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _writable(path: Path) -> bool:
    """Whether a folder can be made and written at `path` (it or its nearest existing parent)."""
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


def _export_hint(root: Path) -> str:
    from atss_cli.data.layouts import recognise

    layout = recognise(root)
    return f"; {layout.hint()}" if layout else ""


def check_split(coco_root: Path, split: str) -> tuple[Path, Path]:
    """(annotation file, image folder) of `split`, or AtssError naming what is missing."""
    root = Path(coco_root)
    if not root.exists():
        raise AtssError(f"COCO folder not found: {root}")
    if not root.is_dir():
        raise AtssError(f"not a folder: {root} (pass the COCO root, holding annotations/ and the image folders)")
    ann = ann_file_for(root, split)
    if not ann.parent.is_dir():
        raise AtssError(f"no annotations/ folder in {root} (expected {ann}){_export_hint(root)}")
    if not ann.is_file():
        raise AtssError(f"split {split!r} not found: no annotation file {ann}{_export_hint(root)}")
    image_dir = root / split
    if not image_dir.is_dir():
        raise AtssError(f"split {split!r}: image folder not found: {image_dir}")
    return ann, image_dir


def resolve_cache_root(coco_root: Path, cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(coco_root) / CACHE_DIRNAME


def ensure_cache(coco_root: Path, split: str, cache_dir: Path | None = None) -> tuple[Path, bool, ParsedSplit | None]:
    """Build the cache of `split` if it is absent or stale: (split dir, built now?, parsed or None)."""
    ann, _ = check_split(coco_root, split)
    return _ensure(ann, resolve_cache_root(coco_root, cache_dir), split, cache_dir is not None)


def _ensure(ann: Path, root: Path, split: str, explicit_root: bool) -> tuple[Path, bool, ParsedSplit | None]:
    split_dir = root / split
    cache_dir = root if explicit_root else None
    if is_fresh(split_dir, ann):
        return split_dir, False, None
    if not _writable(root):
        where = "pass --out DIR (cache_dir=) with a writable folder" if cache_dir is None else "choose another folder"
        raise AtssError(f"cannot write the annotation cache to {root} (read-only); {where}")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root, split):
        if is_fresh(split_dir, ann):  # another process built it while we waited
            return split_dir, False, None
        parsed, source = parse_file(ann)
        write_cache(split_dir, parsed, split, ann.resolve(), source)
    return split_dir, True, parsed


def load_split(coco_root: Path, split: str, cache_dir: Path | None = None) -> CocoCache:
    """The prepared `split` of the COCO folder `coco_root`, building its cache when absent or stale.

    `cache_dir` is the cache root (default `<coco_root>/.atss_cache`; pass a writable folder for a
    read-only dataset). Raises AtssError when the split is not there or the JSON is not COCO.
    """
    split_dir, _, _ = ensure_cache(coco_root, split, cache_dir)
    ann, image_dir = check_split(coco_root, split)
    return CocoCache(split_dir, image_dir, ann)


# --------------------------------------------------------------------------- any COCO-format file


def check_ann(ann_file: Path, image_dir: Path) -> tuple[Path, Path]:
    """(annotation file, image folder) of a dataset given as files, or AtssError naming what is missing."""
    ann, images = Path(ann_file), Path(image_dir)
    if not ann.exists():
        raise AtssError(f"annotation file not found: {ann}")
    if not ann.is_file():
        raise AtssError(f"not a file: {ann} (pass the COCO-format JSON)")
    if not images.exists():
        raise AtssError(f"image folder not found: {images}")
    if not images.is_dir():
        raise AtssError(f"not a folder: {images} (pass the folder the JSON's file_name values are relative to)")
    return ann, images


def ann_cache_name(ann_file: Path) -> str:
    """The cache folder name of an annotation file: its stem and a hash of its absolute path, so
    that two exports with the same file name (train/_annotations.coco.json, valid/...) differ."""
    ann = Path(ann_file).resolve()
    stem = ann.name[:-5] if ann.name.endswith(".json") else ann.name
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem).strip(".") or "ann"
    return f"{stem}-{hashlib.sha1(str(ann).encode()).hexdigest()[:8]}"


def resolve_ann_cache_root(ann_file: Path, cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else Path(ann_file).parent / CACHE_DIRNAME


def ensure_ann_cache(ann_file: Path, image_dir: Path, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """Build the cache of an annotation file when absent or stale: (split dir, built now?)."""
    ann, _ = check_ann(ann_file, image_dir)
    split_dir, built, _ = _ensure(ann, resolve_ann_cache_root(ann, cache_dir), ann_cache_name(ann),
                                  cache_dir is not None)
    return split_dir, built


def load_ann(ann_file: Path, image_dir: Path, cache_dir: Path | None = None) -> CocoCache:
    """A dataset given as a COCO-format JSON and its image folder (any layout, any tool's export).

    The cache goes to `<cache_dir>/<ann_cache_name>` (default: `.atss_cache` beside the JSON).
    """
    split_dir, _ = ensure_ann_cache(ann_file, image_dir, cache_dir)
    return CocoCache(split_dir, Path(image_dir), Path(ann_file))


def open_dataset(*, coco: Path | None = None, split: str | None = None, ann: Path | None = None,
                 images: Path | None = None, cache_dir: Path | None = None) -> CocoCache:
    """`load_split(coco, split)` or `load_ann(ann, images)`, whichever the options name (one of them)."""
    if coco is not None:
        if ann is not None or images is not None:
            raise AtssError(f"give either {param('coco')} ROOT or {param('ann')} FILE {param('images')} DIR, not both")
        return load_split(Path(coco), split or "val2017", cache_dir)
    if ann is None or images is None:
        raise AtssError(f"give {param('coco')} ROOT, or both {param('ann')} FILE and {param('images')} DIR")
    return load_ann(Path(ann), Path(images), cache_dir)
