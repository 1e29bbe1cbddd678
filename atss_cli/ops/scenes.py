"""Seeded assignment scenes: the one factory the op tests and `atss bench assigner` share.

A scene is what the model hands the assigner for a padded batch: the grid anchors of SPEC.md
section 1 (one square anchor of side 8 x stride per location, centre (x * stride, y * stride),
levels P3..P7, row-major, x fastest), each image's valid flags (section 2) and padded GT boxes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from atss_cli.ops.geometry import GridGeometry

STRIDES = (8, 16, 32, 64, 128)
OCTAVE_SCALE = 8  # anchor side = 8 x stride


@dataclass
class Scene:
    anchors: torch.Tensor  # float32 [N, 4]
    valid: torch.Tensor  # bool [B, N]
    level_sizes: list[int]
    gt_boxes: torch.Tensor  # float32 [B, M, 4], zero padding
    num_gt: torch.Tensor  # int64 [B]
    image_sizes: list[tuple[int, int]]  # (h, w) of each image before padding

    def args(self) -> tuple:
        """Positional arguments of `ops.topk_candidates` / `ops.atss_assign`."""
        return self.anchors, self.valid, self.level_sizes, self.gt_boxes, self.num_gt

    def to(self, device) -> "Scene":
        return Scene(self.anchors.to(device), self.valid.to(device), list(self.level_sizes),
                     self.gt_boxes.to(device), self.num_gt.to(device), list(self.image_sizes))


def featmap_sizes(batch_hw: tuple[int, int], strides=STRIDES) -> list[tuple[int, int]]:
    """Feature map (h, w) per level for a batch padded to `batch_hw`, as the network makes them:
    P3..P5 by stride, P6 and P7 by stride-2 convs (ceil)."""
    h, w = batch_hw
    sizes = []
    for i, s in enumerate(strides):
        if i < 3:
            sizes.append((math.ceil(h / s), math.ceil(w / s)))
        else:
            ph, pw = sizes[-1]
            sizes.append(((ph + 1) // 2, (pw + 1) // 2))
    return sizes


def grid_anchors(sizes: list[tuple[int, int]], strides=STRIDES) -> tuple[torch.Tensor, list[int]]:
    """The batch's anchors [N, 4] and the anchors per level."""
    out = []
    for (h, w), s in zip(sizes, strides):
        half = OCTAVE_SCALE * s / 2
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * s,
                                torch.arange(w, dtype=torch.float32) * s, indexing="ij")
        cx, cy = xs.reshape(-1), ys.reshape(-1)
        out.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1))
    return torch.cat(out), [h * w for h, w in sizes]


def valid_flags(image_sizes: list[tuple[int, int]], sizes: list[tuple[int, int]], strides=STRIDES) -> torch.Tensor:
    """bool [B, N]: anchor (x, y) of a level is valid iff x < min(ceil(pad_w / s), W) and
    y < min(ceil(pad_h / s), H), pad_* = the image's own size rounded up to 32."""
    rows = []
    for ih, iw in image_sizes:
        pad_h, pad_w = math.ceil(ih / 32) * 32, math.ceil(iw / 32) * 32
        flags = []
        for (h, w), s in zip(sizes, strides):
            vh, vw = min(math.ceil(pad_h / s), h), min(math.ceil(pad_w / s), w)
            f = torch.zeros(h, w, dtype=torch.bool)
            f[:vh, :vw] = True
            flags.append(f.reshape(-1))
        rows.append(torch.cat(flags))
    return torch.stack(rows)


def random_boxes(gen: torch.Generator, m: int, ih: int, iw: int, special: bool = True) -> torch.Tensor:
    """m GT boxes inside an (ih, iw) image: log-uniform sizes from ~1 px to the whole image, and
    (with `special`) some tiny, huge, duplicate and border-touching boxes."""
    if m == 0:
        return torch.zeros(0, 4)
    u = torch.rand(m, 6, generator=gen)
    side_max = float(max(ih, iw))
    bw = torch.exp(math.log(1.0) + u[:, 0] * math.log(side_max)).clamp(max=iw)
    bh = (bw * torch.exp((u[:, 1] - 0.5) * 2.0)).clamp(0.5, ih)
    x1 = u[:, 2] * (iw - bw)
    y1 = u[:, 3] * (ih - bh)
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
    if special and m >= 4:
        kind = torch.randint(0, 10, (m,), generator=gen)
        for i in range(m):
            k = int(kind[i])
            if k == 0:  # tiny, below a pixel
                c = boxes[i, :2] + 0.3
                boxes[i] = torch.cat([c, c + torch.rand(2, generator=gen) * 0.8 + 0.05])
            elif k == 1:  # huge: the whole image
                boxes[i] = torch.tensor([0.0, 0.0, float(iw), float(ih)])
            elif k == 2 and i > 0:  # duplicate of an earlier box
                boxes[i] = boxes[int(torch.randint(0, i, (1,), generator=gen))]
            elif k == 3:  # touching the border
                side = int(torch.randint(0, 4, (1,), generator=gen))
                if side == 0:
                    boxes[i, 0] = 0.0
                elif side == 1:
                    boxes[i, 1] = 0.0
                elif side == 2:
                    boxes[i, 2] = float(iw)
                else:
                    boxes[i, 3] = float(ih)
            elif k == 4:  # integer coordinates: ties in distance are common
                boxes[i] = boxes[i].round()
                boxes[i, 2:] = torch.maximum(boxes[i, 2:], boxes[i, :2] + 1)
    return boxes


