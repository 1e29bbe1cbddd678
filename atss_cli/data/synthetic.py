"""A small generated detection dataset in the exact COCO 2017 layout, for the demo and the tests.

    <out>/annotations/instances_train2017.json, instances_val2017.json
    <out>/train2017/000000000001.jpg ...     <out>/val2017/000000100001.jpg ...
    <out>/synthetic.json                      the parameters it was made with

Four classes, told apart by shape (colour leans per class but varies): rectangle (id 1),
ellipse (id 2), triangle (id 3), cross (id 5; id 4 is left out on purpose, so that code
mapping labels to category ids with `label + 1` is caught). Objects of 1 to 4 per image,
sides from about 8% to 50% of the long side, aspect ratios 1:2 to 2:1, solid, striped or
speckled fill, limited overlap; backgrounds with a gradient, noise and small clutter. Images
are landscape or portrait (long side `size`).

To exercise the parsing rules, train2017 also holds a crowd annotation every 40 images,
degenerate (w < 1, area 0), ignored, outside-the-image and unknown-category annotations
(nothing is drawn for those), images with no annotation, images with only a crowd box, and one
image too small for training. val2017 holds only what COCOeval ignores (crowd boxes, an
unknown category) besides the objects, so its AP measures the detector alone.

Every image depends only on (seed, split, index): deterministic, and the val set does not
change with the number of train images.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from atss_cli.atomic import make_temp_dir
from atss_cli.errors import AtssError, param

CATEGORIES = [{"id": 1, "name": "rectangle", "supercategory": "shape"},
              {"id": 2, "name": "ellipse", "supercategory": "shape"},
              {"id": 3, "name": "triangle", "supercategory": "shape"},
              {"id": 5, "name": "cross", "supercategory": "shape"}]
_HUES = (0.0, 0.33, 0.62, 0.14)     # base hue per class (red, green, blue, orange), jittered
_UNKNOWN_CATEGORY = 99
_SPLIT_CODE = {"train2017": 1, "val2017": 2}
_ID_BASE = {"train2017": 0, "val2017": 100000}
VERSION = 1


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255.0


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _covered(a, b) -> float:
    """Fraction of box a covered by box b."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((a[2] - a[0]) * (a[3] - a[1]), 1e-9)


