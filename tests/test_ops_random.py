"""The kernels against the pure-PyTorch reference on hundreds of seeded random scenes.

The reference follows the same tie rules (lower anchor index, lower GT index) and sums the
threshold in the same order, so every output must be equal, bit for bit: no tolerance.
Scenes: batches of 1-4 images from 32 px up to 1333 x 800 in one padded batch (valid masks
differ), M from 0 to 300, tiny / huge / duplicate / border-touching / integer boxes (ties),
random holes in the valid flags, and anchors that are not a grid (the exhaustive path).
"""

from __future__ import annotations

import pytest
import torch

from atss_cli import ops
from atss_cli.ops import scenes

pytestmark = pytest.mark.skipif(not ops.extension.available(), reason=ops.extension.reason())

random_scene = scenes.random_scene


def assert_same(scene: scenes.Scene, topk: int = 9, geometry: ops.GridGeometry | None = None) -> None:
    """Reference == kernels; with `geometry`, the kernels are given it (the reference is not)."""
    args = scene.args()
    c_ref = ops.topk_candidates(*args, topk, backend="reference")
    c_ext = ops.topk_candidates(*args, topk, backend="extension", geometry=geometry)
    assert torch.equal(c_ref, c_ext), f"candidates differ at {(c_ref != c_ext).nonzero()[:5].tolist()}"
    a_ref, i_ref = ops.atss_assign(*args, topk, backend="reference")
    a_ext, i_ext = ops.atss_assign(*args, topk, backend="extension", geometry=geometry)
    assert torch.equal(a_ref, a_ext), f"assigned differs at {(a_ref != a_ext).nonzero()[:5].tolist()}"
    assert torch.equal(i_ref, i_ext), f"iou differs at {(i_ref != i_ext).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("chunk", range(8))
def test_random_grid_scenes(chunk):
    """240 scenes (30 per chunk) on the grid anchors of the model."""
    for seed in range(chunk * 30, chunk * 30 + 30):
        assert_same(random_scene(seed))


def test_random_scenes_with_geometry():
    """Scenes whose valid flags are the rectangles, given their geometry (validated)."""
    for seed in [s for s in range(40) if s % 4 < 2]:
        scene = random_scene(seed)
        assert_same(scene, 9 if seed % 3 else 1 + seed % 64, geometry=scenes.scene_geometry(scene))


@pytest.mark.parametrize("topk", [1, 2, 4, 16, 64])
def test_random_scenes_other_topk(topk):
    for seed in range(1000 + topk, 1000 + topk + 4):
        assert_same(random_scene(seed), topk=topk)


@pytest.mark.parametrize("mode", ["jitter", "permute"])
def test_random_non_grid_anchors(mode):
    """Arbitrary anchors take the exhaustive path and must still be exact."""
    for seed in range(12):
        base = scenes.make_scene(500 + seed, [(int(64 + 40 * seed), int(96 + 60 * seed))] * (1 + seed % 3),
                                 [seed * 5 % 60, seed * 3 % 40, 7][: 1 + seed % 3], holes=0.3 * (seed % 2))
        assert_same(scenes.perturbed(base, seed, mode))


def test_mixed_grid_and_non_grid_levels():
    """One level jittered (exhaustive), the others grids (window search) in one call."""
    base = scenes.make_scene(7, [(512, 640), (300, 200)], [40, 25], holes=0.1)
    anchors = base.anchors.clone()
    start = base.level_sizes[0]
    anchors[start:start + base.level_sizes[1]] += 0.25  # shift: still monotone, but now check it's exact
    anchors[start + 3] += 1.0  # breaks the grid of level 1
    scene = scenes.Scene(anchors, base.valid, base.level_sizes, base.gt_boxes, base.num_gt, base.image_sizes)
    assert_same(scene)


def test_gt_far_from_valid_anchors():
    """GTs of a small image whose valid region is tiny, and GTs outside every valid anchor."""
    scene = scenes.make_scene(3, [(800, 1333), (32, 32)], [10, 10])
    gt = scene.gt_boxes.clone()
    gt[1, :5] = torch.tensor([1200.0, 700.0, 1300.0, 790.0])  # far from image 1's valid anchors
    scene = scenes.Scene(scene.anchors, scene.valid, scene.level_sizes, gt, scene.num_gt, scene.image_sizes)
    assert_same(scene)


