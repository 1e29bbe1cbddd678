"""One optimizer iteration of the recipe: micro-batches in, one optimizer step out.

With gradient accumulation the iteration's micro-batches are all read first, the loss
normalisers of the whole accumulated batch are computed from their targets (the assignment
does not depend on predictions), and each micro-batch's loss is scaled so that the summed
gradient is that of one batch of the total size (see `accumulation_scales`). Under DDP only
the last micro-batch's backward synchronises gradients.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from atss_cli.distributed import group as distributed
from atss_cli.errors import AtssError, param

if TYPE_CHECKING:
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.run import Position, TrainRun


class NonFiniteLoss(AtssError):
    """A loss became NaN or infinite; the last good checkpoint is left as it was."""


class LossModule(torch.nn.Module):
    """Routes the loss through forward so DistributedDataParallel sees (and syncs) it.

    `scale` [3] multiplies (loss_cls, loss_bbox, loss_centerness): with gradient accumulation it
    turns the normalisers the loss takes over one micro-batch into those of the whole
    accumulated batch (see `accumulation_scales`); `sizes` are the feature-map sizes those were
    computed for, checked against the forward pass's.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, targets, scale=None, sizes=None):
        if images.shape[0] == 0:
            return empty_share_losses(self.model)
        if scale is None:
            return self.model.loss(images, targets)
        outputs = self.model(images)
        got = [tuple(x.shape[-2:]) for x in outputs[0]]
        if got != list(sizes):
            raise AtssError(f"internal: accumulation normalisers were taken for feature sizes {list(sizes)}, "
                            f"the model gave {got}")
        losses = self.model.loss_from_outputs(*outputs, targets)
        return {k: losses[k] * scale[i] for i, k in enumerate(LOSS_KEYS)}


LOSS_KEYS = ("loss_cls", "loss_bbox", "loss_centerness")


