"""Anchors, valid flags and the delta-xywh box coder (SPEC.md section 1).

One square anchor per location, side `8 * stride`, centred at `(x * stride, y * stride)` (offset 0);
levels P3..P7 concatenated, row-major with x fastest inside a level.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

# |log(16 / 1000)|: the largest |dw|, |dh| a decoded box may take (MMDetection's wh_ratio_clip).
MAX_LOG_RATIO = abs(math.log(16 / 1000))
BOX_STDS = (0.1, 0.1, 0.2, 0.2)


class AnchorGenerator:
    """Makes the batch's anchors and each image's valid flags; anchors are cached per
    (feature-map sizes, device), since a training run sees few distinct padded sizes.

    Args:
        strides: one stride per level (8, 16, 32, 64, 128).
        octave_scale: anchor side = octave_scale * stride (8).
        pad_divisor: images are padded to a multiple of this (32); valid flags use each image's
            own size rounded up to it.
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), octave_scale: float = 8.0,
                 pad_divisor: int = 32, cache_size: int = 64):
        self.strides = tuple(int(s) for s in strides)
        self.octave_scale = float(octave_scale)
        self.pad_divisor = int(pad_divisor)
        self.cache_size = cache_size
        self._cache: dict[tuple, torch.Tensor] = {}

    def anchors(self, sizes: Sequence[tuple[int, int]], device) -> torch.Tensor:
        """sizes: (H_l, W_l) per level -> float32 [N, 4] with N = sum H_l * W_l."""
        key = (tuple((int(h), int(w)) for h, w in sizes), str(device))
        cached = self._cache.get(key)
        if cached is None:
            per_level = []
            for (h, w), stride in zip(key[0], self.strides):
                half = 0.5 * self.octave_scale * stride
                xs = torch.arange(w, device=device, dtype=torch.float32) * stride
                ys = torch.arange(h, device=device, dtype=torch.float32) * stride
                cy, cx = torch.meshgrid(ys, xs, indexing="ij")              # [H, W], x fastest
                centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 4)
                per_level.append(centres + torch.tensor([-half, -half, half, half], device=device))
            cached = torch.cat(per_level)                                    # [N, 4]
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = cached
        return cached

    def valid_flags(self, sizes: Sequence[tuple[int, int]], img_shapes: Sequence[tuple[int, int]],
                    device) -> torch.Tensor:
        """bool [B, N]: anchor (x, y) of level l is valid for an image iff
        x < min(ceil(pad_w / stride), W_l) and y < min(ceil(pad_h / stride), H_l),
        with (pad_h, pad_w) the image's own (h, w) rounded up to the pad divisor."""
        d = self.pad_divisor
        pads = torch.tensor([[-(-int(h) // d) * d, -(-int(w) // d) * d] for h, w in img_shapes],
                            dtype=torch.int64)                                # [B, 2]
        flags = []
        for (h, w), stride in zip(sizes, self.strides):
            vh = torch.clamp(-(-pads[:, 0] // stride), max=int(h))         # ceil, [B]
            vw = torch.clamp(-(-pads[:, 1] // stride), max=int(w))
            ok_y = torch.arange(int(h))[None, :] < vh[:, None]              # [B, H]
            ok_x = torch.arange(int(w))[None, :] < vw[:, None]              # [B, W]
            flags.append((ok_y[:, :, None] & ok_x[:, None, :]).reshape(len(img_shapes), -1))
        return torch.cat(flags, dim=1).to(device)


def decode(anchors: torch.Tensor, deltas: torch.Tensor, max_shape: tuple[int, int] | None = None
           ) -> torch.Tensor:
    """Delta-xywh decode (means 0, stds 0.1, 0.1, 0.2, 0.2): anchors [..., 4], deltas [..., 4]
    -> boxes [..., 4]; dw, dh clamped to +-|log(16/1000)|; clipped to (h, w) = max_shape if given."""
    stds = deltas.new_tensor(BOX_STDS)
    d = deltas * stds
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    gxy = pxy + pwh * d[..., :2]
    gwh = pwh * d[..., 2:].clamp(min=-MAX_LOG_RATIO, max=MAX_LOG_RATIO).exp()
    boxes = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
    if max_shape is not None:
        h, w = max_shape
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], dim=-1)
    return boxes


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The inverse of `decode` (without clamping): anchors, boxes [..., 4] -> deltas [..., 4]."""
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    gxy = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    gwh = boxes[..., 2:] - boxes[..., :2]
    d = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=-1)
    return d / d.new_tensor(BOX_STDS)
