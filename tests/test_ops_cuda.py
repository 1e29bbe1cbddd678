"""CPU == CUDA, bit for bit, wherever a GPU and the CUDA kernels are present (skipped otherwise).

The kernels share their per-thread arithmetic (csrc/common/*.h, CUDA built with -fmad=false),
and step 6 is an order-independent maximum, so no tolerance is needed.
"""

from __future__ import annotations

import pytest
import torch

from atss_cli import ops
from atss_cli.ops import scenes

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    pytest.mark.skipif(not ops.extension.has_cuda(), reason="the extension was built without CUDA: "
                       + (ops.extension.reason() or "no nvcc at build time")),
]


def random_scene(seed: int) -> scenes.Scene:
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 5, (1,), generator=g))
    sizes = [(int(torch.randint(32, 801, (1,), generator=g)), int(torch.randint(32, 1334, (1,), generator=g)))
             for _ in range(b)]
    num_gt = [int(torch.randint(0, 301, (1,), generator=g)) for _ in range(b)]
    return scenes.make_scene(seed, sizes, num_gt, holes=(0.0, 0.3)[seed % 2])


def assert_cpu_equals_cuda(scene: scenes.Scene, topk: int = 9, with_reference: bool = False):
    cpu_args = scene.args()
    cuda_args = scene.to("cuda").args()
    for op in (ops.topk_candidates, ops.atss_assign):
        cpu = op(*cpu_args, topk, backend="extension")
        gpu = op(*cuda_args, topk, backend="extension")
        cpu, gpu = (cpu, gpu) if isinstance(cpu, tuple) else ((cpu,), (gpu,))
        for c, g in zip(cpu, gpu):
            assert g.device.type == "cuda"
            assert torch.equal(c, g.cpu()), f"{op.__name__}: differs at {(c != g.cpu()).nonzero()[:5].tolist()}"
        if with_reference:
            ref = op(*cuda_args, topk, backend="reference")
            ref = ref if isinstance(ref, tuple) else (ref,)
            for c, r in zip(cpu, ref):
                assert torch.equal(c, r.cpu())


@pytest.mark.parametrize("chunk", range(4))
def test_cpu_equals_cuda_random(chunk):
    for seed in range(chunk * 25, chunk * 25 + 25):
        assert_cpu_equals_cuda(random_scene(seed), with_reference=seed % 5 == 0)


@pytest.mark.parametrize("topk", [1, 4, 16, 64])
def test_cpu_equals_cuda_topk(topk):
    assert_cpu_equals_cuda(random_scene(300 + topk), topk)


def test_cpu_equals_cuda_non_grid_and_sparse():
    base = scenes.make_scene(5, [(400, 600), (300, 300)], [60, 30], holes=0.5)
    g = torch.Generator().manual_seed(0)
    jitter = base.anchors + torch.randn(base.anchors.shape, generator=g)
    assert_cpu_equals_cuda(scenes.Scene(jitter, base.valid, base.level_sizes, base.gt_boxes, base.num_gt,
                                        base.image_sizes))
    sparse = base.valid & (torch.rand(base.valid.shape, generator=g) < 0.01)
    assert_cpu_equals_cuda(scenes.Scene(base.anchors, sparse, base.level_sizes, base.gt_boxes, base.num_gt,
                                        base.image_sizes))


def test_cuda_edge_cases():
    s = scenes.make_scene(1, [(128, 128), (64, 96)], [0, 0])
    assert_cpu_equals_cuda(s)  # no GT
    none = scenes.Scene(s.anchors, torch.zeros_like(s.valid), s.level_sizes, torch.rand(2, 3, 4) * 50,
                        torch.tensor([3, 1]), s.image_sizes)
    assert_cpu_equals_cuda(none)  # no valid anchor
    big = scenes.make_scene(2, [(800, 1333)] * 2, [1000, 3])
    assert_cpu_equals_cuda(big)


def test_cuda_box_iou_and_validate_false():
    s = scenes.make_scene(3, [(800, 1333)] * 2, [100, 40]).to("cuda")
    a = s.anchors[None].expand(2, -1, -1).contiguous()
    assert torch.equal(ops.box_iou(a, s.gt_boxes).cpu(), ops.box_iou(a.cpu(), s.gt_boxes.cpu()))
    assert torch.equal(ops.box_iou(s.anchors, s.gt_boxes[0]).cpu(),
                       ops.box_iou(s.anchors.cpu(), s.gt_boxes[0].cpu(), backend="reference"))
    fast = ops.atss_assign(*s.args(), validate=False)
    slow = ops.atss_assign(*s.args())
    assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_cuda_opcheck():
    from torch.library import opcheck

    s = scenes.make_scene(4, [(96, 128), (64, 64)], [5, 2]).to("cuda")
    opcheck(torch.ops.atss.box_iou.default, (s.anchors[:40], s.gt_boxes[0]))
    for op in (torch.ops.atss.topk_candidates.default, torch.ops.atss.atss_assign.default):
        opcheck(op, (s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9))


