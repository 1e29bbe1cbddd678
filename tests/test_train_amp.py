"""Our use of torch.amp.GradScaler under `--amp fp16` (MMDetection's AmpOptimWrapper needs a GPU,
so the oracle cannot run it; these hold our side to the same rules, on the CPU's fp16 autocast):

- one `update()` per optimizer step, not per micro-batch (gradient accumulation);
- a step the scaler skips (infinite fp16 gradients) still advances the lr schedule, as
  MMEngine's ParamSchedulerHook steps after every iteration whether the optimizer stepped;
- such a step is not the non-finite-loss error (the loss was finite; only the scaled
  gradients overflowed);
- the scaler's state (scale, growth tracker) survives a resume.

Infinite gradients are made by a scaler that starts at 2**60: the scaled float32 loss is finite,
its fp16 backward overflows, every step is skipped and the scale halves each iteration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from atss_cli.training.schedule import learning_rate
from test_train_leftovers import TINY, Lines, photos, train_records

HUGE = 2.0 ** 60


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("four"), [(160, 120)] * 4, seed=3)


def _cfg(data: Path, work: Path, **changes):
    from atss_cli.config import TrainConfig

    # fp16 autocast on the CPU is slow: a small input and few iterations.
    base = {**TINY, "scale": (64, 48), "amp": "fp16", "warmup_iters": 3, "milestones": (1,), "flip_prob": 0.0,
            "batch_per_gpu": 1, "accumulate": 1, "epochs": 1}
    return TrainConfig(coco=str(data), work_dir=str(work), **{**base, **changes})


class CountingScaler(torch.amp.GradScaler):
    updates = 0

    def update(self, new_scale=None):
        CountingScaler.updates += 1
        return super().update(new_scale)


class HugeScaler(CountingScaler):
    def __init__(self, device="cuda", **kwargs):
        super().__init__(device, init_scale=HUGE, **kwargs)


def test_one_update_per_optimizer_step_under_accumulation(four, tmp_path, monkeypatch):
    from atss_cli.training.train import train

    monkeypatch.setattr(torch.amp, "GradScaler", CountingScaler)
    CountingScaler.updates = 0
    summary = train(_cfg(four, tmp_path / "acc", accumulate=2), Lines())
    # 4 images at a global batch of 1: 4 micro-steps, 2 optimizer steps.
    assert summary["iteration"] == 2 and summary["derived"]["accumulate"] == 2
    assert CountingScaler.updates == 2
    state = torch.load(tmp_path / "acc" / "latest.pth", weights_only=False)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0


def test_skipped_steps_advance_the_lr_are_no_error_and_the_scaler_survives_a_resume(four, tmp_path, monkeypatch):
    from atss_cli.training.train import train

    monkeypatch.setattr(torch.amp, "GradScaler", HugeScaler)
    two = photos(tmp_path / "two", [(160, 120)] * 2, seed=4)
    straight = _cfg(two, tmp_path / "straight", epochs=2)
    summary = train(straight, Lines())                 # no NonFiniteLoss: the losses are finite
    records = train_records(tmp_path / "straight")
    assert summary["iteration"] == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    # The lr of each iteration is the schedule's, skipped step or not: warmup over 3 iterations,
    # then x 0.1 from epoch 1 (iteration 2) on.
    want = [learning_rate(0.01, iteration=i, epoch=i // 2, warmup_iters=3, warmup_ratio=0.001, milestones=(1,))
            for i in range(4)]
    assert [r["lr"] for r in records] == want
    a = torch.load(tmp_path / "straight" / "latest.pth", weights_only=False)
    assert a["scaler"]["scale"] == HUGE * 0.5 ** 4             # one backoff per skipped step
    assert a["optimizer"]["state"] == {}                       # SGD never stepped: no momentum buffer

    # Stopped after one iteration and resumed: the scale goes on from the saved one.
    part = straight.replace(work_dir=str(tmp_path / "part"))
    train(part.replace(max_iters=1), Lines())
    assert torch.load(tmp_path / "part" / "latest.pth", weights_only=False)["scaler"]["scale"] == HUGE * 0.5
    train(part, Lines())
    b = torch.load(tmp_path / "part" / "latest.pth", weights_only=False)
    assert b["iteration"] == 4 and b["scaler"] == a["scaler"]
