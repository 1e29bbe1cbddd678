"""`box_iou`: pairwise IoU, batched or not, on the kernels or the reference."""

from __future__ import annotations

import torch

from atss_cli.ops import extension, reference
from atss_cli.ops.checks import check_iou_inputs


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """IoU of every pair of boxes.

    boxes1 float32 [B, N, 4] and boxes2 float32 [B, M, 4] -> float32 [B, N, M]; or
    [N, 4] x [M, 4] -> [N, M]. Boxes are (x1, y1, x2, y2), areas without +1, the union
    clamped at 1e-6 (MMDetection's arithmetic, SPEC.md section 2 step 1). The kernels do not
    propagate gradients; the reference does.
    """
    check_iou_inputs(boxes1, boxes2)
    if not extension.use_extension(backend, boxes1.device):
        return reference.box_iou(boxes1, boxes2)
    return torch.ops.atss.box_iou(boxes1.contiguous(), boxes2.contiguous())


if extension.available():

    @torch.library.register_fake("atss::box_iou")
    def _box_iou_fake(boxes1, boxes2):
        torch._check(boxes1.dim() == boxes2.dim())
        return boxes1.new_empty((*boxes1.shape[:-1], boxes2.shape[-2]))
