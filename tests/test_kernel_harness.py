"""The CUDA kernels' bodies and launch configurations, run on the CPU (csrc/harness).

The harness is built here with AddressSanitizer and UBSan and runs every block and every
thread of each launch the CUDA launchers make (tails included), barrier phases in shuffled
thread orders, shared memory and every buffer allocated at exactly its size. Its outputs must
equal the CPU kernels' bit for bit, on the hand-built and random scenes of the op tests, with
and without geometry, for several shuffle seeds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from atss_cli import ops
from atss_cli.ops import scenes

pytestmark = pytest.mark.skipif(not ops.extension.available(), reason=ops.extension.reason())

CSRC = Path(__file__).resolve().parents[1] / "csrc"
MAGIC = 0x41545353484E5331
SEEDS = (1, 2, 3)
FLAGS = ["-std=c++20", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-ffp-contract=off", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found: the kernel harness needs it")
    exe = tmp_path_factory.mktemp("harness") / "harness"
    res = subprocess.run([cxx, *FLAGS, "-I", str(CSRC), str(CSRC / "harness" / "harness.cc"), "-o", str(exe)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-4000:]
    return exe


@dataclass
class Case:
    name: str
    anchors: torch.Tensor
    valid: torch.Tensor
    level_sizes: list[int]
    gt_boxes: torch.Tensor
    num_gt: torch.Tensor
    topk: int
    geometry: ops.GridGeometry | None = None


def scene_case(name: str, scene: scenes.Scene, topk: int, geometry: bool) -> Case:
    geo = scenes.scene_geometry(scene) if geometry else None
    return Case(name, scene.anchors, scene.valid, list(scene.level_sizes), scene.gt_boxes, scene.num_gt, topk, geo)


def grid(w: int, h: int, stride: float = 8.0, side: float = 16.0) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32) * stride,
                            torch.arange(w, dtype=torch.float32) * stride, indexing="ij")
    cx, cy = xs.reshape(-1), ys.reshape(-1)
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def hand_cases() -> list[Case]:
    """Ties, thresholds, broken grids, empty levels, no GT, no valid anchor, clamped num_gt."""
    out = []
    g44 = grid(4, 4)
    tie_gts = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [9.0, 8.0, 9.0, 8.0], [0.0, 0.0, 24.0, 24.0],
                             [4.0, 4.0, 20.0, 20.0], [8.0, 0.0, 16.0, 24.0]]])
    broken = torch.cat([g44, torch.tensor([[1000.0, -1000.0, 1016.0, -984.0]])])
    for topk in (1, 2, 3, 4, 9):
        out.append(Case(f"ties-grid-k{topk}", g44, torch.ones(1, 16, dtype=torch.bool), [16], tie_gts,
                        torch.tensor([5]), topk,
                        ops.GridGeometry(((4, 4),), (8,), torch.tensor([[32, 32]]))))
        out.append(Case(f"ties-broken-k{topk}", broken, torch.ones(1, 17, dtype=torch.bool), [17], tie_gts,
                        torch.tensor([5]), topk))
    # Two levels: a grid and an empty level and a one-row and a one-column grid.
    row, col = grid(7, 1), grid(1, 6, stride=16.0)
    anchors = torch.cat([g44, row, col])
    sizes = [16, 0, 7, 6]
    valid = torch.ones(3, anchors.shape[0], dtype=torch.bool)
    valid[1, 3:20] = False  # holes
    valid[2] = False  # no valid anchor
    gts = torch.tensor([[[0.0, 0.0, 30.0, 30.0], [10.0, -5.0, 40.0, 5.0], [5.0, 5.0, 6.0, 6.0]]] * 3)
    out.append(Case("levels-empty-row-col", anchors, valid, sizes, gts, torch.tensor([3, 2, 3]), 4))
    out.append(Case("num-gt-clamped", anchors, valid, sizes, gts, torch.tensor([99, -5, 1]), 3))
    out.append(Case("no-gt", anchors, valid, sizes, gts[:, :0], torch.zeros(3, dtype=torch.int64), 9))
    out.append(Case("no-gt-rows", anchors, valid, sizes, gts, torch.zeros(3, dtype=torch.int64), 9))
    # Equal IoUs at the threshold, a GT with a single candidate, zero-IoU positives.
    g = grid(6, 6, stride=10.0, side=10.0)
    gts = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [12.0, 12.0, 13.0, 13.0], [0.0, 0.0, 50.0, 50.0],
                         [10.0, 10.0, 30.0, 30.0], [45.0, 45.0, 55.0, 55.0]]])
    one = torch.zeros(1, 36, dtype=torch.bool)
    one[0, 7] = True
    out.append(Case("thresholds", g, torch.ones(1, 36, dtype=torch.bool), [36], gts, torch.tensor([5]), 4,
                    ops.GridGeometry(((6, 6),), (10,), torch.tensor([[60, 60]]))))
    out.append(Case("single-valid", g, one, [36], gts, torch.tensor([5]), 4))
    # The window's bound equals the k-th distance and the tie outside has the lower index
    # (tests/test_ops_cases.py, outside_tie_scene): the search must grow once more.
    g88 = grid(8, 8)
    tie_valid = torch.zeros(1, 64, dtype=torch.bool)
    tie_valid[0, 27] = tie_valid[0, 21] = True
    for topk in (1, 2):
        out.append(Case(f"outside-tie-at-bound-k{topk}", g88, tie_valid, [64],
                        torch.tensor([[[40.0, 40.0, 48.0, 48.0]]]), torch.tensor([1]), topk))
    # 12 levels: more than a block has teams (8), so teams take turns; one level no grid.
    shapes = [(5, 7), (4, 4), (1, 9), (6, 1), (3, 5), (2, 2), (7, 3), (1, 1), (4, 6), (2, 5), (3, 3), (5, 2)]
    strides = [4, 8, 8, 16, 8, 32, 8, 64, 8, 16, 16, 8]
    levels = [grid(w, h, stride=float(st), side=2.0 * st) for (h, w), st in zip(shapes, strides)]
    anchors = torch.cat(levels)
    sizes = [h * w for h, w in shapes]
    extent = torch.tensor([[20, 28], [8, 8], [0, 40]])
    geo = ops.GridGeometry(tuple(shapes), tuple(strides), extent)
    valid = ops.geometry.valid_rectangles(geo)
    g = torch.Generator().manual_seed(12)
    xy = torch.rand(3, 6, 2, generator=g) * 40
    gts = torch.cat([xy, xy + 1 + torch.rand(3, 6, 2, generator=g) * 20], -1)
    for topk in (2, 5):
        out.append(Case(f"twelve-levels-k{topk}", anchors, valid, sizes, gts, torch.tensor([6, 4, 5]), topk, geo))
    jittered = anchors.clone()
    jittered[sizes[0] + 1] += 0.5  # level 1 is no grid
    out.append(Case("twelve-levels-one-not-grid", jittered, valid, sizes, gts, torch.tensor([6, 4, 5]), 3))
    return out


def random_cases() -> list[Case]:
    """The op tests' random scenes (tests/test_ops_random.py): grids with and without holes
    (geometry where the flags are the rectangles), other topk, non-grid anchors, extreme boxes,
    sparse masks."""
    out = []
    for seed in range(20):
        s = scenes.random_scene(seed)
        topk = (9, 1, 4, 16, 64)[seed % 5]
        out.append(scene_case(f"random-{seed}-k{topk}", s, topk, geometry=seed % 4 < 2))
    for seed, mode in ((3, "jitter"), (4, "permute")):
        base = scenes.make_scene(500 + seed, [(64 + 40 * seed, 96 + 60 * seed)] * 2, [17, 9], holes=0.3)
        out.append(scene_case(f"{mode}-{seed}", scenes.perturbed(base, seed, mode), 9, geometry=False))
    base = scenes.make_scene(3000, [(300, 400), (120, 200)], [30, 12])
    for kind, gt in (("far", base.gt_boxes * 1000 - 5e5), ("inverted", base.gt_boxes[..., [2, 3, 0, 1]]),
                     ("on-grid", torch.round(base.gt_boxes / 8) * 8),
                     ("points", torch.round(base.gt_boxes[..., :2] / 4).repeat(1, 1, 2) * 4)):
        s = scenes.Scene(base.anchors, base.valid, base.level_sizes, gt, base.num_gt, base.image_sizes)
        out.append(scene_case(f"extreme-{kind}", s, 9, geometry=True))
    s = scenes.make_scene(91, [(640, 800), (200, 900)], [30, 12])
    sparse = s.valid & (torch.rand(s.valid.shape, generator=torch.Generator().manual_seed(1)) < 0.01)
    out.append(scene_case("sparse", scenes.Scene(s.anchors, sparse, s.level_sizes, s.gt_boxes, s.num_gt,
                                                 s.image_sizes), 9, geometry=False))
    return out


def big_case() -> Case:
    """B = 16, M up to 3000 (num_gt differs per image), small images: the launch sizes of a
    big batch at a cost ASan can afford."""
    num_gt = [3000, 0, 5, 1] + [40] * 12
    s = scenes.make_scene(300, [(64, 96)] * 16, num_gt)
    return scene_case("big-b16-m3000", s, 9, geometry=True)


def write_scene(case: Case, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    b, m = case.gt_boxes.shape[:2]
    n, l = case.anchors.shape[0], len(case.level_sizes)
    # box_iou inputs: the first anchors against the GTs, per image.
    boxes1 = case.anchors[None, :min(n, 300)].expand(b, -1, -1).contiguous()
    boxes2 = case.gt_boxes[:, :min(m, 40)].contiguous()
    geo = case.geometry
    header = [MAGIC, b, m, n, l, case.topk, int(geo is not None), boxes1.shape[1], boxes2.shape[1]]
    parts = [np.array(header, dtype=np.int64), np.array(case.level_sizes, dtype=np.int64),
             case.anchors.numpy().astype(np.float32), case.valid.numpy().astype(np.uint8),
             case.gt_boxes.numpy().astype(np.float32), case.num_gt.numpy().astype(np.int64)]
    if geo is not None:
        grid_hw, strides, extent = geo.kernel_args()
        parts += [np.array(grid_hw, dtype=np.int64), np.array(strides, dtype=np.int64),
                  extent.numpy().astype(np.int64)]
    parts += [boxes1.numpy(), boxes2.numpy()]
    path.write_bytes(b"".join(np.ascontiguousarray(p).tobytes() for p in parts))
    return boxes1, boxes2


def run_harness(exe: Path, case: Case, tmp: Path, seed: int) -> dict:
    scene_path, out_path = tmp / f"{case.name}.scene", tmp / f"{case.name}.{seed}.out"
    boxes1, boxes2 = write_scene(case, scene_path)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    res = subprocess.run([str(exe), str(scene_path), str(out_path), str(seed)], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, f"{case.name} seed {seed}:\n{res.stderr[-6000:]}"
    data = out_path.read_bytes()
    b, m = case.gt_boxes.shape[:2]
    n, l = case.anchors.shape[0], len(case.level_sizes)
    pos = 0

    def take(dtype, count, shape):
        nonlocal pos
        size = np.dtype(dtype).itemsize * count
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=pos).copy()
        pos += size
        return torch.from_numpy(arr).reshape(shape)

    out = {"box_iou": take(np.float32, b * boxes1.shape[1] * boxes2.shape[1], (b, boxes1.shape[1], boxes2.shape[1])),
           "table": take(np.int64, l * 4, (l, 4)), "counts": take(np.int64, b * l, (b, l))}
    for tag in ("", "geo_") if case.geometry is not None else ("",):
        out[tag + "cand"] = take(np.int64, b * m * l * case.topk, (b, m, l * case.topk))
        out[tag + "assigned"] = take(np.int64, b * n, (b, n))
        out[tag + "iou"] = take(np.float32, b * n, (b, n))
    assert pos == len(data), (pos, len(data))
    out["boxes"] = (boxes1, boxes2)
    return out


def expected_table(anchors: torch.Tensor, level_sizes: list[int]) -> torch.Tensor:
    """detect_grids_cpu in Python: start, size, width, is_grid per level."""
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    rows, start = [], 0
    for size in level_sizes:
        w, ok = 0, 0
        if size:
            differs = (cy[start:start + size] != cy[start]).nonzero()
            w = int(differs[0]) if differs.numel() else size
            if size % w == 0:
                gx = cx[start:start + size].reshape(-1, w)
                gy = cy[start:start + size].reshape(-1, w)
                ok = int(bool((gx == gx[:1]).all()) and bool((gy == gy[:, :1]).all())
                         and bool((gx[0, 1:] > gx[0, :-1]).all()) and bool((gy[1:, 0] > gy[:-1, 0]).all()))
        rows.append([start, size, w, ok])
        start += size
    return torch.tensor(rows, dtype=torch.int64)


def check_case(exe: Path, case: Case, tmp: Path, seeds=SEEDS) -> None:
    a, v, sizes, g, ng, k = case.anchors, case.valid, case.level_sizes, case.gt_boxes, case.num_gt, case.topk
    cand = torch.ops.atss.topk_candidates(a, v, sizes, g, ng, k)
    assigned, iou = torch.ops.atss.atss_assign(a, v, sizes, g, ng, k)
    table = expected_table(a, sizes)
    counts = torch.stack([x.sum(1) for x in v.split(sizes, dim=1)], 1) if v.shape[0] else torch.zeros(0, len(sizes))
    for seed in seeds:
        got = run_harness(exe, case, tmp, seed)
        where = f"{case.name} seed {seed}"
        assert torch.equal(got["box_iou"], torch.ops.atss.box_iou(*got["boxes"])), where
        assert torch.equal(got["table"], table), (where, got["table"], table)
        assert torch.equal(got["counts"], counts.to(torch.int64)), where
        for tag in ("", "geo_") if case.geometry is not None else ("",):
            assert torch.equal(got[tag + "cand"], cand), (
                f"{where} {tag}cand differs at {(got[tag + 'cand'] != cand).nonzero()[:5].tolist()}")
            assert torch.equal(got[tag + "assigned"], assigned), (
                f"{where} {tag}assigned differs at {(got[tag + 'assigned'] != assigned).nonzero()[:5].tolist()}")
            assert torch.equal(got[tag + "iou"].view(torch.int32), iou.view(torch.int32)), f"{where} {tag}iou"


@pytest.mark.parametrize("case", hand_cases(), ids=lambda c: c.name)
def test_hand_built_scenes(harness, tmp_path, case):
    check_case(harness, case, tmp_path)


@pytest.mark.parametrize("case", random_cases(), ids=lambda c: c.name)
def test_random_scenes(harness, tmp_path, case):
    check_case(harness, case, tmp_path)


def test_big_batch(harness, tmp_path):
    check_case(harness, big_case(), tmp_path, seeds=(7,))



# The CUDA half (`pytest -m cuda tests/test_kernel_harness.py`): the same scenes through the
# real launches on a GPU, with and without geometry, against the CPU kernels.
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.skipif(not ops.extension.has_cuda(), reason="the extension was built without CUDA")
@pytest.mark.parametrize("case", [*hand_cases(), *random_cases(), big_case()], ids=lambda c: c.name)
def test_cuda_equals_cpu_on_harness_scenes(case):
    cpu = (case.anchors, case.valid, case.level_sizes, case.gt_boxes, case.num_gt, case.topk)
    gpu = tuple(t.cuda() if isinstance(t, torch.Tensor) else t for t in cpu)
    geos = [None]
    if case.geometry is not None:
        g = case.geometry
        geos.append(ops.GridGeometry(g.level_shapes, g.strides, g.extent.cuda()))
    want_c = torch.ops.atss.topk_candidates(*cpu)
    want_a, want_i = torch.ops.atss.atss_assign(*cpu)
    for geo in geos:
        extra = () if geo is None else geo.kernel_args()
        got_c = torch.ops.atss.topk_candidates(*gpu, *extra).cpu()
        got_a, got_i = (t.cpu() for t in torch.ops.atss.atss_assign(*gpu, *extra))
        tag = f"{case.name} geometry={geo is not None}"
        assert torch.equal(got_c, want_c), f"{tag}: cand differs at {(got_c != want_c).nonzero()[:5].tolist()}"
        assert torch.equal(got_a, want_a), f"{tag}: assigned differs at {(got_a != want_a).nonzero()[:5].tolist()}"
        assert torch.equal(got_i.view(torch.int32), want_i.view(torch.int32)), tag
    b1 = case.anchors[None, :300].expand(case.gt_boxes.shape[0], -1, -1).contiguous()
    b2 = case.gt_boxes[:, :40].contiguous()
    assert torch.equal(torch.ops.atss.box_iou(b1.cuda(), b2.cuda()).cpu(), torch.ops.atss.box_iou(b1, b2))
