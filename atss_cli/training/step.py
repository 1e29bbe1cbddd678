"""One optimizer iteration of the recipe: micro-batches in, one optimizer step out.

With gradient accumulation the iteration's micro-batches are all read first, the loss
normalisers of the whole accumulated batch are computed from their targets (the assignment
does not depend on predictions), and each micro-batch's loss is scaled so that the summed
gradient is that of one batch of the total size (see `accumulation_scales`). Under DDP only
the last micro-batch's backward synchronises gradients.

Nothing in an iteration waits for the device: `train_iteration` queues the work and returns
the averaged losses and stop flag still on their way to the host (`HostCopy`); the loop reads
them (`read_iteration`) once the next iteration is queued, so the GPU always has a step in hand
while the host prepares the next. Under fp16 one sync remains: GradScaler.step reads its
found-inf flag on the host to skip the step (fused SGD would take the flag on the device, but
torch's fused SGD kernel skips the step without initialising the momentum it allocates on the
first one, so fp16 keeps torch's default SGD; see setup.py).
"""

from __future__ import annotations

import contextlib
import itertools
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


class HostCopy:
    """A small device tensor on its way to the host: copied without waiting (on CUDA into pinned
    memory, with an event recorded after the copy), so that `get()` waits for that point of the
    stream only, never for the work queued after it. `.cpu()` would wait for the whole stream,
    next iteration included, and leave the GPU idle while the host queues the one after."""

    def __init__(self, value: torch.Tensor):
        self._event = None
        if value.device.type == "cuda":
            host = torch.empty(value.shape, dtype=value.dtype, pin_memory=True)
            value = host.copy_(value, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        self._value = value

    def get(self) -> torch.Tensor:
        if self._event is not None:
            self._event.synchronize()
        return self._value


@dataclass
class IterationResult:
    """One queued iteration. Its losses and stop flag are still on their way to the host when
    `train_iteration` returns: `read_iteration` gets them."""

    iteration: int        # this iteration's number (the position after it), as its messages say
    lr: float
    micro_steps: int      # loader batches this iteration consumed
    images: int           # images this process trained on
    skipped: int          # images the loader skipped (unreadable) in those batches
    values: HostCopy      # float64 [4], summed over micro-batches: LOSS_KEYS averaged over
                          # processes, and the stop flag averaged over them (> 0: one was asked to stop)
    peak_memory_mb: float | None = None  # CUDA: the allocator's peak up to this iteration's queuing
    graphed: bool = False  # replayed from a CUDA graph (training/graphs.py)
    graph_counts: dict | None = None  # GraphedSteps.summary() as this iteration was queued


@dataclass
class IterationValues:
    losses: torch.Tensor  # float64 [3] on the host: LOSS_KEYS
    stop: bool            # some process was asked to stop (its flag rides on the loss all_reduce)


def train_iteration(run: TrainRun, pos: Position, batches, stop: StopRequest) -> IterationResult:
    """Read this iteration's micro-batches from `batches`, backward each, take one optimizer step,
    and return without reading any value of it on the host (`read_iteration` does, later).

    The losses are averaged over processes with one all_reduce per micro-batch; a fourth value
    in it carries this process's stop flag, so every rank learns in the same iteration, at no
    extra collective, that one of them was signalled. The optimizer step is queued whatever the
    losses: a non-finite one is found by `read_iteration`, after this step and maybe the next
    were applied, so the loop saves a checkpoint only once every iteration before it was read.
    """
    plan = run.plan
    group = min(plan.accumulate, plan.steps_per_epoch - pos.step)
    lr = plan.lr(run.cfg, iteration=pos.iteration, epoch=pos.epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    graphs = run.graphs
    if graphs is None:
        return _eager_iteration(run, pos, batches, stop, group, lr)
    with graphs.on_stream():   # graph runs have one micro-batch an iteration (graphs.check_graphs_fit)
        batch = next(batches)
        terms = graphs.step(run, batch, lr)
        if terms is None:
            result = _eager_iteration(run, pos, itertools.chain([batch], batches), stop, group, lr)
        else:
            result = IterationResult(iteration=pos.iteration + 1, lr=lr, micro_steps=1,
                                     images=batch["images"].shape[0], skipped=len(batch.get("skipped", ())),
                                     values=HostCopy(_with_stop_flag(terms, stop)),
                                     peak_memory_mb=_peak_memory_mb(run.device), graphed=True)
    result.graph_counts = graphs.summary()
    return result


def _eager_iteration(run: TrainRun, pos: Position, batches, stop: StopRequest, group: int, lr: float
                     ) -> IterationResult:
    n_images, skipped = 0, 0
    micro_batches = []
    for _ in range(group):
        batch = next(batches)
        skipped += len(batch.get("skipped", ()))
        micro_batches.append(batch_on_device(batch, run.device, run.memory_format))
    scales, sizes = [None] * group, [None] * group
    if group > 1:
        # The whole accumulated batch's normalisers, known before any backward.
        pre = [normaliser_sums(run.model, images, targets) for images, targets in micro_batches]
        scales = accumulation_scales(torch.stack([p[0] for p in pre]))
        sizes = [p[1] for p in pre]
    summed = None
    for micro, (images, targets) in enumerate(micro_batches):
        n_images += images.shape[0]
        sync = micro == group - 1 or not run.info.enabled
        ctx = contextlib.nullcontext() if sync else run.loss_module.no_sync()
        with ctx:
            terms = micro_batch_losses(run.loss_module, images, targets, scales[micro], sizes[micro], run.amp_dtype)
            run.scaler.scale(terms.sum() / group).backward()
        reduced = _with_stop_flag(terms, stop)
        summed = reduced if summed is None else summed + reduced
    # Skipped by GradScaler (inf/NaN gradients under fp16): the lr above is the schedule's all the same.
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return IterationResult(iteration=pos.iteration + 1, lr=lr, micro_steps=group, images=n_images, skipped=skipped,
                           values=HostCopy(summed), peak_memory_mb=_peak_memory_mb(run.device))


def _with_stop_flag(terms: torch.Tensor, stop: StopRequest) -> torch.Tensor:
    """float64 [4]: a micro-batch's loss terms averaged over processes, with this process's stop
    flag riding along as a fourth value (padded on the device: no copy)."""
    flagged = torch.nn.functional.pad(terms.detach(), (0, 1), value=1.0 if stop.requested else 0.0)
    return distributed.all_reduce_mean(flagged).double()


def _peak_memory_mb(device: torch.device) -> float | None:
    """The CUDA allocator's peak so far, read as the iteration is queued: a host-side counter (no
    sync), which the late read would otherwise take after the next iteration's allocations."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def micro_batch_losses(loss_module: torch.nn.Module, images: torch.Tensor, targets, scale, sizes,
                       amp_dtype: torch.dtype | None) -> torch.Tensor:
    """float32 [3] (LOSS_KEYS) of one micro-batch: the forward pass and the losses, the step's
    device work before its backward. No value is read on the host here (the tests compile it
    with fullgraph=True)."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        losses = loss_module(images, targets, scale, sizes)
    return loss_terms(losses)


def loss_terms(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """float32 [3]: the loss dict's LOSS_KEYS in order."""
    return torch.stack([losses[k] for k in LOSS_KEYS]).float()


def read_iteration(result: IterationResult, latest) -> IterationValues:
    """The losses and stop flag of a queued iteration, on the host: waits for that iteration's
    all_reduce (not for anything queued after it). NonFiniteLoss naming the iteration when a loss
    is not finite; every rank alike (they read the same averaged values). `latest`: the
    checkpoint the message names, which the loop wrote before this iteration was queued."""
    values = result.values.get()
    # The mean over micro-batches on the host, in float64 as before: a CUDA division by a Python
    # number multiplies by its reciprocal, which can round otherwise.
    losses = values[:3] / result.micro_steps
    if not torch.isfinite(losses).all():
        raise NonFiniteLoss(
            f"non-finite loss at iteration {result.iteration} (cls {losses[0]:.4g}, bbox {losses[1]:.4g}, "
            f"centerness {losses[2]:.4g}); stopped, {latest} is the last good checkpoint "
            f"(try a lower {param('lr')}, a longer warmup, or {param('amp')} none)")
    return IterationValues(losses=losses, stop=bool(values[3] > 0))


def batch_on_device(batch: dict, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, list[dict]]:
    """(float32 [B, 3, H, W] normalised and zero-padded on `device`, targets). The images travel
    asynchronously (on CUDA the loader pins them); a uint8 batch (`uint8_images` loaders) is
    normalised and padded there (`transforms.normalize_padded`), a float32 one was on the host.
    The targets stay on the host, where the model checks them, pads them into pinned buffers
    and uploads each padded tensor in one asynchronous copy (under DDP,
    DistributedDataParallel moves them first)."""
    from atss_cli.data.transforms import normalize_padded

    images = batch["images"].to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        extents = batch["image_sizes"]
        if device.type == "cuda" and not extents.is_pinned():
            extents = extents.pin_memory()
        images = normalize_padded(images, extents.to(device, non_blocking=True))
    return images.contiguous(memory_format=memory_format), batch["targets"]