def _shape_mask(cls: int, box, w: int, h: int, rng) -> np.ndarray:
    """bool [h, w] mask of a class-`cls` shape whose tight box is `box` (integer xyxy)."""
    from PIL import Image, ImageDraw

    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    x1, y1, x2, y2 = box
    xe, ye = x2 - 1, y2 - 1  # PIL's drawing coordinates are inclusive
    if cls == 0:
        d.rectangle([x1, y1, xe, ye], fill=255)
    elif cls == 1:
        d.ellipse([x1, y1, xe, ye], fill=255)
    elif cls == 2:
        t = rng.uniform(0.2, 0.8)
        side = int(rng.integers(4))
        if side == 0:
            pts = [(x1, ye), (xe, ye), (x1 + t * (xe - x1), y1)]
        elif side == 1:
            pts = [(x1, y1), (xe, y1), (x1 + t * (xe - x1), ye)]
        elif side == 2:
            pts = [(x1, y1), (x1, ye), (xe, y1 + t * (ye - y1))]
        else:
            pts = [(xe, y1), (xe, ye), (x1, y1 + t * (ye - y1))]
        d.polygon(pts, fill=255)
    else:
        tw = max(2, int((x2 - x1) * rng.uniform(0.25, 0.4)))
        th = max(2, int((y2 - y1) * rng.uniform(0.25, 0.4)))
        cx = int(x1 + (x2 - x1) * rng.uniform(0.35, 0.65))
        cy = int(y1 + (y2 - y1) * rng.uniform(0.35, 0.65))
        d.rectangle([x1, cy - th // 2, xe, cy - th // 2 + th - 1], fill=255)
        d.rectangle([cx - tw // 2, y1, cx - tw // 2 + tw - 1, ye], fill=255)
    return np.asarray(m) > 0


def _texture(cls: int, h: int, w: int, rng) -> np.ndarray:
    """float [h, w, 3] fill of an object: class-leaning colour, solid / stripes / speckles."""
    colour = _hsv_to_rgb(_HUES[cls] + rng.uniform(-0.06, 0.06), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    fill = np.broadcast_to(colour, (h, w, 3)).copy()
    kind = rng.integers(3)
    if kind == 1:
        period = int(rng.integers(5, 14))
        yy, xx = np.mgrid[0:h, 0:w]
        proj = xx if rng.random() < 0.5 else yy
        if rng.random() < 0.5:
            proj = xx + yy
        fill[(proj // (period // 2 + 1)) % 2 == 1] *= rng.uniform(0.5, 0.8)
    elif kind == 2:
        fill *= (1.0 + rng.normal(0, 0.15, (h, w, 1)))
    return fill


def _background(h: int, w: int, rng) -> np.ndarray:
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.25, 0.85))
    g = rng.normal(0, 25, 3)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (xx / w if rng.random() < 0.5 else yy / h)[..., None]
    img = base + (t - 0.5) * g
    img = img + rng.normal(0, rng.uniform(2, 10), (h, w, 1))
    # Clutter: small low-saturation dots and thin lines, far smaller than any object.
    from PIL import Image, ImageDraw

    layer = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(3, 12))):
        c = tuple(int(v) for v in _hsv_to_rgb(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.2, 0.9)))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            r = rng.uniform(1, 4)
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        else:
            d.line([x, y, x + rng.uniform(-30, 30), y + rng.uniform(-30, 30)], fill=c, width=1)
    return np.asarray(layer).astype(np.float64)


def _rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major run lengths starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _place(rng, w: int, h: int, size: int, boxes: list, lo: float, hi: float):
    for _ in range(30):
        side = size * np.exp(rng.uniform(np.log(lo), np.log(hi)))
        ar = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        bw, bh = int(round(side * np.sqrt(ar))), int(round(side / np.sqrt(ar)))
        bw, bh = max(6, min(bw, w - 2)), max(6, min(bh, h - 2))
        x1, y1 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        box = (x1, y1, x1 + bw, y1 + bh)
        if all(_iou(box, b) < 0.2 and _covered(b, box) < 0.35 and _covered(box, b) < 0.35 for b in boxes):
            return box
    return None


def _make_image(split: str, index: int, seed: int, size: int):
    """(uint8 [h, w, 3] image, list of annotation dicts without ids) for one image."""
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    train = split == "train2017"
    landscape = rng.random() < 0.6
    short = int(round(size * rng.uniform(0.6, 1.0)))
    w, h = (size, short) if landscape else (short, size)
    if train and index == 5:
        w, h = size, 24  # too small for training (min side < 32)
    img = _background(h, w, rng)
    anns: list[dict] = []

    period = 100 if train else 25
    no_objects = train and index % period == 57
    crowd_only = train and index % period == 77
    n_obj = 0 if (no_objects or crowd_only) else int(rng.integers(1, 5))
    boxes: list = []
    for _ in range(n_obj):
        box = _place(rng, w, h, size, boxes, 0.08, 0.5)
        if box is None:
            continue
        cls = int(rng.integers(len(CATEGORIES)))
        mask = _shape_mask(cls, box, w, h, rng)
        x1, y1, x2, y2 = box
        tex = _texture(cls, y2 - y1, x2 - x1, rng)
        region = img[y1:y2, x1:x2]
        sub = mask[y1:y2, x1:x2]
        region[sub] = tex[sub]
        boxes.append(box)
        anns.append({"category_id": CATEGORIES[cls]["id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": int(mask.sum()), "iscrowd": 0,
                     "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})

    if crowd_only or index % (40 if train else 25) == 7:
        # A crowd: a cluster of small shapes of one class under one iscrowd=1 box.
        box = _place(rng, w, h, size, boxes, 0.25, 0.35)
        if box is not None:
            cls = int(rng.integers(len(CATEGORIES)))
            x1, y1, x2, y2 = box
            crowd_mask = np.zeros((h, w), dtype=bool)
            for _ in range(int(rng.integers(4, 8))):
                cw, ch = int(rng.integers(6, 14)), int(rng.integers(6, 14))
                cx, cy = int(rng.integers(x1, x2 - cw)), int(rng.integers(y1, y2 - ch))
                m = _shape_mask(cls, (cx, cy, cx + cw, cy + ch), w, h, rng)
                img[m] = _texture(cls, h, w, rng)[m]
                crowd_mask |= m
            ys, xs = np.nonzero(crowd_mask)
            bx1, by1, bx2, by2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            boxes.append((bx1, by1, bx2, by2))
            anns.append({"category_id": CATEGORIES[cls]["id"], "bbox": [bx1, by1, bx2 - bx1, by2 - by1],
                         "area": int(crowd_mask.sum()), "iscrowd": 1, "segmentation": _rle(crowd_mask)})

    cat = CATEGORIES[index % len(CATEGORIES)]["id"]
    if train:  # defects the parser must drop (nothing is drawn for them)
        k = index % 50
        if k == 3:
            anns.append({"category_id": cat, "bbox": [10.0, 10.0, 0.5, 12.0], "area": 6.0, "iscrowd": 0})
        elif k == 13:
            anns.append({"category_id": cat, "bbox": [20.0, 20.0, 10.0, 10.0], "area": 0, "iscrowd": 0})
        elif k == 23:
            anns.append({"category_id": cat, "bbox": [5.0, 5.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0,
                         "ignore": 1})
        elif k == 33:
            anns.append({"category_id": cat, "bbox": [w + 5.0, 10.0, 20.0, 20.0], "area": 400.0, "iscrowd": 0})
    if index % 50 == 43 if train else index % 25 == 18:
        anns.append({"category_id": _UNKNOWN_CATEGORY, "bbox": [1.0, 1.0, 20.0, 20.0], "area": 400.0,
                     "iscrowd": 0})
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), anns


def _write_split(root: Path, split: str, n: int, seed: int, size: int) -> dict:
    from PIL import Image

    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        pixels, anns = _make_image(split, i, seed, size)
        image_id = _ID_BASE[split] + i + 1
        name = f"{image_id:012d}.jpg"
        Image.fromarray(pixels).save(root / split / name, quality=92)
        images.append({"id": image_id, "file_name": name, "height": int(pixels.shape[0]),
                       "width": int(pixels.shape[1])})
        for a in anns:
            annotations.append({"id": len(annotations) + 1 + _ID_BASE[split] * 10, "image_id": image_id, **a})
    doc = {"info": {"description": f"atss synthetic shapes, seed {seed}", "version": str(VERSION)},
           "licenses": [], "images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return {"images": n, "annotations": len(annotations)}


def generate_synthetic(out_dir: Path, train_images: int = 400, val_images: int = 50, seed: int = 0,
                       size: int = 320) -> dict:
    """Write the dataset to `out_dir` (absent or empty) atomically; returns a summary dict.

    If `out_dir` already holds a dataset made with the same parameters, nothing is written
    (summary "status": "exists"); any other non-empty folder is an AtssError.
    """
    out = Path(out_dir)
    params = {"version": VERSION, "train_images": int(train_images), "val_images": int(val_images),
              "seed": int(seed), "size": int(size)}
    if train_images < 0 or val_images < 0 or train_images + val_images == 0:
        raise AtssError(f"need at least one image (got {param('num_train')} {train_images}, {param('num_val')} {val_images})")
    if not 64 <= size <= 4096:
        raise AtssError(f"{param('size')} must be between 64 and 4096 pixels, got {size}")
    marker = out / "synthetic.json"
    if out.exists():
        if not out.is_dir():
            raise AtssError(f"not a folder: {out}")
        if marker.exists():
            try:
                old = json.loads(marker.read_text())
            except (OSError, ValueError):
                old = None
            if old == params:
                return {"root": str(out), "status": "exists", **params}
            raise AtssError(f"{out} holds a synthetic dataset made with other parameters ({old}); "
                            "choose a new folder")
        if any(out.iterdir()):
            raise AtssError(f"{out} is not empty; choose a new or empty folder for the synthetic dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, f".{out.name}.tmp-")
    try:
        (tmp / "annotations").mkdir()
        counts = {}
        for split, n in (("train2017", train_images), ("val2017", val_images)):
            if n > 0:
                counts[split] = _write_split(tmp, split, n, seed, size)
        marker_tmp = tmp / "synthetic.json"
        marker_tmp.write_text(json.dumps(params, indent=1))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"root": str(out), "status": "written", **params, "splits": counts}
