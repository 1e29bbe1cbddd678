"""The lr schedule is MMEngine's, and a total batch other than the recipe's is said with its lr."""

from __future__ import annotations

import pytest

from atss_cli.training.schedule import batch_note, learning_rate, warmup_factor


def mmengine_linear_lr(base_lr: float, start_factor: float, begin: int, end: int, iterations: int) -> list[float]:
    """MMEngine's LinearLR(by_epoch=False) as it runs: the lr is set to base x start_factor when the
    scheduler is built (last_step 0), then after each iteration step() multiplies it by
    1 + (1 - start) / (total_iters x start + (last_step - 1) x (1 - start)), total_iters =
    end - begin - 1, while begin <= step < end; later steps leave it alone."""
    total_iters = end - begin - 1
    lrs, lr, last_step = [], None, -1
    for global_step in range(iterations):
        if begin <= global_step < end:
            last_step += 1
            if last_step == 0:
                lr = base_lr * start_factor
            else:
                lr = lr * (1.0 + (1.0 - start_factor) /
                           (total_iters * start_factor + (last_step - 1) * (1.0 - start_factor)))
        lrs.append(lr)
    return lrs


def test_warmup_is_mmengine_linear_lr_at_every_iteration():
    expected = mmengine_linear_lr(0.01, 0.001, 0, 500, 700)
    for i, want in enumerate(expected):
        got = learning_rate(0.01, iteration=i, epoch=0, warmup_iters=500, warmup_ratio=0.001, milestones=(8, 11))
        assert abs(got - want) <= 1e-12 * want, (i, got, want)
    assert warmup_factor(499, warmup_iters=500, warmup_ratio=0.001) == 1.0
    assert warmup_factor(498, warmup_iters=500, warmup_ratio=0.001) < 1.0


@pytest.mark.parametrize("warmup_iters,ratio", [(2, 0.001), (40, 0.1), (3, 0.5)])
def test_short_warmups_follow_linear_lr_too(warmup_iters, ratio):
    expected = mmengine_linear_lr(0.02, ratio, 0, warmup_iters, warmup_iters + 5)
    for i, want in enumerate(expected):
        got = learning_rate(0.02, iteration=i, epoch=0, warmup_iters=warmup_iters, warmup_ratio=ratio, milestones=())
        assert abs(got - want) <= 1e-12 * want, (i, got, want)


def test_the_recipe_batch_says_nothing_and_another_says_its_lr():
    assert batch_note(16, base_batch=16, lr=0.01, base_lr=0.01, scale_lr=False) is None
    # 3 GPUs x 2 images with the default accumulation of 3: 18 images per iteration.
    note = batch_note(18, base_batch=16, lr=0.01, base_lr=0.01, scale_lr=False)
    assert "\n" not in note and "total batch 18" in note and "16" in note
    assert "0.01 " in note and "0.01125" in note and "--scale-lr" in note
    # Batch 4 on 8 GPUs with --scale-lr: 32 images, lr doubled.
    note = batch_note(32, base_batch=16, lr=0.02, base_lr=0.01, scale_lr=True)
    assert "\n" not in note and "total batch 32" in note and "0.02" in note
