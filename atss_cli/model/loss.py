"""Training targets and losses of ATSS (SPEC.md sections 2 and 3), for the whole batch at once.

The assignment is one `ops.atss_assign` call over the padded batch; the per-anchor targets are
then gathered from the padded GT tensors (no loop over boxes), and the losses are sums over the
batch divided by MMDetection's normalisers. Every term is computed for every anchor and masked
(positives, valid anchors) rather than gathered with a boolean index: a boolean index has a
data-dependent size, which the host would have to read back from the device.

- `avg_factor` = sum over images of max(#positives, 1), averaged over processes;
- classification: sigmoid focal loss (gamma 2, alpha 0.25) over every valid anchor and class;
- box: 2 x GIoU loss of the decoded prediction, each positive weighted by its centerness target,
  divided by the (process-averaged) sum of centerness targets, clamped at >= 1;
- centerness: BCE-with-logits against the centerness target over positives, / avg_factor.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from atss_cli.model.anchors import decode

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
GIOU_EPS = 1e-6
BBOX_LOSS_WEIGHT = 2.0


def reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """All-reduce mean over processes when torch.distributed is initialised; else `t`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    dist.all_reduce(t.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return t


def centerness_target(anchors: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """[P, 4] anchors and their GT boxes -> [P]: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))
    with l, t, r, b from the anchor centre to the GT's sides."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    lr = torch.stack([cx - gt[:, 0], gt[:, 2] - cx], dim=1)
    tb = torch.stack([cy - gt[:, 1], gt[:, 3] - cy], dim=1)
    return torch.sqrt(lr.amin(1) / lr.amax(1) * (tb.amin(1) / tb.amax(1)))


def giou_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = GIOU_EPS) -> torch.Tensor:
    """1 - GIoU of aligned boxes [P, 4] -> [P] (MMDetection's `bbox_overlaps(mode="giou")`:
    union and enclosing area clamped at >= eps)."""
    area1 = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area2 = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    wh = (torch.min(pred[:, 2:], target[:, 2:]) - torch.max(pred[:, :2], target[:, :2])).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    enclose_wh = (torch.max(pred[:, 2:], target[:, 2:]) - torch.min(pred[:, :2], target[:, :2])).clamp(min=0)
    enclose = (enclose_wh[:, 0] * enclose_wh[:, 1]).clamp(min=eps)
    giou = overlap / union - (enclose - union) / enclose
    return 1 - giou


def sigmoid_focal_loss(logits: torch.Tensor, target: torch.Tensor,
                       alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """The sigmoid focal loss of each element; logits and 0/1 target of the same shape."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = (1 - p) * target + p * (1 - target)               # 1 - p_t
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return ce * weight


def flatten_levels(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level [B, K, H, W] -> [B, sum H*W, K] in anchor order (levels, then rows, x fastest)."""
    b, k = outputs[0].shape[:2]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(b, -1, k) for o in outputs], dim=1)


def positive_targets(anchors: torch.Tensor, assigned: torch.Tensor, gt_boxes: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per anchor of a batch: (pos bool [B, N], its GT box float32 [B, N, 4] (a padding box of
    its image where it is not positive), its centerness target [B, N] (0 off positives)).
    Every anchor is paired with a box so that its terms stay finite and masking needs no sync."""
    b, n = assigned.shape
    pos = assigned >= 0
    pos_gt = torch.gather(gt_boxes, 1, assigned.clamp(min=0)[..., None].expand(b, n, 4))
    ctr = centerness_target(anchors[None].expand(b, n, 4).reshape(-1, 4), pos_gt.reshape(-1, 4)).view(b, n)
    return pos, pos_gt, torch.where(pos, ctr, 0.0)               # NaN outside GTs, masked


def loss_normalisers(anchors: torch.Tensor, assigned: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """What the losses of this (micro-)batch divide by, before the average over processes:
    float32 [2] = (sum over images of max(#positives, 1), sum of the centerness targets). The
    assignment does not depend on predictions, so gradient accumulation can know the whole
    accumulated batch's values before any forward pass."""
    pos, _, ctr_target = positive_targets(anchors, assigned, gt_boxes)
    return torch.stack([pos.sum(1).clamp(min=1).sum().float(), ctr_target.sum()])


def atss_losses(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                centernesses: Sequence[torch.Tensor], anchors: torch.Tensor, assigned: torch.Tensor,
                gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three ATSS losses of a batch, without reading anything back from the device.

    cls_scores, bbox_preds, centernesses: per level [B, C, H, W], [B, 4, H, W], [B, 1, H, W];
    anchors float32 [N, 4]; assigned int64 [B, N] (0-based GT, -1 background, -2 ignored);
    gt_boxes float32 [B, M, 4], gt_labels int64 [B, M] (padded).
    Returns {"loss_cls", "loss_bbox", "loss_centerness"}: scalar tensors, finite, connected to
    every output even when the batch has no positive.
    """
    cls = flatten_levels(cls_scores).float()                  # [B, N, C]
    box = flatten_levels(bbox_preds).float()                  # [B, N, 4]
    ctr = flatten_levels(centernesses).float()[..., 0]        # [B, N]
    b, n = assigned.shape

    pos, pos_gt, ctr_target = positive_targets(anchors, assigned, gt_boxes)  # [B, N], [B, N, 4], [B, N]
    valid = assigned != -2                                    # [B, N]: ignored anchors have no loss
    avg_factor = reduce_mean(pos.sum(1).clamp(min=1).sum().float())

    # Classification over every valid anchor; positives get their GT's class as target.
    gt_index = assigned.clamp(min=0)                          # [B, N]
    labels = torch.gather(gt_labels, 1, gt_index)             # [B, N]
    onehot = torch.zeros_like(cls).scatter_(2, labels[..., None], pos[..., None].to(cls.dtype))
    focal = sigmoid_focal_loss(cls, onehot)                   # [B, N, C]
    loss_cls = torch.where(valid[..., None], focal, 0.0).sum() / avg_factor

    # Box and centerness over the positives (every anchor computed, all but positives masked).
    all_anchors = anchors[None].expand(b, n, 4)
    ctr_sum = reduce_mean(ctr_target.sum()).clamp(min=1)      # every process joins, positives or not
    pred = decode(all_anchors, box)                           # [B, N, 4]
    giou = giou_loss(pred.reshape(-1, 4), pos_gt.reshape(-1, 4)).view(b, n)
    loss_bbox = BBOX_LOSS_WEIGHT * torch.where(pos, giou * ctr_target, 0.0).sum() / ctr_sum
    bce = F.binary_cross_entropy_with_logits(ctr, ctr_target, reduction="none")
    loss_ctr = torch.where(pos, bce, 0.0).sum() / avg_factor
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}
