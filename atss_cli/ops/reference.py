"""The ATSS assignment in pure PyTorch: the readable spec (SPEC.md section 2) and the fallback.

Written per image, step by step, in the vectorised form MMDetection uses: a full N x M IoU
matrix and a full N x M distance matrix per image, `topk` per level, no Python loop over
anchors. It is the honest baseline the kernels are measured against, and their oracle in the
tests. Inputs are assumed checked (see `atss_cli.ops.checks`); use the functions in
`atss_cli.ops` for checked calls with `backend="reference"`.

Conventions: boxes are (x1, y1, x2, y2) float32; widths are x2 - x1 (no +1). Assignment:
0-based GT index, -1 background, -2 ignored (invalid anchor).
"""

from __future__ import annotations

import math

import torch

IOU_EPS = 1e-6  # the union is clamped to at least this (MMDetection's eps)
CENTRE_MARGIN = 0.01  # a candidate's centre must lie inside its GT by more than this (pixels)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: [..., N, 4] x [..., M, 4] -> [..., N, M], MMDetection's arithmetic order."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])  # [..., N]
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])  # [..., M]
    lt = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # [..., N, M, 2]
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])  # [..., N, M, 2]
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]  # [..., N, M]
    union = area1[..., :, None] + area2[..., None, :] - overlap
    union = union.clamp(min=IOU_EPS)
    return overlap / union


