"""Gradient accumulation normalises the loss as one all-reduced batch of the same total size.

MMDetection divides the ATSS losses by the positive count and the centerness-target sum
averaged over all processes (`reduce_mean`), so 8 processes x 2 images train one batch of 16.
With accumulation the same totals must span every micro-batch of the iteration. Two images of
the same padded size, no BatchNorm in train mode (norm_eval, the recipe's), no flip: after one
iteration with lr 1, no momentum and no weight decay, the weights (w0 - gradient) agree between
1 process x batch 2, 1 process x batch 1 x accumulate 2 and 2 gloo processes x batch 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cli_run import start

SMALL = ["--set", "depth=18", "--set", "fpn_channels=32", "--set", "head_channels=32",
         "--set", "stacked_convs=1", "--set", "scale=160,160", "--set", "workers=0",
         "--set", "flip_prob=0", "--set", "warmup_iters=0", "--set", "momentum=0",
         "--set", "weight_decay=0", "--set", "norm_eval=true", "--set", "val_split=",
         "--from-scratch", "--device", "cpu", "--epochs", 1, "--lr", 1.0, "--eval-interval", 0]


def two_image_coco(root: Path) -> Path:
    """A COCO-layout folder with two 160 x 128 training images and a few boxes each (their
    positives and centerness sums differ, so a per-micro-batch normaliser shows)."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    rng = np.random.default_rng(5)
    images, anns = [], []
    boxes = {1: [(10, 12, 60, 50, 1), (70, 40, 80, 70, 2)], 2: [(30, 20, 20, 24, 1)]}
    for image_id, items in boxes.items():
        pixels = rng.integers(0, 60, size=(128, 160, 3), dtype=np.uint8)
        for x, y, w, h, cat in items:
            pixels[y:y + h, x:x + w] = (200, 90, 30) if cat == 1 else (40, 180, 220)
        name = f"{image_id:012d}.png"
        Image.fromarray(pixels).save(root / "train2017" / name)
        images.append({"id": image_id, "file_name": name, "width": 160, "height": 128})
        for x, y, w, h, cat in items:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": 1, "name": "orange"}, {"id": 2, "name": "blue"}]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def weights_after_one_iteration(coco: Path, runs: dict[str, tuple]) -> dict[str, dict[str, torch.Tensor]]:
    """{name: weights after one iteration} of `atss train` with each run's flags. The runs are
    independent (one work dir each; the annotation cache is built under a lock): they run side by
    side, each process on one thread, instead of one after the other."""
    procs = {name: start("train", "--coco", coco, "--work-dir", coco.parent / name, *SMALL, *args)
             for name, args in runs.items()}
    weights = {}
    try:
        for name, child in procs.items():
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err + out
            state = torch.load(coco.parent / name / "latest.pth", weights_only=False)
            assert state["iteration"] == 1
            weights[name] = state["state_dict"]
    finally:
        for child in procs.values():
            if child.poll() is None:
                child.kill()
                child.communicate()
    return weights


def test_accumulation_gives_the_gradient_of_one_batch(tmp_path):
    coco = two_image_coco(tmp_path / "data")
    runs = weights_after_one_iteration(coco, {
        "b2": ("--batch-per-gpu", 2, "--accumulate", 1),
        "acc": ("--batch-per-gpu", 1, "--accumulate", 2),
        "gloo": ("--batch-per-gpu", 1, "--accumulate", 1, "--nproc", 2),
    })
    batch2, accum, gloo = runs["b2"], runs["acc"], runs["gloo"]
    worst = {"accumulate 2": 0.0, "2 gloo processes": 0.0}
    trained = [k for k, v in batch2.items() if v.is_floating_point()]
    assert trained
    for key in trained:
        for name, other in (("accumulate 2", accum), ("2 gloo processes", gloo)):
            torch.testing.assert_close(other[key], batch2[key], rtol=1e-4, atol=2e-6,
                                       msg=lambda m, k=key, n=name: f"{n}, {k}: {m}")
            worst[name] = max(worst[name], float((other[key] - batch2[key]).abs().max()))
    print(f"largest weight difference after one step at lr 1 (= gradient difference): {worst}")
