"""The whole training step in CUDA graphs (`cuda_graphs`): forward, losses, backward and the SGD
step replayed as one graph per padded batch shape and GT bucket, where the eager step launches
about a thousand kernels from Python.

Captured by hand (`torch.cuda.CUDAGraph`), not compiled (`torch.compile(mode="reduce-overhead")`):
- a replay runs the very kernels the eager step launches, in the same order, on the same values,
  so it computes what the eager step computes: bit for bit where two eager steps agree bit for
  bit (the CPU test runs the captured body eagerly against the step; on the GPU, kernels that
  add with atomics differ from run to run in the last bits, and a graph run is held to the gap
  between two eager runs). The trajectory equal to MMDetection's stays as it is. Inductor would
  fuse the elementwise work and change its rounding;
- capturing records one step per shape; compiling the forward and backward would cost compile
  time per shape on top (neither measured here yet: `atss bench train --cuda-graphs` reports the
  capture seconds), time a short device call may not have.

What a graph holds and what it reads:
- static inputs, one set per graph, filled before each replay: the uint8 pixels [B, 3, H, W] and
  image sizes [B, 2] (normalised and padded inside the graph, `transforms.normalize_padded`), and
  the GT padded to a bucket of `graph_box_buckets` rows (`pad_targets(rows=...)`; the assignment
  and the losses never read a row past an image's own count, so the bucket changes no value).
  A batch with more GTs than the largest bucket runs eager;
- the learning rate as the Python number the fused SGD kernel takes: a graph belongs to one lr.
  While the lr changes (the linear warm-up, 500 of the 1x schedule's 90k iterations) the step
  runs eager; a new lr (warm-up's end, each milestone) drops the cached graphs;
- the parameters, momentum buffers and BatchNorm buffers, in place: they live outside the graphs'
  memory, made by the eager steps (a shape is captured only after one eager step of it, which
  also makes cuDNN pick its algorithms and the momentum buffers exist before any capture).

Every step of a graph run, eager or replayed, runs on one side stream (`on_stream`): the stream
the graphs are captured on, so that what eager steps set up per stream (cuBLAS workspaces) is
there at capture. The default stream waits for it on the device, not the host.

Memory: all graphs capture into one private pool. Nothing a graph allocates is read after
the next replay of any graph: its output (the three loss terms) is copied off on the stream
before the next replay is queued, and the gradients are written and consumed inside it. So
graphs may reuse one another's blocks: the pool is about one step's activations, not one per
graph. The gradients a capture leaves in `.grad` are dropped after it, so eager steps allocate
their own.

Counted for metrics.jsonl (`summary`): replays, captures and their seconds, the graphs held,
and the eager steps by reason: "new_lr" (the first step at a learning rate: the run's first, each
of the warm-up's, the first after it and after each milestone), "warm_up" (the first step of a
shape), "boxes" (more GTs than the largest bucket), "cache_full" (`graph_cache` graphs held).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from atss_cli.errors import AtssError, param

if TYPE_CHECKING:
    from atss_cli.config import TrainConfig
    from atss_cli.training.run import TrainRun

EAGER_REASONS = ("new_lr", "warm_up", "boxes", "cache_full")


def check_graphs_fit(cfg: TrainConfig, device: torch.device, world_size: int, accumulate: int) -> None:
    """A one-line AtssError saying why `cuda_graphs` cannot run with this setting, if it cannot."""
    why = _unfit(cfg, device, world_size, accumulate)
    if why is not None:
        raise AtssError(f"{param('cuda_graphs')} {why}")


def _unfit(cfg: TrainConfig, device: torch.device, world_size: int, accumulate: int) -> str | None:
    if world_size > 1:
        # DDP's bucketed all_reduce in a captured backward needs its own warm-up protocol
        # (constructed on a side stream, 11 eager DDP steps); not done yet.
        return f"needs one process, got {world_size}"
    if accumulate != 1:
        return f"needs {param('accumulate')} 1, got {accumulate} (give it, with a larger {param('batch')} if wanted)"
    if cfg.amp == "fp16":
        # GradScaler reads its found-inf flag on the host to skip a step.
        return f"needs {param('amp')} none or bf16, got fp16"
    if device.type != "cuda":
        return f"needs a CUDA device, got {device.type}"
    return None


def bucket_rows(count: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding `count` GT boxes (at least one row), or None past the largest."""
    need = max(1, int(count))
    return next((b for b in buckets if b >= need), None)


