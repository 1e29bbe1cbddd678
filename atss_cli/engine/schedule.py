"""The 1x learning-rate schedule of SPEC.md section 6: linear warmup by iteration, steps by epoch."""

from __future__ import annotations


def learning_rate(base_lr: float, *, iteration: int, epoch: int, warmup_iters: int, warmup_ratio: float,
                  milestones: tuple[int, ...]) -> float:
    """lr for optimizer step `iteration` (0-based) taken in 0-based `epoch`.

    Warmup multiplies by a factor rising linearly from warmup_ratio at iteration 0 to 1 at
    warmup_iters (MMDetection's LinearLR); each milestone m multiplies by 0.1 from epoch m on
    (MultiStepLR with milestones [8, 11] over 12 epochs).
    """
    lr = base_lr * (0.1 ** sum(epoch >= m for m in milestones))
    if warmup_iters > 0 and iteration < warmup_iters:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return lr


def accumulation_steps(requested: int, *, base_batch: int, batch_per_gpu: int, world_size: int) -> int:
    """Micro-steps per optimizer step: as asked, or enough to keep the recipe's total batch."""
    if requested > 0:
        return requested
    per_step = batch_per_gpu * world_size
    return max(1, round(base_batch / per_step))
