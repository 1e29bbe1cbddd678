"""COCO result records and JSON files: the small pieces `evaluate` and `predict` share.

    detections_to_coco(image_id, boxes, scores, labels, label_to_cat_id) -> list[dict]
        boxes xyxy [K, 4] in the original image -> [{"image_id", "category_id",
        "bbox": [x, y, w, h], "score"}, ...] (floats; category ids mapped back from labels).
    write_json_atomic(path, obj) -> Path
        Writes to a temporary file beside `path`, then renames it over `path`, so a reader
        never sees half a file and an interrupted run leaves the old file intact.

No torch import at module level: the array arguments may be tensors or numpy arrays.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from atss_cli.atomic import atomic_write_json

def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def label_lookup(label_to_cat_id: Mapping[int, int] | Sequence[int]) -> np.ndarray:
    """Label -> category id as an int64 array (index = contiguous label 0..C-1)."""
    if isinstance(label_to_cat_id, Mapping):
        n = max(label_to_cat_id) + 1 if label_to_cat_id else 0
        table = np.full(n, -1, dtype=np.int64)
        for label, cat_id in label_to_cat_id.items():
            table[int(label)] = int(cat_id)
        return table
    return np.asarray([int(c) for c in label_to_cat_id], dtype=np.int64)


def pack_detections(boxes, scores, labels) -> np.ndarray:
    """[K, 6] float64 rows (x, y, w, h, score, label) from xyxy boxes: compact to gather."""
    b = _numpy(boxes).astype(np.float64).reshape(-1, 4)
    s = _numpy(scores).astype(np.float64).reshape(-1)
    lab = _numpy(labels).astype(np.float64).reshape(-1)
    if not (len(b) == len(s) == len(lab)):
        raise ValueError(f"boxes, scores, labels disagree in length: {len(b)}, {len(s)}, {len(lab)}")
    out = np.empty((len(b), 6), dtype=np.float64)
    out[:, 0] = b[:, 0]
    out[:, 1] = b[:, 1]
    out[:, 2] = b[:, 2] - b[:, 0]
    out[:, 3] = b[:, 3] - b[:, 1]
    out[:, 4] = s
    out[:, 5] = lab
    return out


def packed_to_coco(image_id: int, packed: np.ndarray, table: np.ndarray) -> list[dict]:
    """Rows from `pack_detections` -> COCO result dicts for one image."""
    if len(packed) == 0:
        return []
    labels = packed[:, 5].astype(np.int64)
    if labels.min() < 0 or labels.max() >= len(table):
        raise ValueError(f"label {int(labels.max())} outside the {len(table)} known categories")
    cat_ids = table[labels]
    # float32 boxes widened to float64 give the same numbers as MMDetection's float(bbox[i]).
    rows = packed[:, :5].tolist()
    image_id = int(image_id)
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": r[:4], "score": r[4]}
        for r, c in zip(rows, cat_ids.tolist())
    ]


def detections_to_coco(image_id: int, boxes, scores, labels,
                       label_to_cat_id: Mapping[int, int] | Sequence[int]) -> list[dict]:
    """One image's detections (xyxy in the original image) as COCO result dicts (xywh)."""
    return packed_to_coco(image_id, pack_detections(boxes, scores, labels), label_lookup(label_to_cat_id))


def write_json_atomic(path: str | os.PathLike, obj, *, indent: int | None = None) -> Path:
    """Write `obj` as JSON to `path` atomically (atss_cli.atomic)."""
    return atomic_write_json(path, obj, indent=indent)
