"""Per-image work done for many images at once: padded [images, detections, ground truths] blocks.

    sort_detections(dets, num_images, max_dets=None) -> (order, rank)
        Detections in TIDE's and COCOeval's visiting order: by image, then descending score,
        ties in file order (a stable sort, as Python's list.sort and COCOeval's mergesort);
        `rank` is the place within the image. With `max_dets` only the first max_dets of each
        image are kept (`order` indexes the kept ones).
    blocks(num_images, det_img, gt_img, others=(), budget) -> iterator of Block
        Images grouped so that images x D x G stays near `budget` elements (images of alike
        sizes together, so padding stays small). det_img, gt_img and each of `others` (more
        per-image lists, e.g. crowd regions, padded alike in Block.others) must be sorted.
    box_iou(dt [..., D, 4], gt [..., G, 4], crowd [..., G]) -> float64 [..., D, G]
        pycocotools' bbIou on xywh boxes, operation for operation: intersection over union,
        or over the detection's own area where the ground truth is a crowd region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sort_detections(img: np.ndarray, score: np.ndarray, num_images: int, max_dets: int | None = None):
    n = len(img)
    order = np.lexsort((np.arange(n), -score, img))
    starts = np.searchsorted(img[order], np.arange(num_images))
    rank = np.arange(n) - starts[img[order]]
    if max_dets is not None:
        keep = rank < max_dets
        order, rank = order[keep], rank[keep]
    return order, rank


@dataclass
class Block:
    images: np.ndarray     # int64 [c]
    det: np.ndarray        # int64 [c, D] index into the sorted detection arrays, -1 = padding
    gt: np.ndarray         # int64 [c, G] index into the sorted ground-truth arrays, -1 = padding
    others: list           # [int64 [c, H]] the same for each of `others`


def _spans(sorted_img: np.ndarray, num_images: int):
    starts = np.searchsorted(sorted_img, np.arange(num_images), side="left")
    ends = np.searchsorted(sorted_img, np.arange(num_images), side="right")
    return starts, ends - starts


def _padded(starts, counts, images):
    width = int(counts[images].max()) if len(images) else 0
    idx = starts[images][:, None] + np.arange(width)[None, :]
    idx[np.arange(width)[None, :] >= counts[images][:, None]] = -1
    return idx


def blocks(num_images: int, det_img: np.ndarray, gt_img: np.ndarray, others=(), budget: int = 1 << 21):
    d_start, d_count = _spans(det_img, num_images)
    g_start, g_count = _spans(gt_img, num_images)
    spans = [_spans(o, num_images) for o in others]
    order = np.lexsort((d_count, g_count))
    i = 0
    while i < num_images:
        # Grow the group while images x maxD x maxG stays within the budget (at least one image).
        j = i + 1
        dmax, gmax = max(int(d_count[order[i]]), 1), max(int(g_count[order[i]]), 1)
        while j < num_images:
            dn, gn = max(dmax, int(d_count[order[j]])), max(gmax, int(g_count[order[j]]))
            if (j - i + 1) * dn * gn > budget:
                break
            dmax, gmax, j = dn, gn, j + 1
        images = np.sort(order[i:j])
        yield Block(images, _padded(d_start, d_count, images), _padded(g_start, g_count, images),
                    [_padded(s, c, images) for s, c in spans])
        i = j


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    dt, gt = dt[..., :, None, :], gt[..., None, :, :]
    w = np.minimum(dt[..., 2] + dt[..., 0], gt[..., 2] + gt[..., 0]) - np.maximum(dt[..., 0], gt[..., 0])
    h = np.minimum(dt[..., 3] + dt[..., 1], gt[..., 3] + gt[..., 1]) - np.maximum(dt[..., 1], gt[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da = dt[..., 2] * dt[..., 3]
    ga = gt[..., 2] * gt[..., 3]
    union = da + ga - inter
    if crowd is not None:
        union = np.where(crowd[..., None, :], np.broadcast_to(da, union.shape), union)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(inter > 0, iou, 0.0)