def empty_share_losses(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The losses of a process whose share of the global batch is empty (an epoch's short last
    batch over more processes than it fills): zero, connected to every trained parameter (so
    DDP's gradient all_reduce gets a zero gradient from it), after joining the two all_reduce
    means the ATSS loss takes of its normalisers (`atss_losses`) with a zero contribution, so
    the other processes divide by the sums over the images that exist."""
    from atss_cli.model.loss import reduce_mean

    first = next(p for p in model.parameters() if p.requires_grad)
    zero = torch.zeros((), dtype=torch.float32, device=first.device)
    reduce_mean(zero)   # the positive count (avg_factor) ...
    reduce_mean(zero)   # ... and the centerness-target sum
    # (p * 0).sum(), not p.sum() * 0: the gradient of a 0-dim parameter's p.sum() is a view of
    # the one upstream gradient, so the five Scale parameters' .grad shared one storage and DDP's
    # copy of the reduced buckets back into them left all five holding the last one's value.
    tied = sum((p * 0.0).sum() for p in model.parameters() if p.requires_grad)
    return {k: tied.float() for k in LOSS_KEYS}


@torch.no_grad()
def normaliser_sums(model, images: torch.Tensor, targets) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """What the ATSS loss divides by, summed over one micro-batch, before any forward pass (the
    assignment does not depend on predictions): float32 [2] = (sum over images of
    max(#positives, 1), sum of the positives' centerness targets), and the feature sizes used."""
    from atss_cli.model.loss import loss_normalisers

    sizes = model.feature_sizes(*images.shape[-2:])
    if images.shape[0] == 0:  # an empty share of a short last batch adds nothing
        return torch.zeros(2, dtype=torch.float32, device=images.device), sizes
    anchors, assigned, gt_boxes, _ = model.assign(sizes, targets, images.device)
    return loss_normalisers(anchors, assigned, gt_boxes), sizes


def accumulation_scales(sums: torch.Tensor) -> torch.Tensor:
    """[G, 2] per-micro-batch normaliser sums of this process -> [G, 3] loss multipliers.

    The loss of micro-batch m divides by its own normalisers averaged over processes (as
    MMDetection's `reduce_mean`): avg_m and max(ctr_m, 1). One batch of the whole accumulated size
    over W x G processes would divide by their mean over all G micro-batches too; scaling micro
    m's terms by avg_m / mean(avg) and max(ctr_m, 1) / max(mean(ctr), 1), and its backward by
    1/G, gives exactly that batch's gradient (DDP still averages over the W processes).
    """
    from atss_cli.model.loss import reduce_mean

    per_micro = reduce_mean(sums)                      # [G, 2]: the very values each micro's loss divides by
    avg, ctr = per_micro[:, 0], per_micro[:, 1]
    whole_avg, whole_ctr = avg.mean(), ctr.mean().clamp(min=1)
    box = ctr.clamp(min=1) / whole_ctr
    cls = avg / whole_avg
    return torch.stack([cls, box, cls], dim=1)


@dataclass
class IterationResult:
    lr: float
    losses: torch.Tensor  # float64 [3]: LOSS_KEYS, averaged over processes and micro-batches
    micro_steps: int      # loader batches this iteration consumed
    images: int           # images this process trained on
    skipped: int          # images the loader skipped (unreadable) in those batches
    stop: bool            # some process was asked to stop (its flag rides on the loss all_reduce)


def train_iteration(run: TrainRun, pos: Position, batches, stop: StopRequest) -> IterationResult:
    """Read this iteration's micro-batches from `batches`, backward each, take one optimizer step.

    The losses are averaged over processes with one all_reduce per micro-batch; a fourth value
    in it carries this process's stop flag, so every rank learns in the same iteration, at no
    extra collective, that one of them was signalled. A non-finite loss raises NonFiniteLoss
    before the optimizer step, on every rank alike (they all see the same averaged losses).
    """
    plan = run.plan
    group = min(plan.accumulate, plan.steps_per_epoch - pos.step)
    lr = plan.lr(run.cfg, iteration=pos.iteration, epoch=pos.epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    sums = torch.zeros(3, dtype=torch.float64)
    n_images, skipped, stop_seen = 0, 0, False
    micro_batches = []
    for _ in range(group):
        batch = next(batches)
        skipped += len(batch.get("skipped", ()))
        images, targets = _to_device(batch, run.device)
        micro_batches.append((images.contiguous(memory_format=run.memory_format), targets))
    scales, sizes = [None] * group, [None] * group
    if group > 1:
        # The whole accumulated batch's normalisers, known before any backward.
        pre = [normaliser_sums(run.model, images, targets) for images, targets in micro_batches]
        scales = accumulation_scales(torch.stack([p[0] for p in pre]))
        sizes = [p[1] for p in pre]
    for micro, (images, targets) in enumerate(micro_batches):
        n_images += images.shape[0]
        sync = micro == group - 1 or not run.info.enabled
        ctx = contextlib.nullcontext() if sync else run.loss_module.no_sync()
        with ctx:
            with torch.autocast(run.device.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                losses = run.loss_module(images, targets, scales[micro], sizes[micro])
            terms = torch.stack([losses[k] for k in LOSS_KEYS]).float()
            total = terms.sum()
            run.scaler.scale(total / group).backward()
        # This process's stop flag rides along as a fourth value (padded on the device: no copy).
        flagged = torch.nn.functional.pad(terms.detach(), (0, 1), value=1.0 if stop.requested else 0.0)
        reduced = distributed.all_reduce_mean(flagged).double().cpu()
        sums += reduced[:3]
        stop_seen = stop_seen or float(reduced[3]) > 0
    sums /= group
    if not torch.isfinite(sums).all():
        raise NonFiniteLoss(
            f"non-finite loss at iteration {pos.iteration + 1} (cls {sums[0]:.4g}, bbox {sums[1]:.4g}, "
            f"centerness {sums[2]:.4g}); stopped, {run.latest} is the last good checkpoint "
            f"(try a lower {param('lr')}, a longer warmup, or {param('amp')} none)")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return IterationResult(lr=lr, losses=sums, micro_steps=group, images=n_images, skipped=skipped,
                           stop=stop_seen)


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """The images on `device` (asynchronously: on CUDA the loader pins them); the targets stay on
    the host, where the model checks them, pads them into pinned buffers and uploads each padded
    tensor in one asynchronous copy (under DDP, DistributedDataParallel moves them first)."""
    return batch["images"].to(device, non_blocking=True), batch["targets"]
