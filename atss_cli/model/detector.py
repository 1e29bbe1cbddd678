"""ATSS: ResNet + FPN + ATSS head, with its training loss and inference post-processing.

Build it with `build_atss(...)` (the R50-FPN recipe by default) or `build_atss_preset(name, ...)`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from atss_cli import ops
from atss_cli.errors import AtssError
from atss_cli.model.anchors import AnchorGenerator
from atss_cli.model.backbone import ResNet
from atss_cli.model.fpn import FPN
from atss_cli.model.head import ATSSHead
from atss_cli.model.loss import atss_losses
from atss_cli.model.postprocess import postprocess_image
from atss_cli.model.targets import check_targets, pad_targets


class ATSS(nn.Module):
    """The ATSS detector (SPEC.md sections 1-4); parameter names are MMDetection's
    (`backbone.*`, `neck.*`, `bbox_head.*`), so its checkpoints load as they are.

    - `model(images)`: images float32 [B, 3, H, W] (normalised, zero-padded to a multiple of 32)
      -> (cls_scores, bbox_preds, centernesses), lists over the 5 levels of [B, C, H_l, W_l],
      [B, 4, H_l, W_l], [B, 1, H_l, W_l] (logits, scaled deltas, logits).
    - `model.loss(images, targets)`: targets one dict per image with "boxes" float32 [M, 4]
      (xyxy in the frame of `images`), "labels" int64 [M] (0..C-1), "img_shape" (h, w) before
      padding (other keys are ignored) -> {"loss_cls", "loss_bbox", "loss_centerness"}.
    - `model.predict(images, img_shapes, scale_factors)` -> per image {"boxes" [K, 4] in the
      original image, "scores" [K], "labels" [K]}, K <= max_per_img; no gradients. Call
      `model.eval()` first when the model has BatchNorm layers in training mode.
    - `model.postprocess(cls_scores, bbox_preds, centernesses, img_shapes, scale_factors)`: what
      `predict` does after the forward pass.

    `img_shapes` are (h, w) of each image before padding; `scale_factors` are (sx, sy) =
    resized / original size (None: (1, 1)).
    """

    def __init__(self, backbone: ResNet, neck: FPN, bbox_head: ATSSHead, *,
                 strides: Sequence[int] = (8, 16, 32, 64, 128), anchor_scale: float = 8.0,
                 topk: int = 9, score_thr: float = 0.05, nms_pre: int = 1000, nms_iou: float = 0.6,
                 max_per_img: int = 100, assign_backend: str = "auto"):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.bbox_head = bbox_head
        self.num_classes = bbox_head.num_classes
        self.anchor_generator = AnchorGenerator(strides, anchor_scale)
        self.topk = topk
        self.score_thr = score_thr
        self.nms_pre = nms_pre
        self.nms_iou = nms_iou
        self.max_per_img = max_per_img
        self.assign_backend = assign_backend

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise AtssError(f"images must be [B, 3, H, W], got shape {list(images.shape)}")
        return self.bbox_head(self.neck(self.backbone(images)))

    def feature_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(h, w) of each FPN level's feature map for a padded [H, W] input, without running the
        network: every stride-2 layer of the ResNet (stem conv, max pool, the first conv of
        layer2-4) and of the FPN's extra convs has kernel 3 or 7 with padding 1 or 3, so each
        gives ceil(size / 2); the first level is after three of them."""
        sizes, h, w = [], int(height), int(width)
        for level in range(3 + len(self.anchor_generator.strides) - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
            if level >= 2:
                sizes.append((h, w))
        return sizes

    # ---- training ---------------------------------------------------------------------------
    def loss(self, images: torch.Tensor, targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        if len(targets) != images.shape[0]:
            raise AtssError(f"{images.shape[0]} images but {len(targets)} targets")
        cls_scores, bbox_preds, centernesses = self(images)
        return self.loss_from_outputs(cls_scores, bbox_preds, centernesses, targets)

    def assign(self, sizes: Sequence[tuple[int, int]], targets: Sequence[dict], device):
        """ATSS assignment of a batch: (anchors [N, 4], assigned int64 [B, N], gt_boxes [B, M, 4],
        gt_labels [B, M]); one `ops.atss_assign` call for the whole batch.

        Reads no value back from the device and branches on none (it compiles with
        `torch.compile(fullgraph=True)` and captures in a CUDA graph): the targets are trusted
        (`check_targets` runs in `loss_from_outputs`, the data pipeline checks its own), the
        host's small tensors are uploaded from pinned memory, and the op gets the grid geometry
        the anchors were made from instead of detecting it, without validation.
        """
        device = torch.device(device)
        extent = self.anchor_generator.extents([t["img_shape"] for t in targets], device)    # int64 [B, 2]
        gt_boxes, gt_labels, num_gt = pad_targets(targets, device)
        anchors, assigned = self.assign_padded(sizes, gt_boxes, num_gt, extent)
        return anchors, assigned, gt_boxes, gt_labels

    def assign_padded(self, sizes: Sequence[tuple[int, int]], gt_boxes: torch.Tensor, num_gt: torch.Tensor,
                      extent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`assign` of targets already padded on the device (`pad_targets`) with each image's
        padded extent (`anchor_generator.extents`): (anchors [N, 4], assigned int64 [B, N]).
        Device work only, on the tensors given: the CUDA-graph step captures it on its static
        input buffers."""
        generator = self.anchor_generator
        device = gt_boxes.device
        anchors = generator.anchors(sizes, device)
        valid = generator.valid_flags(sizes, None, device, extent=extent)       # bool [B, N]
        level_sizes = [int(h) * int(w) for h, w in sizes]
        geometry = ops.GridGeometry(level_shapes=tuple((int(h), int(w)) for h, w in sizes),
                                    strides=generator.strides[:len(sizes)], extent=extent)
        assigned, _ = ops.atss_assign(anchors, valid, level_sizes, gt_boxes, num_gt, topk=self.topk,
                                      validate=False, backend=self.assign_backend, geometry=geometry)
        return anchors, assigned

    def loss_from_outputs(self, cls_scores, bbox_preds, centernesses, targets: Sequence[dict]
                          ) -> dict[str, torch.Tensor]:
        """The losses of given head outputs (as `model(images)` returns them) against `targets`.
        Host targets are checked first (one-line AtssError); device targets are trusted."""
        check_targets(targets, self.num_classes)
        sizes = [tuple(x.shape[-2:]) for x in cls_scores]
        anchors, assigned, gt_boxes, gt_labels = self.assign(sizes, targets, cls_scores[0].device)
        return atss_losses(cls_scores, bbox_preds, centernesses, anchors, assigned, gt_boxes, gt_labels)

    def loss_from_padded(self, cls_scores, bbox_preds, centernesses, gt_boxes: torch.Tensor,
                         gt_labels: torch.Tensor, num_gt: torch.Tensor, extent: torch.Tensor
                         ) -> dict[str, torch.Tensor]:
        """`loss_from_outputs` against targets already padded on the device (trusted: the caller
        checked them on the host); the same values for any number of padding rows."""
        sizes = [tuple(x.shape[-2:]) for x in cls_scores]
        anchors, assigned = self.assign_padded(sizes, gt_boxes, num_gt, extent)
        return atss_losses(cls_scores, bbox_preds, centernesses, anchors, assigned, gt_boxes, gt_labels)

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: torch.Tensor, img_shapes: Sequence[tuple[int, int]] | None = None,
                scale_factors: Sequence[tuple[float, float]] | None = None) -> list[dict]:
        if img_shapes is None:
            img_shapes = [tuple(images.shape[-2:])] * images.shape[0]
        cls_scores, bbox_preds, centernesses = self(images)
        return self.postprocess(cls_scores, bbox_preds, centernesses, img_shapes, scale_factors)

    @torch.no_grad()
    def postprocess(self, cls_scores, bbox_preds, centernesses,
                    img_shapes: Sequence[tuple[int, int]] | None = None,
                    scale_factors: Sequence[tuple[float, float]] | None = None) -> list[dict]:
        b = cls_scores[0].shape[0]
        stride0 = self.anchor_generator.strides[0]
        if img_shapes is None:
            h, w = cls_scores[0].shape[-2:]
            img_shapes = [(h * stride0, w * stride0)] * b
        if scale_factors is None:
            scale_factors = [(1.0, 1.0)] * b
        if len(img_shapes) != b or len(scale_factors) != b:
            raise AtssError(f"{b} images but {len(img_shapes)} img_shapes and {len(scale_factors)} scale_factors")
        sizes = [tuple(x.shape[-2:]) for x in cls_scores]
        anchors = self.anchor_generator.anchors(sizes, cls_scores[0].device)
        per_level = list(torch.split(anchors, [h * w for h, w in sizes]))
        results = []
        for i in range(b):
            results.append(postprocess_image(
                [x[i] for x in cls_scores], [x[i] for x in bbox_preds], [x[i] for x in centernesses],
                per_level, tuple(img_shapes[i]), tuple(float(s) for s in scale_factors[i]),
                score_thr=self.score_thr, nms_pre=self.nms_pre, nms_iou=self.nms_iou,
                max_per_img=self.max_per_img))
        return results


def build_atss(num_classes: int = 80, depth: int = 50, *, fpn_channels: int = 256,
               head_channels: int = 256, stacked_convs: int = 4, gn_groups: int = 32,
               frozen_stages: int = 1, norm_eval: bool = True, topk: int = 9,
               score_thr: float = 0.05, nms_pre: int = 1000, nms_iou: float = 0.6,
               max_per_img: int = 100, assign_backend: str = "auto") -> ATSS:
    """The ATSS detector; the defaults are MMDetection's `atss_r50_fpn_1x_coco`.

    Args:
        num_classes: foreground classes (80 for COCO).
        depth: ResNet depth, 18, 34, 50 or 101.
        fpn_channels: width of the FPN levels (256).
        head_channels: width of the head towers (256).
        stacked_convs: conv-GN-ReLU blocks per head tower (4).
        gn_groups: GroupNorm groups in the head (32; must divide head_channels).
        frozen_stages: backbone stem + this many stages frozen (1; -1 trains everything).
        norm_eval: keep the backbone's BatchNorm in eval mode while training (True).
        topk: ATSS candidates per level and GT (9).
        score_thr, nms_pre, nms_iou, max_per_img: test settings (0.05, 1000, 0.6, 100).
        assign_backend: `ops.atss_assign` backend ("auto", "extension", "reference").

    Weights are random (MMDetection's init for neck and head); load ImageNet weights with
    `load_backbone` or a whole detector with `load_checkpoint`.
    """
    if num_classes < 1:
        raise AtssError(f"num_classes must be >= 1, got {num_classes}")
    for name, value in (("fpn_channels", fpn_channels), ("head_channels", head_channels)):
        if value < 1:
            raise AtssError(f"{name} must be >= 1, got {value}")
    backbone = ResNet(depth, frozen_stages=frozen_stages, norm_eval=norm_eval)
    neck = FPN(backbone.out_channels, fpn_channels, num_extra=2)
    head = ATSSHead(num_classes, fpn_channels, head_channels, stacked_convs=stacked_convs,
                    num_levels=5, gn_groups=gn_groups)
    return ATSS(backbone, neck, head, topk=topk, score_thr=score_thr, nms_pre=nms_pre,
                nms_iou=nms_iou, max_per_img=max_per_img, assign_backend=assign_backend)


# Named presets: keyword arguments of `build_atss`.
PRESETS: dict[str, dict] = {
    # MMDetection's atss_r50_fpn_1x_coco: 39.4 box AP on COCO val2017 after the 1x schedule.
    "r50": dict(depth=50),
    "r101": dict(depth=101),
    # A small model that trains from scratch on a CPU (demo, tests): ResNet-18, 96-wide FPN and
    # head, 2 convs per tower, every backbone stage and BatchNorm trained (no ImageNet weights).
    "tiny": dict(depth=18, fpn_channels=96, head_channels=96, stacked_convs=2,
                 frozen_stages=-1, norm_eval=False),
}


def build_atss_preset(name: str, num_classes: int = 80, **overrides) -> ATSS:
    """`build_atss` with a named preset's arguments ("r50", "r101", "tiny"), then `overrides`."""
    if name not in PRESETS:
        raise AtssError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return build_atss(num_classes, **{**PRESETS[name], **overrides})
