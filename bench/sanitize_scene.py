"""A small scene for compute-sanitizer: every ATSS kernel launched a few times, results checked.

    compute-sanitizer --tool memcheck python3 bench/sanitize_scene.py

Runs ops.box_iou, ops.topk_candidates and ops.atss_assign on CUDA tensors for a few tiny
batches (grid scenes with and without `ops.GridGeometry`, validate True and False; a scene
with holes in its valid flags and one with jittered, non-grid anchors, without geometry),
and compares each result with the CPU kernels bit for bit. Exit status: 0 all equal, 1 a
mismatch, 2 nothing to check here (no CUDA device or no CUDA kernels; the reason is printed).
Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that every tensor is its own allocation and
memcheck sees the exact bounds (the caching allocator hides overruns inside its blocks).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from atss_cli import ops  # noqa: E402
from atss_cli.benchmarks.assigner import grid_geometry  # noqa: E402
from atss_cli.ops import scenes  # noqa: E402


def scene_list() -> list[tuple[str, scenes.Scene, bool]]:
    """(name, scene, is a grid scene with rectangle valid flags)."""
    out = [
        ("two images 200x300 + 150x250, M 7/3", scenes.make_scene(1, [(200, 300), (150, 250)], [7, 3]), True),
        ("one image 96x64, no GT", scenes.make_scene(2, [(96, 64)], [0]), True),
        ("three images up to 480x640, M 40/0/25", scenes.make_scene(3, [(480, 640), (320, 200), (64, 640)],
                                                                    [40, 0, 25]), True),
        ("holes in valid, M 12/5", scenes.make_scene(4, [(256, 320), (200, 180)], [12, 5], holes=0.3), False),
    ]
    base = scenes.make_scene(5, [(160, 224)], [9])
    jitter = base.anchors + torch.randn(base.anchors.shape, generator=torch.Generator().manual_seed(5))
    out.append(("jittered non-grid anchors, M 9", scenes.Scene(jitter, base.valid, base.level_sizes, base.gt_boxes,
                                                               base.num_gt, base.image_sizes), False))
    return out


def same(a, b) -> bool:
    a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
    return all(torch.equal(x, y.cpu()) for x, y in zip(a, b))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu rehearses the script without a GPU")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device (torch.cuda.is_available() is False)")
        return 2
    if device.type == "cuda" and not ops.extension.has_cuda():
        print(f"skipped: the extension has no CUDA kernels ({ops.extension.describe()})")
        return 2
    failures = launches = 0
    for name, cpu_scene, is_grid in scene_list():
        geo_cpu, why = grid_geometry(cpu_scene) if is_grid else (None, "not a grid scene")
        geo_dev, _ = grid_geometry(cpu_scene, device) if is_grid else (None, "")
        scene = cpu_scene.to(device)
        a = scene.anchors[None].expand(scene.gt_boxes.shape[0], -1, -1).contiguous()
        checks = [("box_iou", ops.box_iou(a, scene.gt_boxes), ops.box_iou(a.cpu(), cpu_scene.gt_boxes))]
        for op in (ops.topk_candidates, ops.atss_assign):
            want = op(*cpu_scene.args(), 9, backend="extension")
            for validate in (True, False):
                checks.append((f"{op.__name__} validate={validate}",
                               op(*scene.args(), 9, validate=validate, backend="extension"), want))
                if geo_dev is not None:
                    checks.append((f"{op.__name__} validate={validate} +geometry",
                                   op(*scene.args(), 9, validate=validate, backend="extension", geometry=geo_dev),
                                   want))
            if geo_cpu is not None:
                checks.append((f"{op.__name__} cpu +geometry",
                               op(*cpu_scene.args(), 9, backend="extension", geometry=geo_cpu), want))
        if device.type == "cuda":
            torch.cuda.synchronize()
        for label, got, want in checks:
            launches += 1
            if not same(want, got):
                failures += 1
                print(f"MISMATCH {name}: {label}")
        print(f"{name}: {len(checks)} calls checked"
              + ("" if geo_dev is not None else f" (no geometry: {why})"), flush=True)
    print(f"sanitize_scene: {launches} calls on {device}, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