def make_scene(seed: int, image_sizes: list[tuple[int, int]], num_gt: list[int] | int,
               holes: float = 0.0, special: bool = True) -> Scene:
    """A padded batch of images of the given (h, w) sizes, each with its own number of GTs.

    `holes` in [0, 1) additionally clears that fraction of the valid flags at random (masks
    that are not rectangles, which the kernels must still get right).
    """
    gen = torch.Generator().manual_seed(seed)
    if isinstance(num_gt, int):
        num_gt = [num_gt] * len(image_sizes)
    batch_hw = (math.ceil(max(h for h, _ in image_sizes) / 32) * 32,
                math.ceil(max(w for _, w in image_sizes) / 32) * 32)
    sizes = featmap_sizes(batch_hw)
    anchors, level_sizes = grid_anchors(sizes)
    valid = valid_flags(image_sizes, sizes)
    if holes > 0:
        valid &= torch.rand(valid.shape, generator=gen) >= holes
    m = max(num_gt) if num_gt else 0
    gt = torch.zeros(len(image_sizes), m, 4)
    for i, ((ih, iw), k) in enumerate(zip(image_sizes, num_gt)):
        gt[i, :k] = random_boxes(gen, k, ih, iw, special)
    return Scene(anchors, valid, level_sizes, gt, torch.tensor(num_gt, dtype=torch.int64), list(image_sizes))


def padded_extent(image_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """int64 [B, 2]: each image's (h, w) rounded up to the pad divisor 32."""
    return torch.tensor([[math.ceil(h / 32) * 32, math.ceil(w / 32) * 32] for h, w in image_sizes],
                        dtype=torch.int64).reshape(-1, 2)


def scene_geometry(scene: Scene) -> GridGeometry:
    """The `ops.GridGeometry` of a `make_scene` scene (what the model passes). Its promise holds
    only for scenes made without `holes` and on their own grid anchors."""
    batch_hw = (math.ceil(max(h for h, _ in scene.image_sizes) / 32) * 32,
                math.ceil(max(w for _, w in scene.image_sizes) / 32) * 32)
    shapes = featmap_sizes(batch_hw)
    return GridGeometry(tuple(shapes), STRIDES[:len(shapes)], padded_extent(scene.image_sizes).to(scene.valid.device))


M_CHOICES = (0, 1, 2, 5, 9, 20, 40, 80, 150, 300)


def random_scene(seed: int) -> Scene:
    """The op tests' random scene `seed`: 1-4 images from 32 px to 1333 x 800 (every tenth
    holds a full-size image), M up to 300 (M_CHOICES by seed), holes in the valid flags for
    seeds 2 and 3 mod 4."""
    g = torch.Generator().manual_seed(10_000 + seed)

    def draw(lo, hi):  # log-uniform int in [lo, hi]
        return int(math.exp(math.log(lo) + float(torch.rand(1, generator=g)) * (math.log(hi) - math.log(lo))))

    b = int(torch.randint(1, 5, (1,), generator=g))
    sizes = [(draw(32, 800), draw(32, 1333)) for _ in range(b)]
    if seed % 10 == 0:
        sizes[0] = (800, 1333)  # the full size, padded with smaller images
    m_max = M_CHOICES[seed % len(M_CHOICES)]
    num_gt = [int(torch.randint(0, m_max + 1, (1,), generator=g)) for _ in range(b)]
    holes = (0.0, 0.0, 0.2, 0.7)[seed % 4]
    return make_scene(seed, sizes, num_gt, holes=holes)


def perturbed(scene: Scene, seed: int, mode: str) -> Scene:
    """The same scene on anchors that are not a grid: "jitter"ed, or "permute"d within each level."""
    g = torch.Generator().manual_seed(seed)
    anchors = scene.anchors.clone()
    if mode == "jitter":
        anchors += torch.randn(anchors.shape, generator=g) * 3.0
    else:
        start = 0
        for n in scene.level_sizes:
            perm = torch.randperm(n, generator=g) + start
            anchors[start:start + n] = scene.anchors[perm]
            start += n
    return Scene(anchors, scene.valid, scene.level_sizes, scene.gt_boxes, scene.num_gt, scene.image_sizes)


def bench_scene(batch: int, num_gt: int, seed: int = 0, hw: tuple[int, int] = (800, 1333)) -> Scene:
    """The benchmark's scene: `batch` images of 1333 x 800 with `num_gt` random GTs each."""
    return make_scene(seed, [hw] * batch, num_gt)