@dataclass
class StaticInputs:
    """What a graph reads, filled before each replay (device tensors at fixed addresses)."""

    pixels: torch.Tensor      # uint8 [B, 3, H, W]
    sizes: torch.Tensor       # int64 [B, 2]: each image's (h, w) before padding
    gt_boxes: torch.Tensor    # float32 [B, rows, 4]
    gt_labels: torch.Tensor   # int64 [B, rows]
    num_gt: torch.Tensor      # int64 [B]

    @classmethod
    def empty(cls, pixel_shape: Sequence[int], rows: int, device: torch.device) -> StaticInputs:
        b = int(pixel_shape[0])
        return cls(pixels=torch.empty(tuple(pixel_shape), dtype=torch.uint8, device=device),
                   sizes=torch.empty((b, 2), dtype=torch.int64, device=device),
                   gt_boxes=torch.empty((b, rows, 4), dtype=torch.float32, device=device),
                   gt_labels=torch.empty((b, rows), dtype=torch.int64, device=device),
                   num_gt=torch.empty((b,), dtype=torch.int64, device=device))

    def fill(self, batch: dict, num_classes: int) -> None:
        """Copy a loader batch in (asynchronously: the loader pins its batches), its host targets
        checked first as the eager step checks them (a one-line AtssError)."""
        from atss_cli.model.targets import check_targets, pad_targets

        targets = batch["targets"]
        check_targets(targets, num_classes)
        sizes = batch["image_sizes"]
        if self.pixels.is_cuda and not sizes.is_pinned():
            sizes = sizes.pin_memory()
        self.pixels.copy_(batch["images"], non_blocking=True)
        self.sizes.copy_(sizes, non_blocking=True)
        pad_targets(targets, self.pixels.device, out=(self.gt_boxes, self.gt_labels, self.num_gt))


def step_on_static(run: TrainRun, static: StaticInputs) -> torch.Tensor:
    """One training iteration on the static inputs, device work only: normalise and pad, forward,
    losses, backward, optimizer step. Returns float32 [3] (LOSS_KEYS). The captured body; eagerly
    it is the eager step's arithmetic (`step.train_iteration` with one micro-batch), which the tests
    hold it to on the CPU. Autocast's weight cache is off: a capture must not keep casts made
    outside it."""
    from atss_cli.data.transforms import normalize_padded
    from atss_cli.training.step import loss_terms

    model = run.model
    images = normalize_padded(static.pixels, static.sizes).contiguous(memory_format=run.memory_format)
    amp = run.amp_dtype
    with torch.autocast(images.device.type, dtype=amp, enabled=amp is not None, cache_enabled=False):
        outputs = model(images)
        extent = model.anchor_generator.extents(static.sizes, images.device)
        losses = model.loss_from_padded(*outputs, static.gt_boxes, static.gt_labels, static.num_gt, extent)
    terms = loss_terms(losses)
    run.scaler.scale(terms.sum() / 1).backward()   # "/ 1": the eager step's "/ group" (no rounding)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return terms


@dataclass
class _Graph:
    graph: object               # torch.cuda.CUDAGraph (or a test's stand-in)
    static: StaticInputs
    terms: torch.Tensor         # the graph's output, float32 [3]
    keep: tuple                 # tensors made outside the graph that its replays read (the anchors)


