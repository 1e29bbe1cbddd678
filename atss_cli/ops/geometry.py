"""`GridGeometry`: what the caller of the assigner already knows about its anchors.

The model's anchors are, per level, a row-major grid (x fastest) whose valid part in image b
is the rectangle x < min(ceil(pad_w / s), W), y < min(ceil(pad_h / s), H) (SPEC.md section 2).
Given that, the kernels skip grid detection and valid counting: one pass on the GPU, no
launch that only re-derives what the anchor generator knew. The result is the same as
without geometry; `validate=True` checks the promise, `validate=False` trusts it (no sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atss_cli.ops.checks import OpsInputError


@dataclass(frozen=True)
class GridGeometry:
    level_shapes: tuple[tuple[int, int], ...]  # (H_l, W_l) of each level's anchor grid
    strides: tuple[int, ...]  # stride of each level in pixels
    extent: torch.Tensor  # int64 [B, 2]: (pad_h, pad_w) of each image, on the ops' device

    def kernel_args(self) -> tuple[list[int], list[int], torch.Tensor]:
        """(grid_hw flattened [H0, W0, H1, W1, ...], strides, extent) as the op schema takes them."""
        return ([int(v) for hw in self.level_shapes for v in hw], [int(s) for s in self.strides],
                self.extent.contiguous())


def _fail(message: str):
    raise OpsInputError(message)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def valid_rectangles(geometry: GridGeometry) -> torch.Tensor:
    """bool [B, N]: the valid flags the geometry promises (SPEC.md section 2)."""
    ext = geometry.extent
    parts = []
    for (h, w), s in zip(geometry.level_shapes, geometry.strides):
        vh = torch.clamp(torch.div(ext[:, 0] + (s - 1), s, rounding_mode="floor"), max=h)  # [B]
        vw = torch.clamp(torch.div(ext[:, 1] + (s - 1), s, rounding_mode="floor"), max=w)
        ys = torch.arange(h, device=ext.device)
        xs = torch.arange(w, device=ext.device)
        inside = (ys[None, :, None] < vh[:, None, None]) & (xs[None, None, :] < vw[:, None, None])
        parts.append(inside.reshape(ext.shape[0], h * w))
    return torch.cat(parts, dim=1)


def check_geometry(geometry, anchors: torch.Tensor, valid: torch.Tensor, level_sizes: list[int],
                   validate: bool) -> None:
    """Checks `geometry` against the other inputs: its form always (free, no device read),
    its promise (grid anchors, rectangle valid flags, extent >= 0) when `validate`."""
    if not isinstance(geometry, GridGeometry):
        _fail(f"geometry must be an ops.GridGeometry or None, got a {type(geometry).__name__}")
    shapes, strides, ext = geometry.level_shapes, geometry.strides, geometry.extent
    n_levels = len(level_sizes)
    if not isinstance(shapes, (tuple, list)) or len(shapes) != n_levels:
        _fail(f"geometry.level_shapes must hold one (H, W) per level ({n_levels}), got {shapes!r}")
    for level, (hw, size) in enumerate(zip(shapes, level_sizes)):
        if (not isinstance(hw, (tuple, list)) or len(hw) != 2 or not all(_is_int(v) and v >= 0 for v in hw)):
            _fail(f"geometry.level_shapes[{level}] must be (H, W) ints >= 0, got {hw!r}")
        if hw[0] * hw[1] != size:
            _fail(f"geometry.level_shapes[{level}] must have H * W = level_sizes[{level}] = {size}, "
                  f"got {tuple(hw)}")
    if not isinstance(strides, (tuple, list)) or len(strides) != n_levels:
        _fail(f"geometry.strides must hold one stride per level ({n_levels}), got {strides!r}")
    if not all(_is_int(s) and s >= 1 for s in strides):
        _fail(f"geometry.strides must be ints >= 1, got {strides!r}")
    b = valid.shape[0]
    if not isinstance(ext, torch.Tensor):
        _fail(f"geometry.extent must be an int64 tensor [B, 2], got a {type(ext).__name__}")
    if ext.dtype != torch.int64 or ext.dim() != 2 or ext.shape[0] != b or ext.shape[1] != 2:
        _fail(f"geometry.extent must be int64 [B, 2] with B={b}, got {ext.dtype} {list(ext.shape)}")
    if ext.device != valid.device:
        _fail(f"geometry.extent must be on the device of gt_boxes ({valid.device}), got {ext.device}")
    if not validate:
        return
    if b and int(ext.min()) < 0:
        bad = ext[(ext < 0).any(1)][0].tolist()
        _fail(f"geometry.extent must be >= 0, got {bad}")
    _check_grid_anchors(shapes, anchors, level_sizes)
    want = valid_rectangles(geometry)
    if not torch.equal(want, valid):
        i, a = (want != valid).nonzero()[0].tolist()
        level = 0
        while a >= sum(level_sizes[:level + 1]):
            level += 1
        local = a - sum(level_sizes[:level])
        w = shapes[level][1]
        _fail(f"geometry.extent {ext[i].tolist()} does not match valid of image {i}: anchor {a} "
              f"(level {level}, x={local % w}, y={local // w}) is {bool(valid[i, a])}")


def _check_grid_anchors(shapes, anchors: torch.Tensor, level_sizes: list[int]) -> None:
    """Each level's anchor centres are colx[x], rowy[y], both strictly increasing (bit-equal)."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2.0
    cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
    start = 0
    for level, ((h, w), size) in enumerate(zip(shapes, level_sizes)):
        if size:
            gx = cx[start:start + size].reshape(h, w)
            gy = cy[start:start + size].reshape(h, w)
            ok = (bool((gx == gx[:1]).all()) and bool((gy == gy[:, :1]).all())
                  and bool((gx[0, 1:] > gx[0, :-1]).all()) and bool((gy[1:, 0] > gy[:-1, 0]).all()))
            if not ok:
                _fail(f"geometry.level_shapes[{level}] = {(h, w)}: the anchors of level {level} are not a "
                      f"row-major grid of that shape")
        start += size
