"""Our training trajectory against MMDetection 3.3.0's, recorded in tests/data/mmdet_trajectory/.

`bench/trajectory.py --record` ran MMDetection's `atss_r50_fpn_1x_coco` model, optimizer wrapper
(DefaultOptimWrapperConstructor) and parameter schedulers (LinearLR warmup over 10 iterations,
MultiStepLR at epochs [3, 4], epochs of 8 iterations) for 40 iterations on the batches our
pipeline produced from a generated dataset, from our seed-0 initial weights, and stored its lrs,
losses and per-tensor summaries of its final weights and SGD momentum buffers. Here our
`train()` runs the same 40 iterations (ResNet-50 at a 123 x 91 input, 1 process, 2 images a
batch, lr 0.00125) and must give: after 2 iterations the momentum buffers and updates within
EARLY_MOMENTUM_BOUND / EARLY_UPDATE_BOUND; MMDetection's parameter groups; every lr within 1e-12; the first iteration's losses
within 1e-6 (relative); the first EARLY_ITERS within EARLY_BOUND, every iteration's within
LOSS_BOUND; the final weights and momentum buffers within WEIGHT_BOUND / MOMENTUM_BOUND. The
tight bounds hold the rules; the loose ones are the noise floor of float32 summation order,
which 40 steps of small-batch SGD amplify (the figures below).
"""

from __future__ import annotations

import sys

import pytest
import torch

from cli_run import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import trajectory  # noqa: E402

# Measured against MMDetection 3.3.0 with its compiled mmcv 2.1.0 (bench/results/
# trajectory_r50_40it_lr0.00125_2026-12-02.md, 2-core Xeon, 2 threads):
# - after 2 iterations, the momentum buffers (gradient plus weight decay, then momentum) within
#   1.8e-7 of their whole norm and the updates (weights minus initial, where each group's lr
#   shows) within 8.1e-6 (`_global_rel`). Our own run with 1 thread instead of 2 is 8.4e-4 /
#   8.2e-4 away: another reduction order in the CPU's kernels, which another CPU may have too,
#   so the bounds sit above that; with one rule changed they are 0.053 / 0.053 (momentum 0.8) and
#   6.7e-5 / 0.088 (lr x 1.1). Weight decay's share of a 2-step update is below that noise (no
#   decay: 1.6e-3), so its rule is checked on the optimizer's parameter groups instead;
# - losses: iterations 1-15 within 2.0e-7, then growing to 2.3e-3 at iterations 32 and 40; final
#   weights 0.059 and momentum 0.28 of the tensor's largest magnitude (BatchNorm parameters whose
#   updates are 1e-6-sized).
# That growth is float32 noise amplified by small-batch SGD, not a rule: our own run with 1
# thread against 2 (the same code, another summation order in the convolutions) drifts further,
# 5.9e-6 at iteration 5, 4.1e-2 at 17, 9.4e-2 at most, final weights 0.88 and momentum 2.4, and
# another CPU's kernels may do the same. So the rules are held where noise is still small (the
# first updates and iterations, the parameter groups), the rest at the noise floor of another
# summation order.
EARLY_MOMENTUM_BOUND = 1e-2  # after trajectory.EARLY_ITERS iterations, of the whole norm
EARLY_UPDATE_BOUND = 2e-2
EARLY_ITERS = 4              # losses of the first iterations ...
EARLY_BOUND = 1e-4           # ... within this (relative)
LOSS_BOUND = 0.15            # relative, any iteration of the 40
WEIGHT_BOUND = 2.0           # max |diff| / max |w| per tensor (or per summary entry)
MOMENTUM_BOUND = 5.0


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


def _global_rel(ours: dict, expected: dict, small: int = trajectory.SMALL) -> float:
    """||ours - expected|| / ||expected|| over all the tensors together: small tensors whole; a
    large one by its seeded random projection, whose difference squared estimates its
    ||diff||^2, against its recorded sum of squares. A per-tensor ratio is ruled by tensors whose
    values are sums that nearly cancel (a BatchNorm weight's gradient): their relative error
    follows the reduction order of the CPU's kernels (1 thread instead of 2: 0.1), while their
    share of the whole is nil."""
    mine = trajectory.summarise(ours, small)
    diff2 = want2 = 0.0
    for name, want in expected.items():
        got, want = mine[name].double(), want.double()
        if ours[name].numel() <= small:
            diff2 += float(((got - want) ** 2).sum())
            want2 += float((want ** 2).sum())
        else:
            diff2 += float(got[2] - want[2]) ** 2
            want2 += float(want[1])
    return (diff2 / max(want2, 1e-300)) ** 0.5


@pytest.mark.skipif(not trajectory.FIXTURE.exists(), reason="no recorded MMDetection trajectory")
def test_training_trajectory_equals_mmdetections(tmp_path):
    # Recorded with 2 threads (bench/trajectory.py); a test before this one in the same process
    # may have set another count, and the CPU's reductions follow it.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _trajectory_equals_mmdetections(tmp_path)
    finally:
        torch.set_num_threads(threads)


def _trajectory_equals_mmdetections(tmp_path):
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

    # The first updates, where every optimizer rule shows before float noise has grown: the
    # weights' change and the momentum buffers after EARLY_ITERS iterations.
    early = trajectory.our_early(inputs, tmp_path / "early")
    for kind, bound in (("momentum", EARLY_MOMENTUM_BOUND), ("update", EARLY_UPDATE_BOUND)):
        rel = _global_rel(early[kind], exp["early"][kind])
        assert rel <= bound, f"{kind} after {trajectory.EARLY_ITERS} iterations: {rel:.3g} of the whole"

    ours = trajectory.our_trajectory(inputs, tmp_path / "atss", setup["iters"])
    assert len(ours["lrs"]) == len(exp["lrs"]) == setup["iters"]
    lr_diff = max(abs(a - b) for a, b in zip(ours["lrs"], exp["lrs"]))
    assert lr_diff <= 1e-12, [(i, a, b) for i, (a, b) in enumerate(zip(ours["lrs"], exp["lrs"])) if abs(a - b) > 1e-12]
    rel = [abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(ours["losses"], exp["losses"])]
    first = max(abs(ours["losses"][0][k] - exp["losses"][0][k]) / abs(exp["losses"][0][k])
                for k in trajectory.LOSS_KEYS)
    assert first <= 1e-6, (ours["losses"][0], exp["losses"][0])
    assert max(rel[:EARLY_ITERS]) <= EARLY_BOUND, [f"{i + 1}: {r:.2e}" for i, r in enumerate(rel[:EARLY_ITERS])]
    assert max(rel) <= LOSS_BOUND, [f"{i + 1}: {r:.2e}" for i, r in enumerate(rel)]

    assert sorted(ours["momentum"]) == sorted(exp["momentum"])   # the same parameters are trained
    # The optimizer as MMDetection's DefaultOptimWrapperConstructor builds it for this config: one
    # group, weight decay on every parameter (no paramwise rule), the same momentum and dampening.
    groups = torch.load(tmp_path / "atss" / "latest.pth", weights_only=False)["optimizer"]["param_groups"]
    keys = ("momentum", "dampening", "weight_decay", "nesterov", "maximize")
    assert [{k: g[k] for k in keys} for g in groups] == [{k: g[k] for k in keys} for g in exp["param_groups"]]
    worst, where = _close(ours["weights"], exp["weights"])
    assert worst <= WEIGHT_BOUND, f"weights: {worst:.3g} at {where}"
    worst, where = _close(ours["momentum"], exp["momentum"])
    assert worst <= MOMENTUM_BOUND, f"momentum buffers: {worst:.3g} at {where}"
