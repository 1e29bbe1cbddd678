"""Hand-built cases that sit exactly on each rule of SPEC.md section 2, on every backend.

Each case states its expected output outright, and both the reference and the kernels
(grid search and exhaustive scan) must produce it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atss_cli import ops

BACKENDS = ["reference", pytest.param("extension", marks=pytest.mark.skipif(
    not ops.extension.available(), reason=ops.extension.reason()))]


def grid(w: int, h: int, stride: float = 8.0, side: float = 16.0, x0: float = 0.0) -> torch.Tensor:
    """A w x h grid of square anchors (row-major, x fastest), centres (x0 + x * stride, y * stride)."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * stride,
                            torch.arange(w, dtype=torch.float32) * stride + x0, indexing="ij")
    cx, cy = xs.reshape(-1), ys.reshape(-1)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def call(backend, anchors, gts, topk, valid=None, level_sizes=None):
    """One image: returns (candidates [M, L*topk], assigned [N], iou [N])."""
    n = anchors.shape[0]
    valid = torch.ones(1, n, dtype=torch.bool) if valid is None else valid.reshape(1, n)
    level_sizes = [n] if level_sizes is None else level_sizes
    gt = torch.as_tensor(gts, dtype=torch.float32).reshape(1, -1, 4)
    num_gt = torch.tensor([gt.shape[1]])
    c = ops.topk_candidates(anchors, valid, level_sizes, gt, num_gt, topk, backend=backend)
    a, iou = ops.atss_assign(anchors, valid, level_sizes, gt, num_gt, topk, backend=backend)
    return c[0], a[0], iou[0]