def test_cuda_bad_device_mix():
    s = scenes.make_scene(4, [(96, 128)], [5])
    from atss_cli.errors import AtssError

    with pytest.raises(AtssError, match="anchors must be on the device of gt_boxes"):
        ops.atss_assign(s.anchors, s.valid.cuda(), s.level_sizes, s.gt_boxes.cuda(), s.num_gt.cuda())


# --- the geometry path (issue 11, deliverable 4): one pass, no host sync, capturable ---------------

def grid_scene(seed: int) -> tuple[scenes.Scene, object]:
    """A random grid scene (rectangle valid flags) and its ops.GridGeometry (on the CPU)."""
    from atss_cli.benchmarks.assigner import grid_geometry

    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 6, (1,), generator=g))
    sizes = [(int(torch.randint(32, 801, (1,), generator=g)), int(torch.randint(32, 1334, (1,), generator=g)))
             for _ in range(b)]
    num_gt = [int(torch.randint(0, 201, (1,), generator=g)) for _ in range(b)]
    scene = scenes.make_scene(seed, sizes, num_gt)
    geo, why = grid_geometry(scene)
    assert geo is not None, why
    return scene, geo


def on_cuda(geo):
    return ops.GridGeometry(level_shapes=geo.level_shapes, strides=geo.strides, extent=geo.extent.cuda())


@pytest.mark.parametrize("chunk", range(2))
def test_cpu_equals_cuda_with_and_without_geometry(chunk):
    for seed in range(500 + chunk * 15, 500 + chunk * 15 + 15):
        scene, geo = grid_scene(seed)
        cuda_scene, cuda_geo = scene.to("cuda"), on_cuda(geo)
        for op in (ops.topk_candidates, ops.atss_assign):
            want = op(*scene.args(), 9, backend="extension")
            want = want if isinstance(want, tuple) else (want,)
            for label, got in (
                    ("cpu +geometry", op(*scene.args(), 9, backend="extension", geometry=geo)),
                    ("cuda", op(*cuda_scene.args(), 9, backend="extension")),
                    ("cuda +geometry", op(*cuda_scene.args(), 9, backend="extension", geometry=cuda_geo)),
                    ("cuda +geometry validate=False",
                     op(*cuda_scene.args(), 9, backend="extension", geometry=cuda_geo, validate=False))):
                got = got if isinstance(got, tuple) else (got,)
                for w, x in zip(want, got):
                    assert torch.equal(w, x.cpu()), f"seed {seed} {op.__name__} {label}: differs from the CPU"


def test_no_host_sync_with_geometry_and_validate_false():
    scene, geo = grid_scene(601)
    s, cuda_geo = scene.to("cuda"), on_cuda(geo)
    ops.atss_assign(*s.args(), validate=False, geometry=cuda_geo)  # warm-up: loading, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        assigned, iou = ops.atss_assign(*s.args(), validate=False, geometry=cuda_geo)
        cand = ops.topk_candidates(*s.args(), validate=False, geometry=cuda_geo)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    want = ops.atss_assign(*scene.args(), backend="extension")
    assert torch.equal(assigned.cpu(), want[0]) and torch.equal(iou.cpu(), want[1])
    assert torch.equal(cand.cpu(), ops.topk_candidates(*scene.args(), backend="extension"))


def test_cuda_graph_capture_and_replay_equal_eager():
    scene, geo = grid_scene(602)
    other = scenes.make_scene(603, scene.image_sizes, [int(n) for n in scene.num_gt])  # same shapes, new boxes
    s, cuda_geo = scene.to("cuda"), on_cuda(geo)
    gt, num_gt = s.gt_boxes.clone(), s.num_gt.clone()  # the graph's static inputs

    def call():
        return ops.atss_assign(s.anchors, s.valid, s.level_sizes, gt, num_gt, validate=False, geometry=cuda_geo)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    graph.replay()
    torch.cuda.synchronize()
    eager = ops.atss_assign(*scene.args(), backend="extension")
    assert torch.equal(out[0].cpu(), eager[0]) and torch.equal(out[1].cpu(), eager[1])
    # New data in the static inputs: the replay computes the new assignment.
    gt.copy_(other.gt_boxes.cuda())
    num_gt.copy_(other.num_gt.cuda())
    graph.replay()
    torch.cuda.synchronize()
    eager = ops.atss_assign(*other.args(), backend="extension")
    assert torch.equal(out[0].cpu(), eager[0]) and torch.equal(out[1].cpu(), eager[1])


def test_geometry_call_is_at_most_three_launches():
    """Deliverable 4: with geometry, one call is at most three launches, zeroing included."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    scene, geo = grid_scene(604)
    s, cuda_geo = scene.to("cuda"), on_cuda(geo)
    ops.atss_assign(*s.args(), validate=False, geometry=cuda_geo)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ops.atss_assign(*s.args(), validate=False, geometry=cuda_geo)
        torch.cuda.synchronize()
    launches = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    assert 0 < len(launches) <= 3, launches
