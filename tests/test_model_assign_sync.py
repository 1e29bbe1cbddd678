"""The assignment path of a training step reads nothing back from the device (issue 11, item 3).

`model.assign(sizes, targets, device)` (anchors, valid flags, target padding, the op) has no
Python branch on a tensor value: `torch.compile(fullgraph=True)` traces it whole and gives the
eager result. On a GPU: it runs under `torch.cuda.set_sync_debug_mode("error")`, copies nothing
from pageable memory, and captures in a CUDA graph whose replay gives the eager result. Bad host
targets fail with one line before the path starts.
"""

from __future__ import annotations

import pytest
import torch

from compile_check import eager_and_compiled

from atss_cli import ops
from atss_cli.errors import AtssError
from atss_cli.model import build_atss_preset

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_atss_preset("tiny", NUM_CLASSES)


def sizes_of(h: int, w: int, levels: int = 5) -> list[tuple[int, int]]:
    """Feature-map sizes of a padded h x w batch (strides 8..128, each level half the last)."""
    out, fh, fw = [], -(-h // 8), -(-w // 8)
    for _ in range(levels):
        out.append((fh, fw))
        fh, fw = -(-fh // 2), -(-fw // 2)
    return out


def batch(seed: int, shapes: list[tuple[int, int]], counts: list[int], device="cpu") -> list[dict]:
    """Targets of random boxes inside each image (h, w), `counts[i]` of them in image i."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), n in zip(shapes, counts):
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6]) + 4
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        out.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                    "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device),
                    "img_shape": (h, w)})
    return out


# (padded batch size, per-image shapes, GT counts): images smaller than the batch, an image
# without GT, a level smaller than topk.
CASES = [
    ((96, 128), [(96, 128), (70, 100)], [3, 0]),
    ((160, 96), [(150, 90), (160, 64), (100, 96)], [5, 1, 7]),
]


def _assert_same(got, want) -> None:
    names = ("anchors", "assigned", "gt_boxes", "gt_labels")
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert torch.equal(a.cpu(), b.cpu()), f"{name}: {int((a.cpu() != b.cpu()).sum())} entries differ"


def test_assign_compiles_whole_and_matches_eager(model):
    """fullgraph=True fails on any graph break: a .item(), .tolist(), size-less nonzero() or a
    Python branch on a tensor value anywhere in anchors, valid flags, padding or the op (the
    kernels, through their fake kernels). The reference backend is excluded: it works per image
    on boolean-indexed valid anchors, data-dependent sizes by design."""
    if not ops.extension.available():
        pytest.skip(f"the compiled kernels are not built: {ops.extension.reason()}")
    torch._dynamo.reset()
    model.assign_backend = "extension"
    try:
        compiled = torch.compile(model.assign, fullgraph=True, dynamic=False)
        for seed, ((h, w), shapes, counts) in enumerate(CASES):
            targets = batch(seed, shapes, counts)
            want = model.assign(sizes_of(h, w), targets, "cpu")
            got = compiled(sizes_of(h, w), targets, "cpu")
            _assert_same(got, want)
            assert (want[1] >= 0).any(), "the case has no positive: it would test nothing"
    finally:
        model.assign_backend = "auto"
        torch._dynamo.reset()


def test_losses_compile_whole_forward_and_backward(model):
    """The losses have no data-dependent step either (masks, not boolean indexing or nonzero):
    AOTAutograd traces forward and backward in one graph each and gives the eager values."""
    from atss_cli.model.loss import atss_losses

    (h, w), shapes, counts = CASES[1]
    sizes = sizes_of(h, w)
    assignment = model.assign(sizes, batch(1, shapes, counts), "cpu")
    g = torch.Generator().manual_seed(0)

    def run(fn):
        outputs = [[torch.randn(len(shapes), k, a, b, generator=g.manual_seed(k)).requires_grad_()
                    for a, b in sizes] for k in (NUM_CLASSES, 4, 1)]
        losses = fn(*outputs, *assignment)
        sum(losses.values()).backward()
        return losses, [o.grad for level in outputs for o in level]

    (want, want_grads), (got, got_grads) = eager_and_compiled(run, atss_losses)
    assert want["loss_bbox"] > 0, "the case has no positive: it would test nothing"
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-6, atol=0)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-9)


def test_valid_flags_are_the_rectangles_of_the_extents(model):
    """The device-side valid flags equal the per-level rectangles of SPEC.md section 2."""
    gen = model.anchor_generator
    sizes = sizes_of(200, 136)
    shapes = [(200, 136), (37, 129), (1, 1), (161, 40)]
    extent = gen.extents(shapes, "cpu")
    assert extent.tolist() == [[224, 160], [64, 160], [32, 32], [192, 64]]
    assert torch.equal(gen.extents(torch.tensor(shapes), "cpu"), extent)
    want = ops.geometry.valid_rectangles(
        ops.GridGeometry(level_shapes=tuple(sizes), strides=gen.strides, extent=extent))
    assert torch.equal(gen.valid_flags(sizes, shapes, "cpu"), want)
    assert torch.equal(gen.valid_flags(sizes, None, "cpu", extent=extent), want)


def test_the_model_keeps_its_geometry_promise(model):
    """`assign` passes ops.GridGeometry with validate=False; checked here, the promise holds
    (grid anchors, rectangle valid flags) and the op gives the same result without it."""
    from atss_cli.model.targets import pad_targets

    gen = model.anchor_generator
    for seed, ((h, w), shapes, counts) in enumerate(CASES):
        sizes = sizes_of(h, w)
        targets = batch(seed, shapes, counts)
        anchors, assigned, gt_boxes, _ = model.assign(sizes, targets, "cpu")
        extent = gen.extents(shapes, "cpu")
        valid = gen.valid_flags(sizes, shapes, "cpu")
        _, _, num_gt = pad_targets(targets, "cpu")
        geometry = ops.GridGeometry(level_shapes=tuple(sizes), strides=gen.strides, extent=extent)
        level_sizes = [a * b for a, b in sizes]
        with_geometry, _ = ops.atss_assign(anchors, valid, level_sizes, gt_boxes, num_gt, model.topk,
                                           validate=True, geometry=geometry)
        without, _ = ops.atss_assign(anchors, valid, level_sizes, gt_boxes, num_gt, model.topk)
        assert torch.equal(with_geometry, assigned) and torch.equal(without, assigned)


@pytest.mark.parametrize("target, message", [
    ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([3])}, "labels must be in 0..2"),
    ({"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([-1])}, "labels must be in 0..2"),
    ({"boxes": torch.tensor([[1.0, float("nan"), 9.0, 9.0]]), "labels": torch.tensor([0])}, "boxes must be finite"),
    ({"boxes": torch.zeros(2, 4), "labels": torch.tensor([0])}, "2 boxes but 1 labels"),
    ({"boxes": torch.zeros(2, 3), "labels": torch.tensor([0, 1])}, r"boxes must be \[M, 4\]"),
])
def test_bad_host_targets_fail_with_one_line_before_the_assignment(model, target, message, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the assignment ran on bad targets")

    monkeypatch.setattr(model, "assign", never)
    outputs = [[torch.zeros(1, k, 8, 8)] for k in (NUM_CLASSES, 4, 1)]
    with pytest.raises(AtssError, match=message) as info:
        model.loss_from_outputs(*outputs, [{**target, "img_shape": (64, 64)}])
    assert "\n" not in str(info.value) and str(info.value).startswith("target 0: ")


# ---- on a GPU ---------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _cuda_case(model, on_device: bool):
    if not ops.extension.has_cuda():
        pytest.fail(f"the atss extension has no CUDA kernels: {ops.extension.describe()}")
    model.to("cuda")
    (h, w), shapes, counts = CASES[1]
    targets = batch(1, shapes, counts, device="cuda" if on_device else "cpu")
    model.assign(sizes_of(h, w), targets, "cuda")  # first call: anchors cached, kernels loaded
    torch.cuda.synchronize()
    return sizes_of(h, w), targets


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("on_device", [False, True], ids=["host_targets", "device_targets"])
def test_assign_path_never_syncs(model, on_device):
    sizes, targets = _cuda_case(model, on_device)
    want = [t.cpu() for t in model.assign(sizes, targets, "cpu")]
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = model.assign(sizes, targets, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _assert_same(got, want)


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("on_device", [False, True], ids=["host_targets", "device_targets"])
def test_losses_and_backward_never_sync(model, on_device):
    """The losses read nothing back either (masks, not boolean indexing; host targets are
    checked on the host)."""
    sizes, targets = _cuda_case(model, on_device)
    g = torch.Generator(device="cuda").manual_seed(0)
    b = len(targets)
    outputs = [[torch.randn(b, k, h, w, device="cuda", generator=g).requires_grad_() for h, w in sizes]
               for k in (NUM_CLASSES, 4, 1)]
    model.loss_from_outputs(*outputs, targets)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = model.loss_from_outputs(*outputs, targets)
        sum(losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(v).item() for v in losses.values())


@cuda
@pytest.mark.cuda
def test_assign_path_copies_nothing_from_pageable_memory(model):
    from torch.profiler import ProfilerActivity, profile

    sizes, targets = _cuda_case(model, on_device=False)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.assign(sizes, targets, "cuda")
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    if not any("atss" in n.lower() or "kernel" in n.lower() for n in names):
        pytest.skip("the profiler recorded no CUDA activity on this machine")
    copies = [n for n in names if "Memcpy HtoD" in n]
    assert copies, "no host-to-device copy recorded: the targets must be uploaded"
    assert not [n for n in copies if "Pageable" in n], copies


@cuda
@pytest.mark.cuda
def test_assign_path_captures_in_a_cuda_graph(model):
    sizes, targets = _cuda_case(model, on_device=False)
    want = [t.clone() for t in model.assign(sizes, targets, "cuda")]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph's docs ask
        model.assign(sizes, targets, "cuda")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = model.assign(sizes, targets, "cuda")
    for _ in range(2):
        got[1].fill_(-7)  # the replay must write the result again
        graph.replay()
        torch.cuda.synchronize()
        _assert_same(got, want)