def centres(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Box centres (x1 + x2) / 2, (y1 + y2) / 2 in float32."""
    return (boxes[..., 0] + boxes[..., 2]) / 2.0, (boxes[..., 1] + boxes[..., 3]) / 2.0


def _sqrt_ieee(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root (what C's sqrtf and CUDA's sqrtf return).

    torch's CPU `sqrt` is not correctly rounded (torch 2.14: about 1 float32 result in 5 is
    1 ulp off), which moves near-ties in the distance order. The square root of a float32
    taken in float64 and rounded to float32 is the correctly rounded one (53 >= 2 * 24 + 2).
    """
    return x.double().sqrt().float()


def _level_topk(dist: torch.Tensor, k: int, spare: int = 8) -> torch.Tensor:
    """The k smallest of each column of `dist` [n, m]: row indices [k, m], nearest first.

    Ties (equal distances) go to the lower row index, both for which rows are taken at the
    k-th place and for their order. `torch.topk` breaks ties in no defined order, so it is
    asked for `spare` more rows than needed: sorted by (distance, row), the first k of those
    are the answer unless the tie at the k-th distance runs past them too (rare: then that
    column is solved on its full length).
    """
    n = dist.shape[0]
    kk = min(n, k + spare)
    vals, idx = dist.topk(kk, dim=0, largest=False)  # [kk, m], in no defined order among ties
    idx, order = idx.sort(dim=0)  # by row ...
    vals = vals.gather(0, order)
    vals, order = vals.sort(dim=0, stable=True)  # ... then by distance: (distance, row) order
    idx = idx.gather(0, order)[:k]
    if kk < n:
        crowded = (vals[-1] == vals[k - 1]).nonzero().squeeze(1)  # the tie may go on past row kk
        if crowded.numel():
            sub = dist[:, crowded]  # [n, c]
            kth = vals[k - 1, crowded]
            below = sub < kth
            at = sub == kth
            need = k - below.sum(0)  # [c]: how many of the tied rows fill the k places
            take = below | (at & (at.cumsum(0) <= need))  # the lowest-index tied rows
            rows = take.t().nonzero()[:, 1].view(-1, k).t()  # [k, c], ascending row
            order = dist[:, crowded].gather(0, rows).sort(dim=0, stable=True).indices
            idx[:, crowded] = rows.gather(0, order)
    return idx


def _candidates_one_image(anchors, valid, level_sizes, gts, topk):
    """Steps 2-3 for one image: candidate anchors [m, L*topk] (indices into N, nearest first
    within each level's `topk` slots, -1 padding)."""
    m = gts.shape[0]
    out = torch.full((m, len(level_sizes) * topk), -1, dtype=torch.int64, device=anchors.device)
    valid_idx = valid.nonzero().squeeze(1)  # [n]: MMDetection keeps the valid anchors only
    if m == 0 or valid_idx.numel() == 0:
        return out
    acx, acy = centres(anchors[valid_idx])  # [n]
    gcx, gcy = centres(gts)  # [m]
    dx = acx[:, None] - gcx[None, :]
    dy = acy[:, None] - gcy[None, :]
    dist = _sqrt_ieee(dx * dx + dy * dy)  # [n, m] float32 Euclidean centre distance
    per_level = torch.stack([v.sum() for v in valid.split(level_sizes)]).tolist()  # valid per level
    start = 0
    for level, n_l in enumerate(per_level):
        k = min(topk, n_l)
        if k:
            rows = _level_topk(dist[start:start + n_l], k) + start  # [k, m] rows of the valid list
            out[:, level * topk:level * topk + k] = valid_idx[rows].t()
        start += n_l
    return out


def topk_candidates(anchors, valid, level_sizes, gt_boxes, num_gt, topk: int = 9) -> torch.Tensor:
    """Per GT and level, the `topk` valid anchors nearest to the GT centre: int64 [B, M, L*topk].

    Anchor indices into N, nearest first (ties: lower index), -1 where a level has fewer
    valid anchors; rows at and after `num_gt[b]` are all -1.
    """
    level_sizes = [int(s) for s in level_sizes]
    b, m = gt_boxes.shape[:2]
    out = torch.full((b, m, len(level_sizes) * topk), -1, dtype=torch.int64, device=gt_boxes.device)
    for i, n_gt in enumerate(_clamped(num_gt, m)):
        out[i, :n_gt] = _candidates_one_image(anchors, valid[i], level_sizes, gt_boxes[i, :n_gt], topk)
    return out


def _clamped(num_gt: torch.Tensor, m: int) -> list[int]:
    """num_gt as ints in [0, M], as the kernels read it (the op layer checks the range)."""
    return [min(max(int(v), 0), m) for v in num_gt.tolist()]


def _assign_one_image(anchors, valid, level_sizes, gts, topk):
    n = anchors.shape[0]
    m = gts.shape[0]
    assigned = torch.where(valid, -1, -2).to(torch.int64)  # [N]
    iou_out = torch.zeros(n, dtype=torch.float32, device=anchors.device)
    if m == 0 or not bool(valid.any()):
        return assigned, iou_out  # step 7: every valid anchor is background
    valid_idx = valid.nonzero().squeeze(1)
    overlaps = box_iou(anchors[valid_idx], gts)  # [n, m]: step 1, the full matrix
    cand = _candidates_one_image(anchors, valid, level_sizes, gts, topk)  # [m, L*topk]: steps 2-3
    present = cand >= 0
    # Row of each candidate in the valid list (valid_idx is sorted).
    rows = torch.searchsorted(valid_idx, cand.clamp(min=0))
    cand_iou = overlaps.gather(0, rows.t()).t()  # [m, L*topk]
    # Step 4: threshold = mean + unbiased std over the GT's candidates, in float64.
    # Summed slot by slot, in candidate order, as the kernels do: the same double, bit for bit.
    count = present.sum(1)  # [m]
    x = torch.where(present, cand_iou.double(), 0.0)  # [m, L*topk]
    total = torch.zeros(m, dtype=torch.float64, device=x.device)
    for j in range(x.shape[1]):
        total = total + x[:, j]
    mean = total / count
    sq = torch.zeros_like(total)
    for j in range(x.shape[1]):
        d = x[:, j] - mean
        sq = torch.where(present[:, j], sq + d * d, sq)
    # math.sqrt is correctly rounded (torch's float64 sqrt on the CPU is not always).
    std = torch.tensor([math.sqrt(v) for v in (sq / (count - 1)).tolist()], dtype=torch.float64,
                       device=x.device)
    thr = (mean + std).float()  # NaN for a single candidate: no positive (step 7)
    # Step 5: IoU >= threshold and the candidate's centre inside the GT by more than 0.01 px.
    acx, acy = centres(anchors[cand.clamp(min=0)])  # [m, L*topk]
    margin = torch.stack([acx - gts[:, 0:1], acy - gts[:, 1:2], gts[:, 2:3] - acx, gts[:, 3:4] - acy]).amin(0)
    positive = present & (cand_iou >= thr[:, None]) & (margin > CENTRE_MARGIN)
    # Step 6: an anchor positive for several GTs goes to the highest IoU, ties to the lower GT.
    overlaps_inf = torch.full((m, valid_idx.numel()), float("-inf"), device=anchors.device)  # [m, n]
    gt_of = torch.arange(m, device=anchors.device)[:, None].expand_as(cand)
    overlaps_inf[gt_of[positive], rows[positive]] = cand_iou[positive]
    best, best_gt = overlaps_inf.max(0)  # [n]; torch.max gives the first (lowest) GT at the max
    hit = best > float("-inf")
    assigned[valid_idx[hit]] = best_gt[hit]
    iou_out[valid_idx[hit]] = best[hit]
    return assigned, iou_out


def atss_assign(anchors, valid, level_sizes, gt_boxes, num_gt, topk: int = 9):
    """ATSS assignment (SPEC.md section 2), per image.

    Returns (assigned int64 [B, N]: 0-based GT index, -1 background, -2 ignored;
    iou float32 [B, N]: IoU with the assigned GT, 0 elsewhere).
    """
    level_sizes = [int(s) for s in level_sizes]
    results = [
        _assign_one_image(anchors, valid[i], level_sizes, gt_boxes[i, :n_gt], topk)
        for i, n_gt in enumerate(_clamped(num_gt, gt_boxes.shape[1]))
    ]
    b, n = valid.shape
    if not results:
        return (torch.empty((0, n), dtype=torch.int64, device=anchors.device),
                torch.empty((0, n), dtype=torch.float32, device=anchors.device))
    return torch.stack([r[0] for r in results]), torch.stack([r[1] for r in results])
