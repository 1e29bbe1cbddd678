"""Training targets and losses of ATSS (SPEC.md sections 2 and 3), for the whole batch at once.

The assignment is one `ops.atss_assign` call over the padded batch; the per-anchor targets are
then gathered from the padded GT tensors (no loop over boxes), and the losses are sums over the
batch divided by MMDetection's normalisers:

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

from atss_cli.errors import AtssError
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


def pad_targets(targets: Sequence[dict], device, num_classes: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image GT lists -> (gt_boxes float32 [B, M, 4], gt_labels int64 [B, M], num_gt int64 [B]),
    padded with zeros to M = max(1, most GTs in an image). Labels must lie in 0..num_classes-1."""
    boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4) for t in targets]
    labels = [torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1) for t in targets]
    for i, (b, l) in enumerate(zip(boxes, labels)):
        if b.shape[0] != l.shape[0]:
            raise AtssError(f"target {i}: {b.shape[0]} boxes but {l.shape[0]} labels")
    m = max([1] + [b.shape[0] for b in boxes])
    gt_boxes = torch.zeros((len(targets), m, 4), dtype=torch.float32, device=device)
    gt_labels = torch.zeros((len(targets), m), dtype=torch.int64, device=device)
    for i, (b, l) in enumerate(zip(boxes, labels)):  # one copy per image
        gt_boxes[i, : b.shape[0]] = b.to(device, non_blocking=True)
        gt_labels[i, : l.shape[0]] = l.to(device, non_blocking=True)
    num_gt = torch.tensor([b.shape[0] for b in boxes], dtype=torch.int64, device=device)
    if num_classes is not None and bool(((gt_labels < 0) | (gt_labels >= num_classes)).any()):  # one sync
        i = next(i for i, l in enumerate(labels) if l.numel() and (l.min() < 0 or l.max() >= num_classes))
        raise AtssError(f"target {i}: labels must be in 0..{num_classes - 1}, got {labels[i].tolist()}")
    return gt_boxes, gt_labels, num_gt


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


def sigmoid_focal_loss_sum(logits: torch.Tensor, target: torch.Tensor,
                           alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Sum of the sigmoid focal loss over all elements; logits and 0/1 target of the same shape."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    pt = (1 - p) * target + p * (1 - target)               # 1 - p_t
    weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    return (ce * weight).sum()


def flatten_levels(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level [B, K, H, W] -> [B, sum H*W, K] in anchor order (levels, then rows, x fastest)."""
    b, k = outputs[0].shape[:2]
    return torch.cat([o.permute(0, 2, 3, 1).reshape(b, -1, k) for o in outputs], dim=1)


def atss_losses(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                centernesses: Sequence[torch.Tensor], anchors: torch.Tensor, assigned: torch.Tensor,
                gt_boxes: torch.Tensor, gt_labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three ATSS losses of a batch.

    cls_scores, bbox_preds, centernesses: per level [B, C, H, W], [B, 4, H, W], [B, 1, H, W];
    anchors float32 [N, 4]; assigned int64 [B, N] (0-based GT, -1 background, -2 ignored);
    gt_boxes float32 [B, M, 4], gt_labels int64 [B, M] (padded).
    Returns {"loss_cls", "loss_bbox", "loss_centerness"}: scalar tensors, finite, connected to
    every output even when the batch has no positive.
    """
    cls = flatten_levels(cls_scores).float()                  # [B, N, C]
    box = flatten_levels(bbox_preds).float()                  # [B, N, 4]
    ctr = flatten_levels(centernesses).float()[..., 0]        # [B, N]

    pos = assigned >= 0                                       # [B, N]
    valid = assigned != -2                                    # [B, N]: ignored anchors have no loss
    avg_factor = reduce_mean(pos.sum(1).clamp(min=1).sum().float())

    # Classification over every valid anchor; positives get their GT's class as target.
    gt_index = assigned.clamp(min=0)                          # [B, N]
    labels = torch.gather(gt_labels, 1, gt_index)             # [B, N]
    valid_cls = cls[valid]                                    # [K, C]
    pos_rows = pos[valid].nonzero().squeeze(1)                # [P]: rows of valid_cls that are positive
    onehot = torch.zeros_like(valid_cls)
    onehot[pos_rows, labels[valid][pos_rows]] = 1.0
    loss_cls = sigmoid_focal_loss_sum(valid_cls, onehot) / avg_factor

    # Box and centerness over the positives.
    img_idx, anchor_idx = pos.nonzero(as_tuple=True)          # [P], [P]
    pos_anchors = anchors[anchor_idx]                         # [P, 4]
    pos_gt = gt_boxes[img_idx, gt_index[img_idx, anchor_idx]]  # [P, 4]
    ctr_target = centerness_target(pos_anchors, pos_gt)       # [P]
    ctr_sum = reduce_mean(ctr_target.sum()).clamp(min=1)      # every process joins, positives or not
    if anchor_idx.numel() > 0:
        pos_boxes = decode(pos_anchors, box[img_idx, anchor_idx])
        loss_bbox = BBOX_LOSS_WEIGHT * (giou_loss(pos_boxes, pos_gt) * ctr_target).sum() / ctr_sum
        loss_ctr = F.binary_cross_entropy_with_logits(ctr[img_idx, anchor_idx], ctr_target,
                                                      reduction="sum") / avg_factor
    else:
        loss_bbox = box.sum() * 0 + 0.0                       # + 0.0: never -0.0
        loss_ctr = ctr.sum() * 0 + 0.0
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}
