"""ResNet backbone: torchvision's ResNet with MMDetection's freezing rules.

Module names are torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`), which
are also MMDetection's ResNet keys, so `backbone.*` entries of an MMDetection checkpoint and the
entries of torchvision's ImageNet files load unchanged. The stride sits in the 3x3 conv
("pytorch" style), as in MMDetection's ATSS recipe.

Two switches reproduce MMDetection's `ResNet(frozen_stages=1, norm_eval=True)`:
- `frozen_stages = k >= 0`: the stem (conv1, bn1) and `layer1..layer<k>` get `requires_grad=False`
  and stay in eval mode; -1 trains every stage.
- `norm_eval=True`: every BatchNorm of the backbone stays in eval mode (running statistics frozen)
  even in `model.train()`; the affine weights of unfrozen stages still train.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet

from atss_cli.errors import AtssError

_BUILDERS = {18: resnet.resnet18, 34: resnet.resnet34, 50: resnet.resnet50, 101: resnet.resnet101}


class ResNet(nn.Module):
    """ResNet-{18,34,50,101} returning C3, C4, C5 (strides 8, 16, 32).

    Args:
        depth: 18, 34, 50 or 101.
        frozen_stages: stem plus this many stages frozen (-1: none, 0: stem only, 1: stem + layer1).
        norm_eval: keep every BatchNorm in eval mode during training.

    `forward(x)` with x [B, 3, H, W] returns [C3, C4, C5]: [B, c, H/8, W/8], [B, 2c, H/16, W/16],
    [B, 4c, H/32, W/32] with c = 512 for depths 50/101 and 128 for 18/34 (`out_channels`).
    """

    def __init__(self, depth: int = 50, *, frozen_stages: int = 1, norm_eval: bool = True):
        super().__init__()
        if depth not in _BUILDERS:
            raise AtssError(f"ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
        if not -1 <= frozen_stages <= 4:
            raise AtssError(f"frozen_stages must be in -1..4, got {frozen_stages}")
        # MMDetection's random init zeroes the last BN of each residual block (zero_init_residual).
        net = _BUILDERS[depth](weights=None, zero_init_residual=True)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels = [128 * expansion, 256 * expansion, 512 * expansion]
        self.depth = depth
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        stages = [self.conv1, self.bn1]
        stages += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return stages

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]
