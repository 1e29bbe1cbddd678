"""The 1x schedule of SPEC.md section 6: linear warmup by iteration, lr steps by epoch, and the
batch plan (accumulation, total batch, iterations) a run's layout gives."""

from __future__ import annotations

import math
from dataclasses import dataclass


def warmup_factor(iteration: int, *, warmup_iters: int, warmup_ratio: float) -> float:
    """MMEngine's `LinearLR(start_factor=warmup_ratio, by_epoch=False, begin=0, end=warmup_iters)`.

    LinearLR spreads the rise over `end - begin - 1` steps, so the factor is warmup_ratio at
    iteration 0 and reaches 1.0 at iteration warmup_iters - 1 (499 in the recipe), then stays.
    MMEngine applies it as a product of per-step ratios; this is that product's closed form.
    """
    span = warmup_iters - 1
    if span <= 0 or iteration >= span:
        # end=1: LinearLR sets start_factor at iteration 0 and never steps again (the lr would stay
        # there for good); we take that one iteration and then the full lr.
        return 1.0 if warmup_iters != 1 or iteration > 0 else warmup_ratio
    return warmup_ratio + (1.0 - warmup_ratio) * iteration / span


def learning_rate(base_lr: float, *, iteration: int, epoch: int, warmup_iters: int, warmup_ratio: float,
                  milestones: tuple[int, ...]) -> float:
    """lr for optimizer step `iteration` (0-based) taken in 0-based `epoch`.

    The warmup factor (`warmup_factor`) times 0.1 for each milestone m reached (from epoch m on:
    MultiStepLR with milestones [8, 11] over 12 epochs).
    """
    lr = base_lr * (0.1 ** sum(epoch >= m for m in milestones))
    return lr * warmup_factor(iteration, warmup_iters=warmup_iters, warmup_ratio=warmup_ratio)


def accumulation_steps(requested: int, *, base_batch: int, batch_per_gpu: int, world_size: int) -> int:
    """Micro-steps per optimizer step: as asked, or enough to keep the recipe's total batch."""
    if requested > 0:
        return requested
    per_step = batch_per_gpu * world_size
    return max(1, round(base_batch / per_step))


def batch_note(total_batch: int, *, base_batch: int, lr: float, base_lr: float, scale_lr: bool) -> str | None:
    """One line when the total batch is not the recipe's, saying the lr it implies; else None."""
    if total_batch == base_batch:
        return None
    linear = base_lr * total_batch / base_batch
    if scale_lr:
        return (f"total batch {total_batch}, not the recipe's {base_batch}: lr scaled linearly to {lr:g} "
                f"({base_lr:g} x {total_batch}/{base_batch})")
    return (f"total batch {total_batch}, not the recipe's {base_batch}: lr {lr:g} as given; the linear "
            f"scaling rule would give {linear:g} (--scale-lr)")


@dataclass(frozen=True)
class BatchPlan:
    """How the run's batches add up: micro-steps (loader batches) per epoch and per optimizer
    step, the total batch, the lr it implies, and the iteration count."""

    steps_per_epoch: int   # loader batches per epoch on each process
    accumulate: int        # micro-steps per optimizer step
    global_batch: int      # images per micro-step over all processes
    total_batch: int       # images per optimizer step
    base_lr: float
    iters_per_epoch: int
    total_iters: int

    def lr(self, cfg, *, iteration: int, epoch: int) -> float:
        return learning_rate(self.base_lr, iteration=iteration, epoch=epoch, warmup_iters=cfg.warmup_iters,
                             warmup_ratio=cfg.warmup_ratio, milestones=tuple(cfg.milestones))


def plan_batches(cfg, *, steps_per_epoch: int, world_size: int) -> BatchPlan:
    """The plan of `cfg` (batch_per_gpu, accumulate, base_batch, lr, scale_lr, epochs, max_iters)
    for `world_size` processes whose loaders give `steps_per_epoch` batches each."""
    accumulate = accumulation_steps(cfg.accumulate, base_batch=cfg.base_batch,
                                    batch_per_gpu=cfg.batch_per_gpu, world_size=world_size)
    accumulate = min(accumulate, steps_per_epoch)
    global_batch = cfg.batch_per_gpu * world_size
    total_batch = global_batch * accumulate
    base_lr = cfg.lr * total_batch / cfg.base_batch if cfg.scale_lr else cfg.lr
    iters_per_epoch = math.ceil(steps_per_epoch / accumulate)
    total_iters = iters_per_epoch * cfg.epochs
    if cfg.max_iters:
        total_iters = min(total_iters, cfg.max_iters)
    return BatchPlan(steps_per_epoch=steps_per_epoch, accumulate=accumulate, global_batch=global_batch,
                     total_batch=total_batch, base_lr=base_lr, iters_per_epoch=iters_per_epoch,
                     total_iters=total_iters)