def test_sparse_valid_masks():
    """Very few valid anchors per level: the window must grow until the k-th is covered."""
    for seed, keep in enumerate((0.002, 0.01, 0.05)):
        scene = scenes.make_scene(90 + seed, [(640, 800), (200, 900)], [30, 12])
        g = torch.Generator().manual_seed(seed)
        valid = scene.valid & (torch.rand(scene.valid.shape, generator=g) < keep)
        assert_same(scenes.Scene(scene.anchors, valid, scene.level_sizes, scene.gt_boxes, scene.num_gt,
                                 scene.image_sizes))


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_per_image(seed):
    """A padded batch gives, per image, what that image gives alone (and with other padding)."""
    scene = random_scene(2000 + seed)
    a, iou = ops.atss_assign(*scene.args())
    c = ops.topk_candidates(*scene.args())
    for i, n_gt in enumerate(scene.num_gt.tolist()):
        one = (scene.anchors, scene.valid[i:i + 1], scene.level_sizes, scene.gt_boxes[i:i + 1, :n_gt],
               scene.num_gt[i:i + 1])
        a1, iou1 = ops.atss_assign(*one)
        assert torch.equal(a1[0], a[i]) and torch.equal(iou1[0], iou[i])
        assert torch.equal(ops.topk_candidates(*one)[0], c[i, :n_gt])
        assert (c[i, n_gt:] == -1).all()
        # The same image repeated in a batch of 3, with extra GT padding.
        rep = (scene.anchors, scene.valid[i:i + 1].expand(3, -1), scene.level_sizes,
               torch.cat([scene.gt_boxes[i:i + 1, :n_gt], torch.full((1, 4, 4), 7.0)], 1).expand(3, -1, -1),
               scene.num_gt[i:i + 1].expand(3))
        a3, iou3 = ops.atss_assign(*rep)
        assert all(torch.equal(a3[j], a[i]) for j in range(3))
        assert all(torch.equal(iou3[j], iou[i]) for j in range(3))


def test_deterministic_and_thread_independent():
    scene = scenes.make_scene(11, [(800, 1333), (600, 1000)], [300, 250])
    first = ops.atss_assign(*scene.args())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = ops.atss_assign(*scene.args())
    finally:
        torch.set_num_threads(threads)
    for _ in range(3):
        again = ops.atss_assign(*scene.args())
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(first[0], single[0]) and torch.equal(first[1], single[1])


def test_scene_variety():
    """The factory really makes what the tests claim to cover."""
    seen_sizes, seen_m, holes = set(), set(), 0
    for seed in range(240):
        s = random_scene(seed)
        seen_sizes.update(s.image_sizes)
        seen_m.update(s.num_gt.tolist())
        holes += int(any((~s.valid[i]).any() for i in range(len(s.image_sizes))))
    assert min(min(h, w) for h, w in seen_sizes) < 48 and (800, 1333) in seen_sizes
    assert 0 in seen_m and max(seen_m) > 200
    assert holes > 100


@pytest.mark.parametrize("kind", ["far", "inverted", "on_grid", "negative", "points", "scaled_anchors"])
def test_extreme_boxes(kind):
    """Boxes far outside the image (distances near 1e6: float32 near-ties everywhere), inverted
    boxes (x2 < x1), boxes on grid points (exact ties), negative coordinates, zero-size boxes,
    and anchors whose centres are not integers."""
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        b = 1 + seed % 3
        sizes = [(int(torch.randint(32, 400, (1,), generator=g)), int(torch.randint(32, 500, (1,), generator=g)))
                 for _ in range(b)]
        s = scenes.make_scene(3000 + seed, sizes, [int(torch.randint(0, 40, (1,), generator=g)) for _ in range(b)],
                              holes=(0.0, 0.5, 0.95)[seed % 3])
        gt, anchors = s.gt_boxes, s.anchors
        if kind == "far":
            gt = gt * 1000 - 5e5
        elif kind == "inverted":
            gt = gt[..., [2, 3, 0, 1]]
        elif kind == "on_grid":
            gt = torch.round(gt / 8) * 8
        elif kind == "negative":
            gt = gt - 100
        elif kind == "points":
            c = torch.round(gt[..., :2] / 4) * 4
            gt = torch.cat([c, c], -1)
        else:
            anchors = anchors * 0.5 + 3.3
        geo = scenes.scene_geometry(s) if seed % 3 == 0 else None  # no holes: the rectangles
        for topk in (9, 1 + seed):
            assert_same(scenes.Scene(anchors, s.valid, s.level_sizes, gt, s.num_gt, s.image_sizes), topk, geo)


def test_reference_sqrt_is_correctly_rounded():
    """torch's CPU float32 sqrt is not always correctly rounded; the reference's is (the kernels
    use C / CUDA sqrtf, which are)."""
    import numpy as np

    from atss_cli.ops.reference import _sqrt_ieee

    x = (torch.rand(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 1e12).float()
    assert torch.equal(_sqrt_ieee(x), torch.from_numpy(np.sqrt(x.numpy())))
