"""The op layer: bad input gives one clear error naming the argument; opcheck on every op; the
fallback when the extension is missing; backend selection."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from atss_cli import ops
from atss_cli.errors import AtssError
from atss_cli.ops import scenes

needs_ext = pytest.mark.skipif(not ops.extension.available(), reason=ops.extension.reason())
BACKENDS = ["reference", pytest.param("extension", marks=needs_ext)]


@pytest.fixture(scope="module")
def scene():
    return scenes.make_scene(0, [(96, 128), (64, 64)], [5, 2])


def args_with(scene, **change):
    kw = dict(anchors=scene.anchors, valid=scene.valid, level_sizes=scene.level_sizes,
              gt_boxes=scene.gt_boxes, num_gt=scene.num_gt)
    kw.update(change)
    return kw


def bad_cases(scene):
    a, v, g, n = scene.anchors, scene.valid, scene.gt_boxes, scene.num_gt
    nan_gt = g.clone()
    nan_gt[1, 0, 2] = float("nan")
    inf_anchor = a.clone()
    inf_anchor[7, 1] = float("inf")
    return [
        ("anchors", dict(anchors=a.double()), "float32"),
        ("anchors", dict(anchors=a[:, :3]), "[N, 4]"),
        ("anchors", dict(anchors=a.numpy()), "torch.Tensor"),
        ("anchors", dict(anchors=inf_anchor), "inf"),
        ("valid", dict(valid=v.int()), "bool"),
        ("valid", dict(valid=v[:, :-1]), str(a.shape[0])),
        ("valid", dict(valid=v[:1]), "B=2"),
        ("gt_boxes", dict(gt_boxes=g[0]), "[B, M, 4]"),
        ("gt_boxes", dict(gt_boxes=g.half()), "float32"),
        ("gt_boxes", dict(gt_boxes=nan_gt), "nan"),
        ("num_gt", dict(num_gt=n.int()), "int64"),
        ("num_gt", dict(num_gt=n[:1]), "B=2"),
        ("num_gt", dict(num_gt=torch.tensor([6, 2])), "6"),
        ("num_gt", dict(num_gt=torch.tensor([3, -1])), "-1"),
        ("level_sizes", dict(level_sizes=scene.level_sizes[:-1]), "sum"),
        ("level_sizes", dict(level_sizes=[-1] + scene.level_sizes[1:]), "-1"),
        ("level_sizes", dict(level_sizes=[]), "[]"),
        ("level_sizes", dict(level_sizes=[1.5]), "1.5"),
        ("level_sizes", dict(level_sizes=torch.tensor(scene.level_sizes, dtype=torch.float32)), "int64"),
        ("anchors", dict(anchors=a.to("meta")), "device"),
        ("num_gt", dict(num_gt=n.to("meta")), "device"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["atss_assign", "topk_candidates"])
def test_bad_input_names_argument_and_value(scene, backend, op):
    fn = getattr(ops, op)
    for name, change, value in bad_cases(scene):
        with pytest.raises(AtssError) as err:
            fn(**args_with(scene, **change), backend=backend)
        msg = str(err.value)
        assert msg.startswith(name), (name, msg)
        assert value.lower() in msg.lower(), (name, value, msg)
        assert isinstance(err.value, ValueError)
    for topk in (0, 65, 2.0, True):
        with pytest.raises(AtssError, match="topk"):
            fn(**args_with(scene), topk=topk, backend=backend)


def test_bad_backend(scene):
    with pytest.raises(AtssError, match="backend.*'gpu'"):
        ops.atss_assign(*scene.args(), backend="gpu")
    with pytest.raises(AtssError, match="backend"):
        ops.box_iou(scene.anchors, scene.anchors, backend="fast")


def test_validate_false_skips_value_checks_but_never_crashes(scene):
    """Without validation the kernels still never read out of bounds: num_gt is clamped."""
    out = ops.atss_assign(*args_with(scene, num_gt=torch.tensor([99, -5])).values(), validate=False)
    full = ops.atss_assign(*args_with(scene, num_gt=torch.tensor([5, 0])).values())
    assert torch.equal(out[0], full[0])
    ref = ops.atss_assign(*args_with(scene, num_gt=torch.tensor([99, -5])).values(), validate=False,
                          backend="reference")
    assert torch.equal(ref[0], full[0])
    nan_gt = scene.gt_boxes.clone()
    nan_gt[0, 0] = float("nan")
    a, _ = ops.atss_assign(*args_with(scene, gt_boxes=nan_gt).values(), validate=False)
    assert a.shape == scene.valid.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_box_iou_bad_input(backend):
    b = torch.rand(3, 4)
    for args, word in (((b.double(), b), "boxes1"), ((b, b[:, :2]), "boxes2"), ((b[None], b), "boxes1"),
                       ((b[None], b[None].expand(2, 3, 4)), "batch"), ((b, b.to("meta")), "device")):
        with pytest.raises(AtssError, match=word):
            ops.box_iou(*args, backend=backend)


def test_level_sizes_as_tensor(scene):
    sizes = torch.tensor(scene.level_sizes)
    a1 = ops.atss_assign(*args_with(scene, level_sizes=sizes).values())
    a2 = ops.atss_assign(*scene.args())
    assert torch.equal(a1[0], a2[0])


@needs_ext
def test_cpp_checks_carry_the_bad_value(scene):
    """Called directly, the kernels check too (TORCH_CHECK), naming the value."""
    a, v, g, n = scene.anchors, scene.valid, scene.gt_boxes, scene.num_gt
    cases = [
        ((a[:, :3], v, scene.level_sizes, g, n, 9), "anchors must be [N, 4], got [%d, 3]" % a.shape[0]),
        ((a, v, scene.level_sizes[:-1], g, n, 9), "level_sizes must sum to the number of anchors"),
        ((a, v.int(), scene.level_sizes, g, n, 9), "valid must be bool, got Int"),
        ((a, v, scene.level_sizes, g, n.int(), 9), "num_gt must be int64, got Int"),
        ((a, v, scene.level_sizes, g, n, 0), "topk must be in [1, 64], got 0"),
        ((a, v, scene.level_sizes, g[:1], n, 9), "valid must be [B, N] = [1, "),
    ]
    for op in (torch.ops.atss.atss_assign, torch.ops.atss.topk_candidates):
        for args, text in cases:
            with pytest.raises(RuntimeError) as err:
                op(*args)
            assert text in str(err.value), (text, str(err.value))
    with pytest.raises(RuntimeError, match=r"boxes2 must be \[M, 4\] like boxes1"):
        torch.ops.atss.box_iou(a, a[None])


@needs_ext
def test_opcheck_every_op(scene):
    from torch.library import opcheck

    s = scene
    opcheck(torch.ops.atss.box_iou.default, (s.anchors[:50], s.gt_boxes[0]))
    opcheck(torch.ops.atss.box_iou.default, (s.anchors[None, :50].expand(2, -1, -1).contiguous(), s.gt_boxes))
    for op in (torch.ops.atss.topk_candidates.default, torch.ops.atss.atss_assign.default):
        opcheck(op, (s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9))
        opcheck(op, (s.anchors, s.valid, s.level_sizes, s.gt_boxes[:, :0], torch.zeros(2, dtype=torch.int64), 3))


@needs_ext
def test_fake_kernels_give_shapes(scene):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        a = mode.from_tensor(scene.anchors)
        v = mode.from_tensor(scene.valid)
        g = mode.from_tensor(scene.gt_boxes)
        n = mode.from_tensor(scene.num_gt)
        assigned, iou = torch.ops.atss.atss_assign(a, v, scene.level_sizes, g, n, 9)
        cand = torch.ops.atss.topk_candidates(a, v, scene.level_sizes, g, n, 4)
        pair = torch.ops.atss.box_iou(a, a[:7])
    assert assigned.shape == (2, scene.anchors.shape[0]) and assigned.dtype == torch.int64
    assert iou.shape == assigned.shape and iou.dtype == torch.float32
    assert cand.shape == (2, scene.gt_boxes.shape[1], 5 * 4) and cand.dtype == torch.int64
    assert pair.shape == (scene.anchors.shape[0], 7)


@needs_ext
def test_torch_compile_fullgraph(scene):
    def f(anchors, valid, gt, num_gt):
        return torch.ops.atss.atss_assign(anchors, valid, scene.level_sizes, gt, num_gt, 9)

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    got = compiled(scene.anchors, scene.valid, scene.gt_boxes, scene.num_gt)
    want = f(scene.anchors, scene.valid, scene.gt_boxes, scene.num_gt)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_backend_selection(scene, monkeypatch):
    ref = ops.atss_assign(*scene.args(), backend="reference")
    auto = ops.atss_assign(*scene.args())
    assert torch.equal(ref[0], auto[0])
    # Without the extension "auto" falls back and "extension" says why.
    monkeypatch.setattr(ops.extension, "_C", None)
    monkeypatch.setattr(ops.extension, "_REASON", "atss_cli._C not built: simulated")
    assert not ops.extension.available()
    assert torch.equal(ops.atss_assign(*scene.args())[0], ref[0])
    with pytest.raises(AtssError, match="simulated"):
        ops.atss_assign(*scene.args(), backend="extension")
    with pytest.raises(AtssError, match="simulated"):
        ops.box_iou(scene.anchors, scene.anchors, backend="extension")


def test_cuda_tensors_without_cuda_kernels_say_so(monkeypatch):
    monkeypatch.setattr(ops.extension, "has_cuda", lambda: False)
    assert not ops.extension.supports(torch.device("cuda"))
    assert "no kernels for cuda" in ops.extension.unsupported_reason(torch.device("cuda")) or \
        not ops.extension.available()


def test_missing_extension_falls_back_in_a_fresh_process():
    code = (
        "import sys; sys.modules['atss_cli._C'] = None\n"
        "from atss_cli import ops; from atss_cli.ops import scenes\n"
        "s = scenes.make_scene(0, [(64, 64)], [3])\n"
        "a, iou = ops.atss_assign(*s.args())\n"
        "print(ops.extension.available(), a.shape[1] == s.anchors.shape[0])\n"
        "print(ops.extension.describe())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "False True"
    assert "atss_cli._C not built" in out and "reference" in out


@needs_ext
def test_build_info():
    info = ops.extension.build_info()
    assert set(info) >= {"with_cuda", "cuda_version", "cuda_archs", "compiler"}
    assert info["with_cuda"] == ops.extension.has_cuda()
    if info["with_cuda"]:
        assert "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"]
    assert "loaded" in ops.extension.describe()


def test_shared_arithmetic_headers_compile_with_a_plain_host_compiler(tmp_path):
    """csrc/common/atss_math.h and atss_candidates.h need neither torch nor nvcc."""
    import shutil
    from pathlib import Path

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    src = tmp_path / "t.cpp"
    src.write_text('#include "common/atss_candidates.h"\n'
                   "int main() { float a[4] = {0, 0, 2, 2}; atss::TopK t; t.reset(1); t.push(1.0f, 3);\n"
                   "  return atss::box_iou(a, a) == 1.0f && t.index[0] == 3 ? 0 : 1; }\n")
    res = subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", "-I", str(csrc), str(src), "-o",
                          str(tmp_path / "t")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert subprocess.run([str(tmp_path / "t")]).returncode == 0


def geometry_of(scene, extent=None):
    """The GridGeometry of a scenes.make_scene scene (what the model passes)."""
    import math

    h = math.ceil(max(s[0] for s in scene.image_sizes) / 32) * 32
    w = math.ceil(max(s[1] for s in scene.image_sizes) / 32) * 32
    if extent is None:
        extent = torch.tensor([[math.ceil(a / 32) * 32, math.ceil(b / 32) * 32] for a, b in scene.image_sizes])
    return ops.GridGeometry(tuple(scenes.featmap_sizes((h, w))), scenes.STRIDES, extent)


@pytest.mark.parametrize("backend", BACKENDS)
def test_geometry_gives_the_same_result(backend):
    for seed in range(6):
        s = scenes.make_scene(40 + seed, [(96 + 50 * seed, 200 - 20 * seed), (64, 96), (130, 70)][: 1 + seed % 3],
                              [9 + 7 * seed, 3, 0][: 1 + seed % 3])
        geo = geometry_of(s)
        for topk in (1, 9, 16):
            want = ops.topk_candidates(*s.args(), topk, backend=backend)
            got = ops.topk_candidates(*s.args(), topk, backend=backend, geometry=geo)
            assert torch.equal(want, got), (seed, topk)
            want = ops.atss_assign(*s.args(), topk, backend=backend)
            for validate in (True, False):
                got = ops.atss_assign(*s.args(), topk, backend=backend, geometry=geo, validate=validate)
                assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1]), (seed, topk, validate)


def test_geometry_broken_promise_is_named(scene):
    geo = geometry_of(scene)
    shapes, strides, ext = geo.level_shapes, geo.strides, geo.extent
    holes = scene.valid.clone()
    holes[0, 3] = False
    jitter = scene.anchors.clone()
    jitter[2] += 0.5
    cases = [
        (dict(), ops.GridGeometry(shapes[:-1], strides, ext), "level_shapes must hold one (H, W) per level (5)"),
        (dict(), ops.GridGeometry(((1, shapes[0][0] * shapes[0][1]),) + shapes[1:], strides, ext),
         "level_shapes[0] = (1,"),
        (dict(), ops.GridGeometry(((shapes[0][0], shapes[0][1] + 1),) + shapes[1:], strides, ext),
         "level_shapes[0] must have H * W = level_sizes[0]"),
        (dict(), ops.GridGeometry(shapes, strides[:-1], ext), "strides must hold one stride per level"),
        (dict(), ops.GridGeometry(shapes, (0,) + strides[1:], ext), "strides must be ints >= 1"),
        (dict(), ops.GridGeometry(shapes, strides, ext.int()), "extent must be int64 [B, 2]"),
        (dict(), ops.GridGeometry(shapes, strides, ext[:1]), "extent must be int64 [B, 2] with B=2"),
        (dict(), ops.GridGeometry(shapes, strides, ext.to("meta")), "extent must be on the device"),
        (dict(), ops.GridGeometry(shapes, strides, ext + 32), "does not match valid of image"),
        (dict(), ops.GridGeometry(shapes, strides, -ext), "extent must be >= 0"),
        (dict(valid=holes), geo, "does not match valid of image 0: anchor 3"),
        (dict(anchors=jitter), geo, "anchors of level 0 are not a row-major grid"),
        (dict(), "grid", "geometry must be an ops.GridGeometry"),
    ]
    for change, g, text in cases:
        for fn in (ops.atss_assign, ops.topk_candidates):
            with pytest.raises(AtssError) as err:
                fn(**args_with(scene, **change), geometry=g)
            assert text in str(err.value), (text, str(err.value))
    # validate=False trusts the promise (no value check, so no device read): no error.
    ops.atss_assign(*scene.args(), validate=False, geometry=ops.GridGeometry(shapes, strides, ext + 32))


def test_validate_false_reads_no_tensor_value(scene):
    """With validate=False and geometry the op layer reads no tensor value back to the host
    (on a GPU: no sync): no aten._local_scalar_dense (.item(), .tolist(), bool())."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    geo = geometry_of(scene)
    for backend in (["extension"] if ops.extension.available() else []):
        with Reads():
            ops.atss_assign(*scene.args(), validate=False, geometry=geo, backend=backend)
            ops.topk_candidates(*scene.args(), validate=False, geometry=geo, backend=backend)
        assert Reads.count == 0
        with Reads():
            ops.atss_assign(*scene.args(), validate=True, geometry=geo, backend=backend)
        assert Reads.count > 0  # the probe sees reads when there are some


