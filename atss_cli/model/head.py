"""The ATSS head: two towers shared over the pyramid levels, then class, box and centerness convs.

Parameter names are MMDetection's: `bbox_head.cls_convs.i.conv/gn`, `bbox_head.reg_convs.i.conv/gn`,
`bbox_head.atss_cls`, `bbox_head.atss_reg`, `bbox_head.atss_centerness`, `bbox_head.scales.i.scale`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from atss_cli.errors import AtssError


class ConvGNReLU(nn.Module):
    """3x3 conv without bias -> GroupNorm -> ReLU (MMDetection's ConvModule with GN)."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gn = nn.GroupNorm(num_groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu_(self.gn(self.conv(x)))


class Scale(nn.Module):
    """One learnable scalar (a 0-d tensor, as MMDetection stores it) multiplying its input."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class ATSSHead(nn.Module):
    """Args:
        num_classes: C, the number of foreground classes (sigmoid outputs, no background class).
        in_channels: width of the pyramid levels.
        feat_channels: width of the towers.
        stacked_convs: conv-GN-ReLU blocks per tower (4 in the recipe).
        num_levels: pyramid levels, one `Scale` each.
        gn_groups: GroupNorm groups (32).

    `forward(feats)` with feats a list of [B, in_channels, H_l, W_l] returns three lists over the
    levels: cls_scores [B, C, H_l, W_l] (logits), bbox_preds [B, 4, H_l, W_l] (deltas, already
    multiplied by the level's scale; float32), centernesses [B, 1, H_l, W_l] (logits).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, feat_channels: int = 256, *,
                 stacked_convs: int = 4, num_levels: int = 5, gn_groups: int = 32,
                 prior_prob: float = 0.01):
        super().__init__()
        if feat_channels % gn_groups:
            raise AtssError(f"head width {feat_channels} is not divisible by the {gn_groups} GroupNorm groups")
        if stacked_convs < 1:
            raise AtssError(f"the head needs at least one conv per tower, got stacked_convs={stacked_convs}")
        self.num_classes = num_classes
        self.cls_convs = nn.ModuleList(
            ConvGNReLU(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
            for i in range(stacked_convs))
        self.reg_convs = nn.ModuleList(
            ConvGNReLU(in_channels if i == 0 else feat_channels, feat_channels, gn_groups)
            for i in range(stacked_convs))
        self.atss_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.atss_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.atss_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        # MMDetection: Normal(0, 0.01) on every head conv, zero bias; class bias from the prior.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.atss_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[torch.Tensor]):
        cls_scores, bbox_preds, centernesses = [], [], []
        for x, scale in zip(feats, self.scales):
            cls_feat, reg_feat = x, x
            for conv in self.cls_convs:
                cls_feat = conv(cls_feat)
            for conv in self.reg_convs:
                reg_feat = conv(reg_feat)
            cls_scores.append(self.atss_cls(cls_feat))              # [B, C, H, W]
            bbox_preds.append(scale(self.atss_reg(reg_feat)).float())  # [B, 4, H, W]
            centernesses.append(self.atss_centerness(reg_feat))     # [B, 1, H, W]
        return cls_scores, bbox_preds, centernesses
