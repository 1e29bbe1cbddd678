"""COCO-size JPEGs for the input and training benchmarks, generated once into a folder and reused.

    coco_size_images(folder, count, size=(640, 480), quality=90, seed=0) -> dict
        `count` JPEG files of `size` (w, h) at `quality`, and `train.json` (COCO format, 7 boxes an
        image, 4 categories) beside them; a folder made with the same parameters and at least
        `count` images is reused. Returns {"ann", "images", "count", "size", "quality",
        "mean_bytes"}.

Why not the synthetic shapes dataset (`atss_cli.data.synthetic`): that one is made for learning
(few objects, flat fills, mixed sizes); a decode benchmark needs files that cost what a COCO
photo costs. COCO train2017 is about 19.3 GB over 118,287 images (about 163 kB each, most
640x480 or 640x427, 7.3 boxes each). These images are textures at several scales plus
per-pixel noise, which JPEG codes at a similar rate (the report prints the mean file size, to
judge against 163 kB). Only `DISTINCT` different pictures are encoded; the files repeat them
under distinct names (decoding cost depends on the bytes, not on whether they were seen).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DISTINCT = 16
BOXES_PER_IMAGE = 7
CATEGORIES = [{"id": i, "name": f"class {i}"} for i in (1, 2, 3, 5)]
DEFAULT_SIZE = (640, 480)
DEFAULT_QUALITY = 90


def _cv2():
    import cv2

    # One thread, as the data pipeline sets it: an OpenCV thread pool started here would be
    # broken in the DataLoader workers forked after it (their first resize hangs).
    cv2.setNumThreads(1)
    return cv2


def _picture(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """uint8 [h, w, 3] BGR: smooth colour fields at three scales, edges, and sensor-like noise."""
    cv2 = _cv2()

    img = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 70.0), (24, 35.0), (96, 18.0)):
        coarse = rng.normal(0, amp, (max(2, cells * h // w), cells, 3)).astype(np.float32)
        img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    img += 120
    for _ in range(12):  # hard edges, as objects against a background
        x1, y1 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x2, y2 = int(rng.integers(x1 + 10, w)), int(rng.integers(y1 + 10, h))
        img[y1:y2, x1:x2] += rng.normal(0, 40, 3).astype(np.float32)
    img += rng.normal(0, 15, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _boxes(rng: np.random.Generator, w: int, h: int) -> list[list[float]]:
    out = []
    for _ in range(BOXES_PER_IMAGE):
        bw, bh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append([round(float(x), 2), round(float(y), 2), round(float(bw), 2), round(float(bh), 2)])
    return out


def coco_size_images(folder: Path, count: int, size: tuple[int, int] = DEFAULT_SIZE,
                     quality: int = DEFAULT_QUALITY, seed: int = 0) -> dict:
    """Write (or reuse) the images and their COCO JSON in `folder`; see the module docstring."""
    cv2 = _cv2()

    from atss_cli.atomic import atomic_write_text
    from atss_cli.errors import AtssError, param

    w, h = size
    if count < 1:
        raise AtssError(f"need at least one image, got {count}")
    if w < 32 or h < 32:
        raise AtssError(f"{param('image_size')} must be at least 32x32, got {w}x{h}")
    folder = Path(folder)
    params = {"size": [w, h], "quality": int(quality), "seed": int(seed), "distinct": DISTINCT}
    marker = folder / "made.json"
    try:
        made = json.loads(marker.read_text())
    except (OSError, ValueError):
        made = None
    if made and made.get("params") == params and made.get("count", 0) >= count:
        return made["summary"]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AtssError(f"{param('images_dir')} {folder}: cannot create it ({exc.strerror})") from None
    encoded = []
    for i in range(DISTINCT):
        rng = np.random.default_rng([seed, i])
        ok, data = cv2.imencode(".jpg", _picture(rng, w, h), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise AtssError(f"OpenCV could not encode a {w}x{h} JPEG")
        encoded.append(data.tobytes())
    images, anns = [], []
    rng = np.random.default_rng([seed, 99])
    for i in range(count):
        name = f"{i + 1:012d}.jpg"
        (folder / name).write_bytes(encoded[i % DISTINCT])
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for box in _boxes(rng, w, h):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "bbox": box, "area": box[2] * box[3],
                         "iscrowd": 0, "category_id": CATEGORIES[len(anns) % len(CATEGORIES)]["id"]})
    ann = folder / "train.json"
    atomic_write_text(ann, json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    summary = {"ann": str(ann), "images": str(folder), "count": count, "size": f"{w}x{h}", "quality": int(quality),
               "mean_bytes": int(sum(len(e) for e in encoded) / len(encoded))}
    atomic_write_text(marker, json.dumps({"params": params, "count": count, "summary": summary}))
    return summary


def default_folder(size: tuple[int, int], quality: int) -> Path:
    """Where the benchmarks keep their images unless told (`--images-dir`): the temp folder."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"atss-bench-images-{size[0]}x{size[1]}-q{quality}"
