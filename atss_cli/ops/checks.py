"""Input checks shared by every backend of the ops: each error names the argument and the bad value.

Shape, dtype and device checks always run (they are free). Value checks (finite coordinates,
`num_gt` in range) run when `validate=True`; on CUDA they cost one device sync.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from atss_cli.errors import AtssError

MAX_TOPK = 64  # the kernels keep each level's candidates in a fixed per-thread array


class OpsInputError(AtssError, ValueError):
    """Bad input to an op in `atss_cli.ops` (also a ValueError, for callers outside the CLI)."""


def _fail(message: str):
    raise OpsInputError(message)


def _describe(t) -> str:
    if not isinstance(t, torch.Tensor):
        return f"a {type(t).__name__}"
    return f"{t.dtype} {list(t.shape)} on {t.device}"


def check_tensor(name: str, t, dtype: torch.dtype, shape: str, ndims: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor {shape}, got {_describe(t)}")
    if t.dim() not in ndims:
        _fail(f"{name} must be {shape}, got shape {list(t.shape)}")
    if t.dtype != dtype:
        _fail(f"{name} must be {dtype}, got {t.dtype}")


def check_boxes(name: str, t, shape: str, ndims: tuple[int, ...]) -> None:
    check_tensor(name, t, torch.float32, shape, ndims)
    if t.shape[-1] != 4:
        _fail(f"{name} must be {shape} (last dimension 4: x1, y1, x2, y2), got shape {list(t.shape)}")


def check_finite(name: str, t: torch.Tensor) -> None:
    # (t * 0).sum() is NaN iff some value is NaN or infinite: one fused pass, ~10x faster than
    # isfinite(t).all() on the CPU; the slow search for the culprit runs only on failure.
    if t.numel() and not bool(torch.isfinite((t * 0).sum())):
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        _fail(f"{name} has a non-finite coordinate {t[tuple(bad)].item()} at index {bad}")


def level_sizes_list(level_sizes, n: int) -> list[int]:
    """`level_sizes` as a list of non-negative ints summing to `n` (the number of anchors)."""
    if isinstance(level_sizes, torch.Tensor):
        if level_sizes.dim() != 1 or level_sizes.dtype not in (torch.int64, torch.int32):
            _fail(f"level_sizes must be a list of ints or a 1-D int64 tensor, got {_describe(level_sizes)}")
        sizes = [int(v) for v in level_sizes.tolist()]
    elif isinstance(level_sizes, Sequence) and not isinstance(level_sizes, (str, bytes)):
        sizes = []
        for v in level_sizes:
            if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
                v = int(v.item())
            if isinstance(v, bool) or not isinstance(v, int):
                _fail(f"level_sizes must hold ints, got {v!r} in {list(level_sizes)!r}")
            sizes.append(int(v))
    else:
        _fail(f"level_sizes must be a list of ints or a 1-D int64 tensor, got {type(level_sizes).__name__}")
    if not sizes:
        _fail("level_sizes must name at least one level, got []")
    if any(s < 0 for s in sizes):
        _fail(f"level_sizes must be >= 0, got {sizes}")
    if sum(sizes) != n:
        _fail(f"level_sizes must sum to the number of anchors N={n}, got {sizes} (sum {sum(sizes)})")
    return sizes


def check_assign_inputs(anchors, valid, level_sizes, gt_boxes, num_gt, topk, validate: bool) -> list[int]:
    """Checks the inputs of `topk_candidates` and `atss_assign`; returns `level_sizes` as a list."""
    check_boxes("anchors", anchors, "float32 [N, 4]", (2,))
    check_tensor("valid", valid, torch.bool, "bool [B, N]", (2,))
    check_boxes("gt_boxes", gt_boxes, "float32 [B, M, 4]", (3,))
    check_tensor("num_gt", num_gt, torch.int64, "int64 [B]", (1,))
    n = anchors.shape[0]
    b = gt_boxes.shape[0]
    if valid.shape[1] != n:
        _fail(f"valid must be [B, N] with N={n} (the anchors), got shape {list(valid.shape)}")
    if valid.shape[0] != b:
        _fail(f"valid must be [B, N] with B={b} (gt_boxes), got shape {list(valid.shape)}")
    if num_gt.shape[0] != b:
        _fail(f"num_gt must be [B] with B={b} (gt_boxes), got shape {list(num_gt.shape)}")
    device = gt_boxes.device
    for name, t in (("anchors", anchors), ("valid", valid), ("num_gt", num_gt)):
        if t.device != device:
            _fail(f"{name} must be on the device of gt_boxes ({device}), got {t.device}")
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        _fail(f"topk must be an int in [1, {MAX_TOPK}], got {topk!r}")
    sizes = level_sizes_list(level_sizes, n)
    if validate:
        check_finite("anchors", anchors)
        if b:
            lo, hi = (int(v) for v in torch.aminmax(num_gt))
            if lo < 0 or hi > gt_boxes.shape[1]:
                bad = num_gt[(num_gt < 0) | (num_gt > gt_boxes.shape[1])][0].item()
                _fail(f"num_gt must be in [0, M={gt_boxes.shape[1]}], got {bad} (num_gt={num_gt.tolist()})")
            used = torch.arange(gt_boxes.shape[1], device=device)[None, :] < num_gt[:, None]
            check_finite("gt_boxes", torch.where(used[..., None], gt_boxes, 0.0))
    return sizes


def check_iou_inputs(boxes1, boxes2) -> None:
    check_boxes("boxes1", boxes1, "float32 [B, N, 4] or [N, 4]", (2, 3))
    check_boxes("boxes2", boxes2, "float32 [B, M, 4] or [M, 4]", (2, 3))
    if boxes1.dim() != boxes2.dim():
        _fail(f"boxes1 and boxes2 must both be [B, *, 4] or both [*, 4], got shapes "
              f"{list(boxes1.shape)} and {list(boxes2.shape)}")
    if boxes1.dim() == 3 and boxes1.shape[0] != boxes2.shape[0]:
        _fail(f"boxes2 must have the batch size of boxes1 ({boxes1.shape[0]}), got shape {list(boxes2.shape)}")
    if boxes1.device != boxes2.device:
        _fail(f"boxes2 must be on the device of boxes1 ({boxes1.device}), got {boxes2.device}")