def layouts(anchors: torch.Tensor):
    """The same single-level anchors as a grid (the window search runs) and with one far-away
    anchor appended, which makes the level no grid (the exhaustive scan runs). Yields
    (anchors, level_sizes); the original anchors keep their indices."""
    yield anchors, None
    broken = torch.cat([anchors, torch.tensor([[1000.0, -1000.0, 1016.0, -984.0]])])
    yield broken, [broken.shape[0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_distance_tie_goes_to_lower_anchor_index(backend):
    # GT centre (12, 12) is equidistant from the anchors centred (8,8), (16,8), (8,16), (16,16):
    # indices 5, 6, 9, 10 of a 4 x 4 grid.
    for anchors, sizes in layouts(grid(4, 4)):
        for topk, expect in ((1, [5]), (2, [5, 6]), (3, [5, 6, 9]), (4, [5, 6, 9, 10])):
            c, _, _ = call(backend, anchors, [[4.0, 4.0, 20.0, 20.0]], topk, level_sizes=sizes)
            assert c[0].tolist() == expect, (topk, sizes)


@pytest.mark.parametrize("backend", BACKENDS)
def test_candidate_order_nearest_first_then_index(backend):
    # GT centre (9, 8): (8, 8) = index 5 at 1, (16, 8) = 6 at 7, then (8, 0) = 1 and (8, 16) = 9
    # tie at sqrt(65) (lower index first), then (0, 8) = 4 at 9.
    for anchors, sizes in layouts(grid(4, 4)):
        c, _, _ = call(backend, anchors, [[1.0, 0.0, 17.0, 16.0]], 5, level_sizes=sizes)
        assert c[0].tolist() == [5, 6, 1, 9, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_equal_ious_meet_threshold_with_greater_or_equal(backend):
    # Four equidistant candidates with exactly equal IoU (144 / 368): std 0, threshold = IoU,
    # and `>=` makes all four positive (`>` would make none).
    for anchors, sizes in layouts(grid(4, 4)):
        c, a, iou = call(backend, anchors, [[4.0, 4.0, 20.0, 20.0]], 4, level_sizes=sizes)
        assert sorted(c[0].tolist()) == [5, 6, 9, 10]
        pos = (a == 0).nonzero().squeeze(1).tolist()
        assert pos == [5, 6, 9, 10]
        expected = np.float32(144.0) / np.float32(256.0 + 256.0 - 144.0)
        assert (iou[pos] == torch.tensor(expected)).all()
        assert (iou[a < 0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("broken", [False, True])
def test_centre_margin_is_strict_at_001(backend, broken):
    # Anchor 0 is centred at (0, 0). GT x1 = -0.01f puts that centre exactly 0.01f inside the
    # left side: not positive (> is strict); one float below -0.01f it is. Two far levels
    # give IoU-0 candidates, so anchor 0 (IoU ~0.16) is above mean + std (topk = 1).
    level0 = grid(4, 4)
    if broken:  # a 17th anchor: level 0 is no grid, the exhaustive scan runs
        level0 = torch.cat([level0, torch.tensor([[500.0, 500.0, 516.0, 516.0]])])
    anchors = torch.cat([level0, grid(2, 2, x0=1000.0), grid(2, 2, x0=2000.0)])
    sizes = [level0.shape[0], 4, 4]
    exact = float(np.float32(-0.01))
    below = float(np.nextafter(np.float32(-0.01), np.float32(-1.0)))
    assert np.float32(0.0) - np.float32(exact) == np.float32(0.01)
    _, a_in, _ = call(backend, anchors, [[-1.0, -1.0, 6.0, 6.0]], 1, level_sizes=sizes)
    assert a_in[0] == 0  # sanity: anchor 0 is positive when its centre is well inside
    _, a_exact, _ = call(backend, anchors, [[exact, -1.0, 6.0, 6.0]], 1, level_sizes=sizes)
    assert a_exact[0] == -1
    _, a_below, iou = call(backend, anchors, [[below, -1.0, 6.0, 6.0]], 1, level_sizes=sizes)
    assert a_below[0] == 0 and iou[0] > 0.15


@pytest.mark.parametrize("backend", BACKENDS)
def test_gt_tie_goes_to_lower_gt_index(backend):
    # A duplicated GT ties on every anchor: the lower of the two indices takes them all.
    anchors = grid(6, 6)
    box, other = [10.0, 10.0, 30.0, 30.0], [0.0, 0.0, 40.0, 40.0]
    for anchors_, sizes in layouts(anchors):
        alone = call(backend, anchors_, [other, box], 9, level_sizes=sizes)[1]
        dup = call(backend, anchors_, [other, box, box], 9, level_sizes=sizes)[1]
        assert (alone == 1).any()
        assert torch.equal(dup, alone)  # GT 2 never wins
        dup_first = call(backend, anchors_, [box, box, other], 9, level_sizes=sizes)[1]
        assert torch.equal(dup_first, torch.where(alone == 1, 0, torch.where(alone == 0, 2, alone)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_highest_iou_wins_and_mirror_tie(backend):
    # Anchor 24 of a 7 x 7 grid, box [16, 16, 32, 32], is positive for each GT below alone.
    # `left` and `right` are mirror images about x = 24: exactly equal IoU (0.5625), so the
    # lower GT index wins in either order; `big` (IoU 0.64) beats `left`, `left` beats `bigger`
    # (0.529) in either order.
    anchors = grid(7, 7)
    left, right = [17.0, 18.0, 29.0, 30.0], [19.0, 18.0, 31.0, 30.0]
    big, bigger = [14.0, 14.0, 34.0, 34.0], [13.0, 13.0, 35.0, 35.0]
    ious = ops.box_iou(anchors[24:25], torch.tensor([left, right, big, bigger]), backend="reference")[0]
    assert ious[0] == ious[1] and ious[2] > ious[0] > ious[3]
    for anchors_, sizes in layouts(anchors):
        for box in (left, right, big, bigger):  # each alone claims anchor 24
            assert call(backend, anchors_, [box], 9, level_sizes=sizes)[1][24] == 0
        for gts, winner in (([left, right], 0), ([right, left], 0), ([left, big], 1), ([big, left], 0),
                            ([left, bigger], 0), ([bigger, left], 1), ([bigger, right, left], 1)):
            _, a, iou = call(backend, anchors_, gts, 9, level_sizes=sizes)
            assert a[24] == winner, gts
            assert iou[24] == ops.box_iou(anchors[24:25], torch.tensor([gts[winner]]), backend="reference")[0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_candidate_gets_no_positive(backend):
    # One valid anchor in the image: the GT has one candidate, an undefined std, no positive.
    anchors = grid(4, 4)
    valid = torch.zeros(16, dtype=torch.bool)
    valid[5] = True
    for level_sizes in ([16], [8, 8], [5, 1, 10]):
        c, a, iou = call(backend, anchors, [[0.0, 0.0, 16.0, 16.0]], 9, valid=valid, level_sizes=level_sizes)
        assert (c[0] >= 0).sum() == 1 and 5 in c[0].tolist()
        assert a[5] == -1 and (a[~valid] == -2).all() and (iou == 0).all()
    # Three valid anchors (IoU 1, 1/3, 1/3): a std exists and the best one is positive.
    valid[6] = valid[9] = True
    _, a, _ = call(backend, anchors, [[0.0, 0.0, 16.0, 16.0]], 9, valid=valid)
    assert a[5] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_level_with_fewer_than_topk_valid_anchors(backend):
    anchors = torch.cat([grid(6, 6), grid(2, 2, stride=32.0, side=64.0)])
    valid = torch.ones(40, dtype=torch.bool)
    valid[36] = False  # level 1 keeps 3 valid anchors
    c, _, _ = call(backend, anchors, [[0.0, 0.0, 30.0, 30.0]], 9, valid=valid, level_sizes=[36, 4])
    assert (c[0, :9] >= 0).all() and (c[0, :9] < 36).all()
    assert sorted(c[0, 9:12].tolist()) == [37, 38, 39] and (c[0, 12:] == -1).all()
    # An empty level and a level of invalid anchors give no candidates at all.
    c, _, _ = call(backend, anchors, [[0.0, 0.0, 30.0, 30.0]], 4, valid=valid, level_sizes=[36, 0, 4])
    assert (c[0, 4:8] == -1).all() and (c[0, 8:11] >= 36).all() and c[0, 11] == -1


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_iou_can_be_positive(backend):
    # Point anchors (zero area) have IoU exactly 0 with everything: threshold 0, and 0 >= 0
    # makes every candidate whose centre is inside the GT positive, with IoU 0 (MMDetection
    # assigns these too).
    centres = grid(4, 4, side=0.0)
    c, a, iou = call(backend, centres, [[1.0, 1.0, 15.0, 15.0]], 4)
    assert (a == 0).nonzero().squeeze(1).tolist() == [5]  # only (8, 8) is inside
    assert iou[5] == 0 and iou.abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_gt_and_no_valid_anchor(backend):
    anchors = grid(5, 5)
    valid = torch.rand(1, 25, generator=torch.Generator().manual_seed(0)) < 0.5
    a, iou = ops.atss_assign(anchors, valid, [25], torch.zeros(1, 0, 4), torch.tensor([0]), backend=backend)
    assert torch.equal(a[0], torch.where(valid[0], -1, -2)) and (iou == 0).all()
    c = ops.topk_candidates(anchors, valid, [25], torch.zeros(1, 0, 4), torch.tensor([0]), backend=backend)
    assert c.shape == (1, 0, 9)
    # num_gt 0 with padding rows present
    a, _ = ops.atss_assign(anchors, valid, [25], torch.rand(1, 3, 4) * 8, torch.tensor([0]), backend=backend)
    assert torch.equal(a[0], torch.where(valid[0], -1, -2))
    # no valid anchor at all
    none = torch.zeros(2, 25, dtype=torch.bool)
    gt = torch.tensor([[[0.0, 0.0, 20.0, 20.0]]]).expand(2, 1, 4)
    a, iou = ops.atss_assign(anchors, none, [25], gt, torch.tensor([1, 1]), backend=backend)
    assert (a == -2).all() and (iou == 0).all()
    c = ops.topk_candidates(anchors, none, [25], gt, torch.tensor([1, 1]), backend=backend)
    assert (c == -1).all()
    # an empty batch
    a, iou = ops.atss_assign(anchors, none[:0], [25], gt[:0], torch.tensor([], dtype=torch.int64), backend=backend)
    assert a.shape == (0, 25) and iou.shape == (0, 25)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_rows_are_ignored(backend):
    anchors = grid(6, 6)
    gt = torch.tensor([[[0.0, 0.0, 24.0, 24.0], [float("nan"), 0.0, 1.0, float("inf")]]])
    c, a, _ = None, None, None
    c = ops.topk_candidates(anchors, torch.ones(1, 36, dtype=torch.bool), [36], gt, torch.tensor([1]), backend=backend)
    assert (c[0, 1] == -1).all() and (c[0, 0] >= 0).all()
    a, _ = ops.atss_assign(anchors, torch.ones(1, 36, dtype=torch.bool), [36], gt, torch.tensor([1]), backend=backend)
    a1, _ = ops.atss_assign(anchors, torch.ones(1, 36, dtype=torch.bool), [36], gt[:, :1], torch.tensor([1]),
                            backend=backend)
    assert torch.equal(a, a1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_holes_in_valid_mask_on_a_grid(backend):
    # The 3 x 3 block around the GT centre is invalid: the nearest valid anchors lie beyond it.
    anchors = grid(9, 9)
    valid = torch.ones(9, 9, dtype=torch.bool)
    valid[3:6, 3:6] = False
    gt = [[28.0, 28.0, 36.0, 36.0]]  # centre (32, 32) = anchor (4, 4)
    c, a, _ = call(backend, anchors, gt, 9, valid=valid)
    d = ((anchors[:, 0] + anchors[:, 2]) / 2 - 32) ** 2 + ((anchors[:, 1] + anchors[:, 3]) / 2 - 32) ** 2
    d[~valid.reshape(-1)] = float("inf")
    expect = sorted(range(81), key=lambda i: (float(d[i]), i))[:9]
    assert c[0].tolist() == expect
    assert (a[~valid.reshape(-1)] == -2).all()


def outside_tie_scene() -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """An 8 x 8 grid (stride 8) and a GT centred (44, 44), midway between columns 5, 6 and rows 5, 6,
    with two valid anchors: (3, 3), index 27, and (5, 2), index 21, both at distance sqrt(800).
    The window search reaches (3, 3) first (window of radius 2 around (5, 5), clipped at the
    bottom-right corner) and then its bound on the anchors outside equals the k-th distance
    exactly: stopping there (>= instead of >) would miss the tie at the lower index 21."""
    valid = torch.zeros(8, 8, dtype=torch.bool)
    valid[3, 3] = True
    valid[2, 5] = True
    return grid(8, 8), valid, [[40.0, 40.0, 48.0, 48.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_outside_tie_at_the_window_bound_goes_to_the_lower_index(backend):
    anchors, valid, gt = outside_tie_scene()
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    d = ((centres - 44.0) ** 2).sum(1)
    assert float(d[27]) == float(d[21]) == 800.0  # the tie is real
    for anchors_, sizes in layouts(anchors):
        valid_ = torch.cat([valid.reshape(-1), torch.zeros(anchors_.shape[0] - 64, dtype=torch.bool)])
        c, _, _ = call(backend, anchors_, gt, 1, valid=valid_, level_sizes=sizes)
        assert c[0].tolist() == [21], sizes
        c, _, _ = call(backend, anchors_, gt, 2, valid=valid_, level_sizes=sizes)
        assert c[0].tolist() == [21, 27], sizes


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_row_and_one_column_grids(backend):
    for anchors in (grid(10, 1), grid(1, 10)):
        c, _, _ = call(backend, anchors, [[20.0, 0.0, 40.0, 30.0]], 3)
        d = ((anchors[:, 0] + anchors[:, 2]) / 2 - 30) ** 2 + ((anchors[:, 1] + anchors[:, 3]) / 2 - 15) ** 2
        assert c[0].tolist() == sorted(range(10), key=lambda i: (float(d[i]), i))[:3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_iou_values(backend):
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [5.0, 0.0, 15.0, 10.0]])
    iou = ops.box_iou(a, b, backend=backend)
    expect = torch.tensor([[1.0, 0.0, 50 / 150], [25 / 175, 0.0, 50 / 150], [0.0, 0.0, 0.0]])
    assert torch.allclose(iou, expect)
    batched = ops.box_iou(torch.stack([a, b]), torch.stack([b, a]), backend=backend)
    assert batched.shape == (2, 3, 3)
    assert torch.equal(batched[0], iou) and torch.equal(batched[1], ops.box_iou(b, a, backend=backend))
    assert ops.box_iou(a[:0], b, backend=backend).shape == (0, 3)
