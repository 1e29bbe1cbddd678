"""`topk_candidates` and `atss_assign`: the ATSS label assignment (SPEC.md section 2).

Both take the batch's anchors once (shared by every image), each image's valid flags and its
padded GT boxes, and run in one batched call on the kernels (or per image on the reference).
The kernels never build a B x N x M matrix: when a level's anchors form a regular grid (the
model's anchors do) a GT's nearest anchors are searched in a window around its centre; other
anchors get an exhaustive scan of the level, still with O(N + M * k) memory.
"""

from __future__ import annotations

import torch

from atss_cli.ops import extension, reference
from atss_cli.ops.checks import check_assign_inputs
from atss_cli.ops.geometry import GridGeometry, check_geometry


def topk_candidates(anchors: torch.Tensor, valid: torch.Tensor, level_sizes, gt_boxes: torch.Tensor,
                    num_gt: torch.Tensor, topk: int = 9, *, validate: bool = True,
                    backend: str = "auto", geometry: GridGeometry | None = None) -> torch.Tensor:
    """Per GT and level, the `topk` valid anchors nearest to the GT's centre.

    anchors float32 [N, 4] (shared by the batch, levels concatenated); valid bool [B, N];
    level_sizes ints (list or int64 tensor) summing to N; gt_boxes float32 [B, M, 4] padded;
    num_gt int64 [B] (rows >= num_gt[b] are padding).
    Returns int64 [B, M, L*topk]: for level l, entries [l*topk, (l+1)*topk) hold anchor
    indices into N, nearest first (Euclidean centre distance in float32; equal distances: the
    lower anchor index first and wins the last place), then -1 where the level has fewer than
    `topk` valid anchors. Padding rows are all -1. `geometry`: see `atss_assign`.
    """
    sizes = _checked(anchors, valid, level_sizes, gt_boxes, num_gt, topk, validate, geometry)
    if not extension.use_extension(backend, gt_boxes.device):
        return reference.topk_candidates(anchors, valid, sizes, gt_boxes, num_gt, topk)
    return torch.ops.atss.topk_candidates(anchors.detach().contiguous(), valid.contiguous(), sizes,
                                          gt_boxes.detach().contiguous(), num_gt.contiguous(), topk,
                                          *_geometry_args(geometry))


def atss_assign(anchors: torch.Tensor, valid: torch.Tensor, level_sizes, gt_boxes: torch.Tensor,
                num_gt: torch.Tensor, topk: int = 9, *, validate: bool = True,
                backend: str = "auto", geometry: GridGeometry | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """ATSS assignment of a padded batch (SPEC.md section 2).

    Inputs as `topk_candidates`. For each GT: its candidates are the `topk` nearest valid
    anchors of every level; threshold = mean + unbiased std of their IoUs (float64, rounded
    to float32); a candidate is positive iff IoU >= threshold and its centre lies inside the
    GT by more than 0.01 px. An anchor positive for several GTs goes to the highest IoU
    (ties: the lower GT index). A GT with a single candidate gets no positive.
    Returns (assigned int64 [B, N]: 0-based GT index, -1 background, -2 ignored (invalid
    anchor); iou float32 [B, N]: IoU with the assigned GT, 0 elsewhere).

    `validate=True` checks values (finite coordinates, num_gt in [0, M]); on CUDA that costs a
    device sync, so callers with checked inputs may pass False (the kernels then still never
    read out of bounds: num_gt is clamped to [0, M]); pass `level_sizes` as a list (a CUDA
    tensor would be read back, another sync). `backend`: "auto" (the kernels when
    built for the device, else the reference), "extension" or "reference".

    `geometry` (`ops.GridGeometry`, optional): the caller's promise that each level's anchors
    are a row-major grid of the given shape and that `valid` is each image's rectangle for
    its extent; the kernels then skip grid detection and valid counting (on CUDA: one pass).
    The result is the same as without it. `validate=True` checks the promise; the reference
    ignores it.
    """
    sizes = _checked(anchors, valid, level_sizes, gt_boxes, num_gt, topk, validate, geometry)
    if not extension.use_extension(backend, gt_boxes.device):
        with torch.no_grad():
            return reference.atss_assign(anchors, valid, sizes, gt_boxes, num_gt, topk)
    # The assignment is a target, not a function to differentiate: inputs are detached.
    return torch.ops.atss.atss_assign(anchors.detach().contiguous(), valid.contiguous(), sizes,
                                      gt_boxes.detach().contiguous(), num_gt.contiguous(), topk,
                                      *_geometry_args(geometry))


def _checked(anchors, valid, level_sizes, gt_boxes, num_gt, topk, validate, geometry) -> list[int]:
    sizes = check_assign_inputs(anchors, valid, level_sizes, gt_boxes, num_gt, topk, validate)
    if geometry is not None:
        check_geometry(geometry, anchors, valid, sizes, validate)
    return sizes


def _geometry_args(geometry: GridGeometry | None) -> tuple:
    """The op schema's trailing (grid_hw, strides, extent), or none at all without geometry."""
    return () if geometry is None else geometry.kernel_args()


if extension.available():

    @torch.library.register_fake("atss::topk_candidates")
    def _topk_candidates_fake(anchors, valid, level_sizes, gt_boxes, num_gt, topk, grid_hw=None, strides=None,
                              extent=None):
        b, m = gt_boxes.shape[0], gt_boxes.shape[1]
        return gt_boxes.new_empty((b, m, len(level_sizes) * topk), dtype=torch.int64)

    @torch.library.register_fake("atss::atss_assign")
    def _atss_assign_fake(anchors, valid, level_sizes, gt_boxes, num_gt, topk, grid_hw=None, strides=None,
                          extent=None):
        b, n = valid.shape[0], valid.shape[1]
        return (valid.new_empty((b, n), dtype=torch.int64), valid.new_empty((b, n), dtype=torch.float32))
