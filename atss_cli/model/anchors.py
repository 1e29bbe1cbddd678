"""Anchors, valid flags and the delta-xywh box coder (SPEC.md section 1).

One square anchor per location, side `8 * stride`, centred at `(x * stride, y * stride)` (offset 0);
levels P3..P7 concatenated, row-major with x fastest inside a level.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from atss_cli.model.upload import host_tensor, to_device

# |log(16 / 1000)|: the largest |dw|, |dh| a decoded box may take (MMDetection's wh_ratio_clip).
MAX_LOG_RATIO = abs(math.log(16 / 1000))
XY_STD, WH_STD = 0.1, 0.2
BOX_STDS = (XY_STD, XY_STD, WH_STD, WH_STD)


class AnchorGenerator:
    """Makes the batch's anchors and each image's valid flags on the device the loss runs on.

    Anchors and anchor positions are cached per (feature-map sizes, device), since a training
    run sees few distinct padded sizes; valid flags are computed on that device from a small
    int64 [B, 2] tensor of padded image extents, so a training step copies no [B, N] mask from
    the host and reads nothing back.

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
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cached(self, sizes: Sequence[tuple[int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors float32 [N, 4], positions int64 [2, N]: (x * stride, y * stride) of each anchor)."""
        key = (tuple((int(h), int(w)) for h, w in sizes), str(torch.device(device)))
        cached = self._cache.get(key)
        if cached is None:
            boxes, positions = [], []
            for (h, w), stride in zip(key[0], self.strides):
                half = 0.5 * self.octave_scale * stride
                xs = torch.arange(w, device=device, dtype=torch.int64) * stride
                ys = torch.arange(h, device=device, dtype=torch.int64) * stride
                py, px = torch.meshgrid(ys, xs, indexing="ij")              # [H, W], x fastest
                px, py = px.reshape(-1), py.reshape(-1)
                positions.append(torch.stack([px, py]))
                cx, cy = px.to(torch.float32), py.to(torch.float32)
                boxes.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1))
            cached = (torch.cat(boxes), torch.cat(positions, dim=1))        # [N, 4], [2, N]
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = cached
        return cached

    def grid(self, sizes: Sequence[tuple[int, int]], device) -> tuple[torch.Tensor, torch.Tensor]:
        """(anchors float32 [N, 4], positions int64 [2, N]) as cached: the tensors `anchors` and
        `valid_flags` read. A CUDA graph keeps them: the cache may drop them, and the caching
        allocator would hand their memory to other tensors the graph's replays do not know of."""
        return self._cached(sizes, device)

    def anchors(self, sizes: Sequence[tuple[int, int]], device) -> torch.Tensor:
        """sizes: (H_l, W_l) per level -> float32 [N, 4] with N = sum H_l * W_l (cached)."""
        return self._cached(sizes, device)[0]

    def extents(self, img_shapes, device) -> torch.Tensor:
        """int64 [B, 2] on `device`: (pad_h, pad_w), each image's own (h, w) rounded up to the pad
        divisor. img_shapes: (h, w) per image, or an int64 [B, 2] tensor of them (on any device).
        From Python ints the tensor is built on the host and uploaded without a pageable copy."""
        d = self.pad_divisor
        if isinstance(img_shapes, torch.Tensor):
            shapes = to_device(img_shapes.to(torch.int64), device)
            return (shapes + (d - 1)) // d * d
        pads = [[-(-int(h) // d) * d, -(-int(w) // d) * d] for h, w in img_shapes]
        return to_device(host_tensor(pads, torch.int64, device), device)

    def valid_flags(self, sizes: Sequence[tuple[int, int]], img_shapes, device,
                    extent: torch.Tensor | None = None) -> torch.Tensor:
        """bool [B, N] on `device`: anchor (x, y) of level l is valid for an image iff
        x < min(ceil(pad_w / stride), W_l) and y < min(ceil(pad_h / stride), H_l), with
        (pad_h, pad_w) the image's own (h, w) rounded up to the pad divisor (`extents`; pass
        `extent` when it is already on the device). Since x < W_l always holds and, for integers,
        x < ceil(p / s) iff x * s < p, that is x * stride < pad_w and y * stride < pad_h."""
        if extent is None:
            extent = self.extents(img_shapes, device)
        positions = self._cached(sizes, device)[1]                           # [2, N]
        return (positions[0][None, :] < extent[:, 1:2]) & (positions[1][None, :] < extent[:, 0:1])


def decode(anchors: torch.Tensor, deltas: torch.Tensor, max_shape: tuple[int, int] | None = None
           ) -> torch.Tensor:
    """Delta-xywh decode (means 0, stds 0.1, 0.1, 0.2, 0.2): anchors [..., 4], deltas [..., 4]
    -> boxes [..., 4]; dw, dh clamped to +-|log(16/1000)|; clipped to (h, w) = max_shape if given.
    The stds are Python scalars, not a tensor: a tensor made from them would be copied to the
    device from pageable memory on every call (a host sync in the training step)."""
    pxy = (anchors[..., :2] + anchors[..., 2:]) * 0.5
    pwh = anchors[..., 2:] - anchors[..., :2]
    gxy = pxy + pwh * (deltas[..., :2] * XY_STD)
    gwh = pwh * (deltas[..., 2:] * WH_STD).clamp(min=-MAX_LOG_RATIO, max=MAX_LOG_RATIO).exp()
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
    return torch.cat([(gxy - pxy) / pwh / XY_STD, torch.log(gwh / pwh) / WH_STD], dim=-1)
