"""COCO annotation parsing: one JSON file -> flat numpy arrays and the numbers of the summary.

The rules are SPEC.md section 5 (MMDetection's `CocoDataset.parse_data_info` and
`filter_data`). An annotation is dropped, for the first reason that applies, in this order:

    unknown_image      its image_id is not in "images"
    duplicate_id       an earlier annotation has the same "id" (the first one is kept)
    ignore             "ignore" is set
    non_finite         a box value or the area is NaN or infinite
    negative_size      the box's width or height is negative
    no_overlap         the box does not overlap the image (intersection area 0)
    degenerate         area <= 0, w < 1 or h < 1
    unknown_category   its category_id is not in "categories"

(MMDetection drops the same boxes: non-finite ones as degenerate, negative ones as not
overlapping; the reasons here only name them better. Duplicate ids would make COCOeval read
one annotation twice.)

What is left is a *usable* box (xyxy, not clipped: the transforms clip after resizing).
`iscrowd=1` usable boxes stay in the arrays, flagged, and are kept out of training GT.
An image is used for training when it has at least one annotation of a known category of any
kind (so an image whose annotations are all crowd, ignored or degenerate stays, with zero GT,
as in MMDetection) and its shorter side is at least 32 pixels.

Category ids (any integers >= 0, gaps allowed) map to contiguous labels 0..C-1 in sorted id
order. A category without any annotation whose name is another category's "supercategory" (the
parent entry of a Roboflow export) is dropped before the mapping and listed under
stats["dropped_categories"]. Fields a detector does not read (segmentation, keypoints,
attributes, tracking ids) are ignored; a missing "area" is w * h and a missing "iscrowd" is 0.

Nothing here imports torch or prints.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atss_cli.errors import AtssError

SKIP_REASONS = ("unknown_image", "duplicate_id", "ignore", "non_finite", "negative_size", "no_overlap", "degenerate",
                "unknown_category")
MIN_TRAIN_SIDE = 32


@dataclass
class ParsedSplit:
    """The arrays of one annotation file; images keep the JSON order, boxes are grouped by image."""

    image_ids: np.ndarray        # int64 [N]
    heights: np.ndarray          # int32 [N] (from the JSON)
    widths: np.ndarray           # int32 [N]
    names_blob: np.ndarray       # uint8 [total bytes]: UTF-8 file names, concatenated
    name_offsets: np.ndarray     # int64 [N + 1]
    has_known_ann: np.ndarray    # bool [N]: any annotation of a known category (MMDetection's filter)
    boxes: np.ndarray            # float32 [K, 4] xyxy, usable boxes, grouped by image
    labels: np.ndarray           # int32 [K] contiguous labels
    crowd: np.ndarray            # bool [K]
    ann_ids: np.ndarray          # int64 [K]
    box_offsets: np.ndarray      # int64 [N + 1]: image i owns boxes[box_offsets[i]:box_offsets[i+1]]
    categories: list[dict]       # [{"id", "name"}] in label order
    stats: dict = field(default_factory=dict)
    # Each rule's bool [A] mask over the JSON's annotations, in file order (whatever rule came
    # first): what the evaluation's ground truth leaves out is decided by the same rules.
    rule_masks: dict[str, np.ndarray] = field(default_factory=dict)

    def file_names(self) -> list[str]:
        blob = self.names_blob.tobytes()
        off = self.name_offsets
        return [blob[off[i]:off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]


def _not_coco(path: Path, what: str) -> AtssError:
    return AtssError(f"{path} is not a COCO annotation file: {what}")


# A "segmentation" value: a list of polygons (flat lists of numbers) or an RLE object (its
# "counts" string uses the characters 0..o, never a brace). Detection never reads it, and
# materialising its floats is most of the cost of parsing a COCO file.
_SEGMENTATION = re.compile(rb'"segmentation"\s*:\s*(?:\[\s*(?:\[[^\[\]]*\]\s*,?\s*)*\]|\{[^{}]*\})')


def load_json(path: Path, data: bytes, skip_segmentation: bool = True):
    """Parse `data` (the bytes of `path`); malformed JSON raises AtssError with line and column.

    With `skip_segmentation`, every annotation's "segmentation" value is replaced by 0 before
    parsing (3-5x faster on COCO). Should the shortened text not parse, the original is parsed,
    so a malformed file is reported at its own line and column.
    """
    if skip_segmentation:
        try:
            return json.loads(_SEGMENTATION.sub(b'"segmentation":0', data))
        except (ValueError, RecursionError):
            pass
    try:
        return json.loads(data)
    except json.JSONDecodeError as exc:
        raise AtssError(f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise AtssError(f"{path}: not UTF-8 text (byte {exc.start}): malformed JSON") from None
    except RecursionError:
        raise AtssError(f"{path}: malformed JSON: nesting too deep") from None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _find_bad_record(path: Path, records: list, section: str, checks: dict) -> AtssError:
    """The slow path after a fast conversion failed: name the first record and field that is wrong."""
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            return _not_coco(path, f'"{section}"[{i}] is a {type(rec).__name__}, not an object')
        for key, (check, want) in checks.items():
            if key not in rec:
                return _not_coco(path, f'"{section}"[{i}] has no "{key}" field')
            if not check(rec[key]):
                return _not_coco(path, f'"{section}"[{i}]["{key}"] must be {want}, got {json.dumps(rec[key])[:60]}')
    return _not_coco(path, f'"{section}" has a record that cannot be read')


_IMAGE_CHECKS = {
    "id": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "file_name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "width": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "height": (lambda v: _is_number(v) and v > 0, "a positive number"),
}
_ANN_CHECKS = {
    "image_id": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "category_id": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "bbox": (lambda v: isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v),
             "a list of 4 numbers [x, y, w, h]"),
}
_CAT_CHECKS = {
    "id": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "name": (lambda v: isinstance(v, str), "a string"),
}


def _column(path, records, section, key, checks, dtype):
    """records[*][key] as a numpy array, or an AtssError naming the first bad record."""
    try:
        arr = np.array([r[key] for r in records], dtype=dtype)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise _find_bad_record(path, records, section, checks) from None
    return arr


_REQUIRED = operator.itemgetter("image_id", "category_id", "bbox", "iscrowd", "area", "id")


def _annotation_columns(path: Path, anns: list):
    """(image_id, category_id, bbox [K, 4], iscrowd, area (NaN if absent), id) as numpy arrays.

    The fast path reads COCO's six usual fields with one C-level getter per record; a file
    without some optional field ("iscrowd", "area", "id") takes the field-by-field path.
    """
    k = len(anns)
    if k == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, np.zeros((0, 4)), np.zeros(0, dtype=bool), np.zeros(0), z
    try:
        img, cat, boxes, crowd, area, ids = zip(*map(_REQUIRED, anns))
    except (KeyError, TypeError):
        img = cat = boxes = None
    if img is None:
        img = _column(path, anns, "annotations", "image_id", _ANN_CHECKS, object)
        cat = _column(path, anns, "annotations", "category_id", _ANN_CHECKS, object)
        boxes = [a["bbox"] for a in anns]
        crowd = [a.get("iscrowd", 0) for a in anns]
        area = [a.get("area", float("nan")) for a in anns]
        ids = [a.get("id", -1) for a in anns]
    try:
        ann_img = np.array(img, dtype=np.int64)
        ann_cat = np.array(cat, dtype=np.int64)
        if set(map(len, boxes)) != {4}:
            raise ValueError
        bbox = np.fromiter(itertools.chain.from_iterable(boxes), dtype=np.float64, count=4 * k).reshape(k, 4)
    except (TypeError, ValueError, OverflowError):
        raise _find_bad_record(path, anns, "annotations", _ANN_CHECKS) from None
    try:
        crowd = np.array(crowd, dtype=np.int64) != 0
        area = np.array([float("nan") if a is None else a for a in area], dtype=np.float64)
        ann_ids = np.array(ids, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise _not_coco(path, 'an annotation has an "iscrowd", "area" or "id" that is not a number') from None
    return ann_img, ann_cat, bbox, crowd, area, ann_ids


def _kept_categories(cats: list, cat_ids: np.ndarray, ann_cat: np.ndarray) -> tuple[list[dict], list[dict]]:
    """([{"id", "name"}] in label order, [{"id", "name"}] dropped as supercategory-only entries)."""
    used = set(np.unique(ann_cat).tolist())
    parents = {str(c["supercategory"]) for c in cats if isinstance(c.get("supercategory"), str)}
    kept, dropped = [], []
    for j in np.argsort(cat_ids, kind="stable"):
        c = cats[j]
        entry = {"id": int(c["id"]), "name": str(c["name"])}
        is_parent = entry["name"] in parents and any(
            o is not c and o.get("supercategory") == entry["name"] for o in cats)
        (dropped if is_parent and entry["id"] not in used else kept).append(entry)
    return kept, dropped


def parse_coco(path: Path, data) -> ParsedSplit:
    """Apply the section-5 rules to the loaded JSON `data` of annotation file `path`."""
    if not isinstance(data, dict):
        raise _not_coco(path, f"the top level is a {type(data).__name__}, not an object")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _not_coco(path, f'no "{key}" field')
        if not isinstance(data[key], list):
            raise _not_coco(path, f'"{key}" is a {type(data[key]).__name__}, not a list')
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    if not images:
        raise AtssError(f"{path}: empty split, \"images\" is empty")
    if not cats:
        raise _not_coco(path, '"categories" is empty')

    # --- categories: checked here, mapped to labels once the annotations are read
    for c in cats:
        if not isinstance(c, dict) or not _CAT_CHECKS["id"][0](c.get("id")) or not isinstance(c.get("name"), str):
            raise _find_bad_record(path, cats, "categories", _CAT_CHECKS)
    cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
    if (cat_ids < 0).any():
        i = int(np.flatnonzero(cat_ids < 0)[0])
        raise _not_coco(path, f'"categories"[{i}]["id"] must be an integer >= 0, got {int(cat_ids[i])}')
    uniq, counts = np.unique(cat_ids, return_counts=True)
    if (counts > 1).any():
        raise _not_coco(path, f'"categories" repeats id {int(uniq[counts > 1][0])}')

    # --- images (JSON order, as MMDetection)
    image_ids = _column(path, images, "images", "id", _IMAGE_CHECKS, np.int64)
    widths_f = _column(path, images, "images", "width", _IMAGE_CHECKS, np.float64)
    heights_f = _column(path, images, "images", "height", _IMAGE_CHECKS, np.float64)
    try:
        names = [r["file_name"].encode("utf-8") for r in images]
    except (KeyError, TypeError, AttributeError):
        raise _find_bad_record(path, images, "images", _IMAGE_CHECKS) from None
    if not (widths_f > 0).all() or not (heights_f > 0).all() or min(len(n) for n in names) == 0:
        raise _find_bad_record(path, images, "images", _IMAGE_CHECKS)
    n_img = len(images)
    uniq, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        raise _not_coco(path, f'"images" repeats id {int(uniq[counts > 1][0])}')
    name_offsets = np.zeros(n_img + 1, dtype=np.int64)
    np.cumsum([len(n) for n in names], out=name_offsets[1:])
    names_blob = np.frombuffer(b"".join(names), dtype=np.uint8)

    # --- annotations: columns, then the rules, vectorised
    k = len(anns)
    if k and not isinstance(anns[0], dict):
        raise _find_bad_record(path, anns, "annotations", _ANN_CHECKS)
    ann_img, ann_cat, bbox, crowd, area, ann_ids = _annotation_columns(path, anns)
    categories, dropped = _kept_categories(cats, cat_ids, ann_cat)
    sorted_cat_ids = np.array([c["id"] for c in categories], dtype=np.int64)
    ignore = np.zeros(k, dtype=bool)
    if any("ignore" in a for a in anns):
        ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    w, h = bbox[:, 2], bbox[:, 3]
    # A missing "area" is read as w * h (COCO files always have it; hand-made ones may not).
    area = np.where(np.isnan(area), w * h, area)

    sort_ids = np.argsort(image_ids, kind="stable")
    pos = np.searchsorted(image_ids[sort_ids], ann_img)
    pos = np.minimum(pos, n_img - 1)
    known_image = image_ids[sort_ids][pos] == ann_img
    ann_index = np.where(known_image, sort_ids[pos], -1)

    cpos = np.minimum(np.searchsorted(sorted_cat_ids, ann_cat), len(sorted_cat_ids) - 1)
    known_cat = sorted_cat_ids[cpos] == ann_cat
    labels_all = cpos.astype(np.int32)

    img_w = np.where(known_image, widths_f[np.maximum(ann_index, 0)], 0)
    img_h = np.where(known_image, heights_f[np.maximum(ann_index, 0)], 0)
    x1, y1 = bbox[:, 0], bbox[:, 1]
    with np.errstate(invalid="ignore"):
        inter_w = np.maximum(0.0, np.minimum(x1 + w, img_w) - np.maximum(x1, 0.0))
        inter_h = np.maximum(0.0, np.minimum(y1 + h, img_h) - np.maximum(y1, 0.0))
        finite = np.isfinite(bbox).all(axis=1) & np.isfinite(area)
        no_overlap = finite & ~(inter_w * inter_h > 0)
        degenerate = ~finite | (area <= 0) | (w < 1) | (h < 1)

    negative = finite & ((w < 0) | (h < 0))
    duplicate = np.zeros(k, dtype=bool)
    if k:
        # Repeats of an id (the first stays); a file without ids reads -1 for each, not a repeat.
        _, first = np.unique(ann_ids, return_index=True)
        duplicate[:] = True
        duplicate[first] = False
        duplicate &= ann_ids != -1
    masks = (~known_image, duplicate, ignore, ~finite, negative, no_overlap, degenerate, ~known_cat)
    reason = np.full(k, -1, dtype=np.int8)
    for r, mask in enumerate(masks):
        reason[(reason < 0) & mask] = r
    usable = reason < 0
    skipped = {name: int((reason == r).sum()) for r, name in enumerate(SKIP_REASONS)}

    # MMDetection's filter: images with any annotation of a known category (whatever its flags).
    has_known_ann = np.zeros(n_img, dtype=bool)
    has_known_ann[ann_index[known_image & known_cat]] = True

    keep = np.flatnonzero(usable)
    order = keep[np.argsort(ann_index[keep], kind="stable")]
    kept_img = ann_index[order]
    xyxy = np.stack([x1[order], y1[order], x1[order] + w[order], y1[order] + h[order]], axis=1).astype(np.float32)
    box_offsets = np.zeros(n_img + 1, dtype=np.int64)
    np.cumsum(np.bincount(kept_img, minlength=n_img), out=box_offsets[1:])

    crowd_kept = crowd[order]
    per_image_gt = np.bincount(kept_img[~crowd_kept], minlength=n_img)
    heights = np.ceil(heights_f).astype(np.int32)
    widths = np.ceil(widths_f).astype(np.int32)
    too_small = np.minimum(heights_f, widths_f) < MIN_TRAIN_SIDE
    box_counts = np.bincount(labels_all[order][~crowd_kept], minlength=len(categories))
    stats = {
        "images": n_img,
        "annotations": k,
        "categories": len(categories),
        "usable_boxes": int((~crowd_kept).sum()),
        "crowd_boxes": int(crowd_kept.sum()),
        "skipped": skipped,
        "images_without_usable_box": int((per_image_gt == 0).sum()),
        "training_images": int((has_known_ann & ~too_small).sum()),
        "not_for_training": {"no_annotation": int((~has_known_ann).sum()),
                             "too_small": int((has_known_ann & too_small).sum())},
        "boxes_per_category": {c["name"]: int(n) for c, n in zip(categories, box_counts)},
        "dropped_categories": dropped,
    }
    return ParsedSplit(image_ids=image_ids, heights=heights, widths=widths, names_blob=names_blob,
                       name_offsets=name_offsets, has_known_ann=has_known_ann, boxes=xyxy,
                       labels=labels_all[order], crowd=crowd_kept, ann_ids=ann_ids[order],
                       box_offsets=box_offsets, categories=categories, stats=stats,
                       rule_masks=dict(zip(SKIP_REASONS, masks)))