@needs_ext
def test_geometry_kernel_args_opcheck_and_fake(scene):
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.library import opcheck

    hw, strides, ext = geometry_of(scene).kernel_args()
    s = scene
    for op in (torch.ops.atss.topk_candidates.default, torch.ops.atss.atss_assign.default):
        opcheck(op, (s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9, hw, strides, ext))
        want = op(s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9)
        got = op(s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9, hw, strides, ext)
        for w, g in zip(want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,)):
            assert torch.equal(w, g)
        bad = [((hw, None, None), "must be given together"), ((hw[:-2], strides, ext), "grid_hw must hold (H, W)"),
               (([hw[0] + 1] + hw[1:], strides, ext), "grid_hw: level 0 must have H * W"),
               ((hw, strides[:-1], ext), "strides must hold one stride per level"),
               ((hw, strides, ext.int()), "extent must be int64"), ((hw, strides, ext[:1]), "extent must be [B, 2]")]
        for geo_args, text in bad:
            with pytest.raises(RuntimeError) as err:
                op(s.anchors, s.valid, s.level_sizes, s.gt_boxes, s.num_gt, 9, *geo_args)
            assert text in str(err.value), (text, str(err.value))
    with FakeTensorMode() as mode:
        a, v, g, n, e = (mode.from_tensor(t) for t in (s.anchors, s.valid, s.gt_boxes, s.num_gt, ext))
        assigned, iou = torch.ops.atss.atss_assign(a, v, s.level_sizes, g, n, 9, hw, strides, e)
        cand = torch.ops.atss.topk_candidates(a, v, s.level_sizes, g, n, 4, hw, strides, e)
    assert assigned.shape == s.valid.shape and iou.dtype == torch.float32
    assert cand.shape == (2, s.gt_boxes.shape[1], 5 * 4)


@needs_ext
def test_torch_compile_fullgraph_with_geometry(scene):
    geo = geometry_of(scene)

    def f(anchors, valid, gt, num_gt, extent):
        g = ops.GridGeometry(geo.level_shapes, geo.strides, extent)
        return ops.atss_assign(anchors, valid, scene.level_sizes, gt, num_gt, 9, validate=False, geometry=g)

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    got = compiled(scene.anchors, scene.valid, scene.gt_boxes, scene.num_gt, geo.extent)
    want = ops.atss_assign(*scene.args())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
