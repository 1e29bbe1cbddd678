"""Feature pyramid: C3..C5 -> P3..P7 (strides 8..128), MMDetection's FPN with
`start_level=1, add_extra_convs="on_output", num_outs=5`.

Parameter names are MMDetection's (`neck.lateral_convs.i.conv`, `neck.fpn_convs.i.conv`);
`fpn_convs.3` makes P6 from the P5 *output* (3x3, stride 2) and `fpn_convs.4` makes P7 from P6
with no ReLU between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvOnly(nn.Module):
    """A conv held under `.conv`, so its keys read `...lateral_convs.0.conv.weight` as in MMDetection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=kernel_size // 2, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """Args:
        in_channels: channels of C3, C4, C5 (512, 1024, 2048 for ResNet-50).
        out_channels: width of every pyramid level (256).
        num_extra: extra stride-2 levels after P5 (2: P6, P7).

    `forward([C3, C4, C5])` returns [P3, ..., P7], each [B, out_channels, H_l, W_l].
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, num_extra: int = 2):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvOnly(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvOnly(out_channels, out_channels, 3) for _ in in_channels)
        for _ in range(num_extra):
            self.fpn_convs.append(ConvOnly(out_channels, out_channels, 3, stride=2))
        self.out_channels = out_channels
        # MMDetection: Xavier-uniform weights, zero bias on every FPN conv.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        # Top-down: nearest upsampling to the next level's exact size (odd sizes included).
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        for conv in self.fpn_convs[len(laterals):]:
            outs.append(conv(outs[-1]))
        return outs
