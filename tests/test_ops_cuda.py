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
