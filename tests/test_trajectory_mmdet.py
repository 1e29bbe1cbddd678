"""Our training trajectory against MMDetection 3.3.0's, recorded in tests/data/mmdet_trajectory/.

`bench/trajectory.py --record` ran MMDetection's `atss_r50_fpn_1x_coco` model, optimizer wrapper
(DefaultOptimWrapperConstructor) and parameter schedulers (LinearLR warmup over 10 iterations,
MultiStepLR at epochs [3, 4], epochs of 8 iterations) for 40 iterations on the batches our
pipeline produced from a generated dataset, from our seed-0 initial weights, and stored its lrs,
losses and per-tensor summaries of its final weights and SGD momentum buffers. Here our
`train()` runs the same 40 iterations (ResNet-50 at a 123 x 91 input, 1 process, 2 images a
batch) and must give: every lr within 1e-12; the first iteration's losses within 1e-6
(relative); every iteration's within LOSS_BOUND; the final weights and momentum buffers within
WEIGHT_BOUND / MOMENTUM_BOUND (float summation order: the two sides sum the loss over levels in
another order and torch's convolutions over other blockings, so the last bits differ and grow
through 40 SGD steps; a different rule would show at once as lr or loss differences far above).
"""

from __future__ import annotations

import sys

import pytest
import torch

from cli_run import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import trajectory  # noqa: E402

# Measured (bench/results/trajectory_r50_40it_2026-12-02.md): first iteration 2.3e-7 per term; the
# loss difference grows with the steps to 3.1e-4 (iteration 37); final weights 0.041 and momentum
# 0.147 of the tensor's largest magnitude, both at BatchNorm / GroupNorm biases whose values are
# 1e-6-sized (their updates); float32 noise amplified by 40 SGD steps at lr 0.01 on a loss that
# rises to 55. The bounds leave room for another CPU's convolution kernels.
LOSS_BOUND = 1e-3        # relative, any iteration of the 40
WEIGHT_BOUND = 0.1       # max |diff| / max |w| per tensor (or per summary entry)
MOMENTUM_BOUND = 0.5


def _close(ours: dict, expected: dict, small: int = trajectory.SMALL) -> tuple[float, str]:
    """Largest relative difference between our tensors and the recorded summaries: small tensors
    whole (max |diff| / max |w|); large ones by (sum, sum of squares, random projection), each
    difference divided by its own scale (sqrt(n) ||w||, ||w||^2, ||w||)."""
    worst, where = 0.0, ""
    mine = trajectory.summarise(ours, small)
    assert sorted(mine) == sorted(expected)
    for name, want in expected.items():
        got, want = mine[name].double(), want.double()
        if ours[name].numel() <= small:
            rel = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
        else:
            norm = max(float(want[1]) ** 0.5, 1e-12)
            d = (got - want).abs()
            rel = max(float(d[0]) / (norm * ours[name].numel() ** 0.5), float(d[1]) / norm ** 2, float(d[2]) / norm)
        if rel > worst:
            worst, where = rel, name
    return worst, where


@pytest.mark.skipif(not trajectory.FIXTURE.exists(), reason="no recorded MMDetection trajectory")
def test_training_trajectory_equals_mmdetections(tmp_path):
    exp = torch.load(trajectory.FIXTURE, weights_only=True)
    setup = exp["setup"]
    inputs = trajectory.make_inputs(tmp_path, setup["depth"])
    assert inputs["num_classes"] == setup["num_classes"]
    # The inputs are those MMDetection trained on: the same batches and initial weights.
    batches, epoch_length = trajectory.our_batches(inputs, setup["iters"])
    assert epoch_length == setup["epoch_length"]
    sums = [float(b["images"].double().sum()) for b in batches]
    assert sums == pytest.approx(exp["image_sums"], rel=1e-9), "the generated data changed: rerun bench/trajectory.py --record"
    init = torch.load(inputs["init"], weights_only=True)["state_dict"]
    worst, where = _close({n: init[n] for n in exp["init_sums"]}, exp["init_sums"], small=0)
    assert worst < 1e-9, f"the initial weights changed ({where}): rerun bench/trajectory.py --record"

    ours = trajectory.our_trajectory(inputs, tmp_path / "atss", setup["iters"])
    assert len(ours["lrs"]) == len(exp["lrs"]) == setup["iters"]
    lr_diff = max(abs(a - b) for a, b in zip(ours["lrs"], exp["lrs"]))
    assert lr_diff <= 1e-12, [(i, a, b) for i, (a, b) in enumerate(zip(ours["lrs"], exp["lrs"])) if abs(a - b) > 1e-12]
    rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(ours["losses"], exp["losses"])]
    first = max(abs(ours["losses"][0][k] - exp["losses"][0][k]) / abs(exp["losses"][0][k])
                for k in trajectory.LOSS_KEYS)
    assert first <= 1e-6, (ours["losses"][0], exp["losses"][0])
    assert max(rel) <= LOSS_BOUND, [f"{i + 1}: {r:.2e}" for i, r in enumerate(rel)]

    assert sorted(ours["momentum"]) == sorted(exp["momentum"])   # the same parameters are trained
    worst, where = _close(ours["weights"], exp["weights"])
    assert worst <= WEIGHT_BOUND, f"weights: {worst:.3g} at {where}"
    worst, where = _close(ours["momentum"], exp["momentum"])
    assert worst <= MOMENTUM_BOUND, f"momentum buffers: {worst:.3g} at {where}"
