"""Inference post-processing of ATSS (SPEC.md section 4), as MMDetection's
`_predict_by_feat_single` + `_bbox_post_process` with the recipe's test settings.

Per image and level: scores = sigmoid(cls); keep (anchor, class) pairs with score > score_thr;
keep the nms_pre highest; decode and clip to the resized image. Over all levels: rescale to the
original image (multiply by 1 / scale factor, as MMDetection does); score x sigmoid(centerness);
drop boxes with width or height <= 0; class-aware NMS; keep the max_per_img highest.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import batched_nms

from atss_cli.model.anchors import decode


def select_level(scores: torch.Tensor, score_thr: float, nms_pre: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores [A, C] (probabilities) -> (scores [K], anchor index [K], label [K]): the pairs above
    score_thr, at most nms_pre of them, highest first."""
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    keep = torch.nonzero(flat > score_thr).squeeze(1)        # [K0], row-major (anchor, class)
    kept = flat[keep]
    if keep.numel() > nms_pre:
        kept, order = kept.topk(nms_pre)                      # sorted, highest first
    else:
        kept, order = kept.sort(descending=True)
    keep = keep[order]
    return kept, keep // num_classes, keep % num_classes


def postprocess_image(cls_scores: Sequence[torch.Tensor], bbox_preds: Sequence[torch.Tensor],
                      centernesses: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                      img_shape: tuple[int, int], scale_factor: tuple[float, float], *,
                      score_thr: float = 0.05, nms_pre: int = 1000, nms_iou: float = 0.6,
                      max_per_img: int = 100) -> dict[str, torch.Tensor]:
    """One image: per level cls [C, H, W], box deltas [4, H, W], centerness [1, H, W] and the
    level's anchors [H*W, 4] -> {"boxes" [K, 4] in the original image, "scores" [K], "labels" [K]}."""
    all_scores, all_labels, all_deltas, all_anchors, all_ctr = [], [], [], [], []
    for cls, box, ctr, level_anchors in zip(cls_scores, bbox_preds, centernesses, anchors):
        num_classes = cls.shape[0]
        probs = cls.permute(1, 2, 0).reshape(-1, num_classes).float().sigmoid()  # [A, C]
        scores, idx, labels = select_level(probs, score_thr, nms_pre)
        all_scores.append(scores)
        all_labels.append(labels)
        all_deltas.append(box.permute(1, 2, 0).reshape(-1, 4)[idx].float())         # [K, 4]
        all_ctr.append(ctr.reshape(-1)[idx].float().sigmoid())                       # [K]
        all_anchors.append(level_anchors[idx])
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    boxes = decode(torch.cat(all_anchors), torch.cat(all_deltas), max_shape=img_shape)
    sx, sy = scale_factor
    boxes = boxes * boxes.new_tensor([1 / sx, 1 / sy, 1 / sx, 1 / sy])
    scores = scores * torch.cat(all_ctr)
    wh = boxes[:, 2:] - boxes[:, :2]
    ok = (wh > 0).all(dim=1)
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if boxes.numel() > 0:
        keep = batched_nms(boxes, scores, labels, nms_iou)[:max_per_img]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return {"boxes": boxes, "scores": scores, "labels": labels}