class GraphedSteps:
    """The graph cache of one training run; `step` replays (capturing first when due) or says
    the caller must run the eager step.

    `capture(body) -> (graph, output)` makes a graph of `body()`; the default captures a
    `torch.cuda.CUDAGraph` on this object's stream and pool. Tests on the CPU pass a stand-in
    that re-runs `body` on replay, to check everything around the capture.
    """

    def __init__(self, device: torch.device, *, max_graphs: int, box_buckets: Sequence[int], capture=None):
        self.device = device
        self.max_graphs = int(max_graphs)
        self.box_buckets = tuple(int(b) for b in box_buckets)
        self._capture_fn = capture or self._cuda_capture
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.pool = None
        self.graphs: dict[tuple, _Graph] = {}
        self.warm: set[tuple] = set()
        self.lr: float | None = None
        self.replays = 0
        self.captures = 0
        self.capture_s = 0.0
        self.eager: Counter = Counter()

    @contextlib.contextmanager
    def on_stream(self):
        """Run the enclosed step on the graphs' stream, ordered after the default stream's work
        and before what the default stream queues next (device-side waits, no host sync)."""
        if self.stream is None:
            yield
            return
        outer = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(outer)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:   # also on Ctrl-C: the checkpoint the loop then saves reads what this step wrote
            outer.wait_stream(self.stream)

    def step(self, run: TrainRun, batch: dict, lr: float) -> torch.Tensor | None:
        """The iteration's loss terms float32 [3] from a replay, or None: the caller runs this
        batch's eager step (counted here, by reason)."""
        targets = batch["targets"]
        rows = bucket_rows(max([0] + [len(t["labels"]) for t in targets]), self.box_buckets)
        key = (tuple(batch["images"].shape), rows)
        if batch["images"].dtype != torch.uint8:
            raise AtssError("internal: the CUDA-graph step takes the loader's uint8 batches")
        if lr != self.lr:
            self._drop_graphs()
            self.lr = lr
            return self._eager("new_lr", key)
        if rows is None:
            return self._eager("boxes", None)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.warm:
                return self._eager("warm_up", key)
            if len(self.graphs) >= self.max_graphs:
                return self._eager("cache_full", None)
            entry = self._capture(run, key)
        entry.static.fill(batch, run.model.num_classes)
        entry.graph.replay()
        self.replays += 1
        return entry.terms

    def summary(self) -> dict:
        return {"replays": self.replays, "captures": self.captures, "capture_s": round(self.capture_s, 3),
                "graphs": len(self.graphs), "eager": {r: self.eager[r] for r in EAGER_REASONS if self.eager[r]}}

    def _eager(self, reason: str, key) -> None:
        self.eager[reason] += 1
        if key is not None and key[1] is not None:
            self.warm.add(key)
        return None

    def _drop_graphs(self) -> None:
        self.graphs.clear()
        self.pool = None   # released once no graph holds it

    def _capture(self, run: TrainRun, key: tuple) -> _Graph:
        t0 = time.perf_counter()
        pixel_shape, rows = key
        static = StaticInputs.empty(pixel_shape, rows, self.device)   # filled by `step` before each replay
        # What the body would otherwise make and cache inside the capture (its memory would be the
        # graph's, its values written only at replay): the anchors and normalising constants,
        # made now and kept by the entry (the anchor cache may drop its own reference later).
        from atss_cli.data.transforms import normalize_constants

        device = static.pixels.device   # with its index: the anchor cache's key names it
        keep = (run.model.anchor_generator.grid(run.model.feature_sizes(*pixel_shape[-2:]), device),
                normalize_constants(device))
        run.optimizer.zero_grad(set_to_none=True)
        graph, terms = self._capture_fn(lambda: step_on_static(run, static))
        # The graph's gradients stay its own; an eager step allocates fresh ones.
        run.optimizer.zero_grad(set_to_none=True)
        entry = _Graph(graph=graph, static=static, terms=terms, keep=keep)
        self.graphs[key] = entry
        self.captures += 1
        self.capture_s += time.perf_counter() - t0
        return entry

    def _cuda_capture(self, body):
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph synchronises the device before capturing: a capture is a host sync,
        # replays are not. "thread_local": the DataLoader's pin-memory thread allocates pinned
        # memory meanwhile, which the default ("global") mode would make fail.
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            terms = body()
        return graph, terms
