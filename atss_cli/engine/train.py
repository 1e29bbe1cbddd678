"""The training loop: the 1x recipe, resumable to the iteration, one process or many.

`train(cfg, reporter)` runs in every process (torchrun sets the environment); rank 0 writes the
work dir. What the user sees goes through `reporter` (the CLI's), never print().

Work dir layout:
  config.json     the resolved TrainConfig plus derived facts (world size, accumulation, lr)
  latest.pth      the resume point (atomic), epoch_N.pth per epoch
  metrics.jsonl   one JSON record per iteration ("train") and per evaluation ("val")
  curves.png      loss and mAP curves, redrawn after each epoch
  results_epoch_N.json  detections of each evaluation (COCO result format)
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from atss_cli.atomic import atomic_write_text
from atss_cli.config import TrainConfig
from atss_cli.engine import checkpoint as ckpt_io
from atss_cli.engine import distributed
from atss_cli.engine.device import resolve_device
from atss_cli.engine.schedule import accumulation_steps, batch_note, learning_rate
from atss_cli.errors import AtssError


class Reporter(Protocol):
    def info(self, message: str) -> None: ...
    def start(self, *, total_iters: int, start_iter: int, iters_per_epoch: int) -> None: ...
    def iteration(self, record: dict) -> None: ...
    def evaluated(self, record: dict) -> None: ...
    def close(self) -> None: ...


class SilentReporter:
    def info(self, message: str) -> None:
        pass

    def start(self, **kwargs) -> None:
        pass

    def iteration(self, record: dict) -> None:
        pass

    def evaluated(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TrainingInterrupted(AtssError):
    """Ctrl-C: the checkpoint is saved; the same command resumes."""

    exit_code = 130


class NonFiniteLoss(AtssError):
    """A loss became NaN or infinite; the last good checkpoint is left as it was."""


class _LossModule(torch.nn.Module):
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


def level_sizes(height: int, width: int, num_levels: int = 5) -> list[tuple[int, int]]:
    """Feature-map sizes of P3..P7 for a padded [H, W] input: every stride-2 layer (stem conv,
    max pool, the first conv of layer2-4, the FPN's extra convs; kernel 3 or 7, padding 1 or 3)
    gives ceil(size / 2); P3 is after three of them."""
    sizes, h, w = [], height, width
    for level in range(3 + num_levels - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
        if level >= 2:
            sizes.append((h, w))
    return sizes


@torch.no_grad()
def normaliser_sums(model, images: torch.Tensor, targets) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """What the ATSS loss divides by, summed over one micro-batch, before any forward pass (the
    assignment does not depend on predictions): float32 [2] = (sum over images of
    max(#positives, 1), sum of the positives' centerness targets), and the feature sizes used."""
    from atss_cli.model.loss import loss_normalisers

    sizes = level_sizes(*images.shape[-2:], num_levels=len(model.anchor_generator.strides))
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
class Position:
    epoch: int = 0        # 0-based epoch in progress
    step: int = 0         # micro-steps (loader batches) consumed in that epoch
    iteration: int = 0    # optimizer steps taken in the whole run


def find_pretrained(depth: int, explicit: str = "", hub_dir: str | Path | None = None) -> Path | None:
    """torchvision's IMAGENET1K_V1 ResNet-`depth` file (`resnet50-0676ba61.pth`), checked by content:
    `explicit` (the file, or a folder holding it), else the torch hub cache's `checkpoints/`;
    None when neither has it. Another file of the family (V2 `resnet50-11ad3fa6.pth`) is an
    AtssError naming the file wanted, never taken instead."""
    from atss_cli.model.checkpoint import TORCHVISION_URL, check_imagenet_file, imagenet_file_name

    want = imagenet_file_name(depth)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            if not (path / want).is_file():
                raise AtssError(f"--pretrained {explicit}: no {want} in that folder "
                                f"(torchvision's IMAGENET1K_V1 ResNet-{depth}: {TORCHVISION_URL}{want})")
            path = path / want
        elif not path.is_file():
            raise AtssError(f"--pretrained {explicit}: no such file")
        check_imagenet_file(path, depth)
        return path
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
    path = hub / want
    if path.is_file():
        check_imagenet_file(path, depth)
        return path
    others = sorted(hub.glob(f"resnet{depth}-*.pth")) if hub.is_dir() else []
    if others:
        raise AtssError(f"{others[0]} is not the recipe's ImageNet weights: put torchvision's IMAGENET1K_V1 "
                        f"file {want} ({TORCHVISION_URL}{want}) in {hub} or give it with --pretrained, "
                        "or train from random weights with --from-scratch")
    return None


def pretrained_weights(cfg: TrainConfig, hub_dir: str | Path | None = None) -> Path | None:
    """The ImageNet file this run starts from, or None for random init: an AtssError, saying where
    to put the file, when the config freezes stages or BatchNorm (which assume pretrained weights)
    and the file is not there, unless `cfg.from_scratch`."""
    from atss_cli.model.checkpoint import TORCHVISION_URL, imagenet_file_name

    if cfg.from_scratch or cfg.load_from:
        return None
    path = find_pretrained(cfg.depth, cfg.pretrained, hub_dir)
    if path is None and cfg.assumes_imagenet:
        hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir()) / "checkpoints"
        want = imagenet_file_name(cfg.depth)
        raise AtssError(f"frozen_stages={cfg.frozen_stages} norm_eval={cfg.norm_eval} assume ImageNet weights: "
                        f"put {want} ({TORCHVISION_URL}{want}) in {hub} or give it with --pretrained, "
                        "or train from random weights with --from-scratch")
    return path


def _to_device(batch: dict, device: torch.device) -> tuple[torch.Tensor, list[dict]]:
    """The images on `device` (asynchronously: on CUDA the loader pins them); the targets stay on
    the host, where the model checks them, pads them into pinned buffers and uploads each padded
    tensor in one asynchronous copy (under DDP, DistributedDataParallel moves them first)."""
    return batch["images"].to(device, non_blocking=True), batch["targets"]


def _read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line torn by a kill: everything after it is stale anyway
    return records


RUN_FILES = ("latest.pth", "config.json", "metrics.jsonl", "curves.png")
ARCH_FIELDS = ("depth", "fpn_channels", "head_channels", "stacked_convs")


def _archive_previous_run(work: Path) -> Path | None:
    """Move an earlier run's files aside (never delete them) so a fresh start does not mix with it."""
    files = [work / n for n in RUN_FILES if (work / n).exists()] + sorted(work.glob("epoch_*.pth"))
    files += sorted(work.glob("results_epoch_*.json"))
    if not files:
        return None
    archive = work / time.strftime("previous_run_%Y%m%d-%H%M%S")
    archive.mkdir()
    for f in files:
        f.rename(archive / f.name)
    return archive


def _check_resumable(state: dict, cfg: TrainConfig, global_batch: int, latest: Path) -> list[str]:
    """Refuse a resume that cannot continue the same run; return the config fields that changed."""
    saved = state.get("config") or {}
    for key in ARCH_FIELDS:
        if key in saved and saved[key] != getattr(cfg, key):
            raise AtssError(f"{latest} is a run with {key}={saved[key]}, this command asks {key}={getattr(cfg, key)}; "
                            "use another --work-dir, or --no-resume to start afresh (the old run is kept)")
    if state["step"] > 0 and state.get("global_batch", global_batch) != global_batch:
        raise AtssError(f"{latest} stopped inside an epoch with {state['global_batch']} images per step; this "
                        f"command has {global_batch} (processes x --batch-per-gpu): resume with the same "
                        "layout, or start from its weights with --load-from in another --work-dir")
    ignore = {"work_dir", "coco", "train_ann", "train_images", "val_ann", "val_images", "cache_dir", "workers",
              "log_interval", "max_iters", "eval_interval", "pretrained", "load_from", "from_scratch", "device"}
    return sorted(k for k, v in saved.items() if k not in ignore and k in cfg.to_dict()
                  and _plain(v) != _plain(getattr(cfg, k)))


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _truncate_metrics(path: Path, pos: Position) -> None:
    """Drop records written after the checkpoint we resume from, so the log reads as one run."""
    keep = [r for r in _read_records(path)
            if (r.get("kind") == "train" and r["iteration"] <= pos.iteration)
            or (r.get("kind") == "val" and r["epoch"] <= pos.epoch)]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def train(cfg: TrainConfig, reporter: Reporter | None = None, *, resume: bool = True) -> dict:
    """Train per `cfg`; returns a summary (last iteration, final metrics, work dir)."""
    from atss_cli.data import build_train_loader, load_split
    from atss_cli.model import build_atss, load_backbone, load_checkpoint

    reporter = reporter or SilentReporter()
    info = distributed.init_from_env(resolve_device(cfg.device).type)
    # A scheduler's SIGTERM (preemption) stops a single-process run like Ctrl-C: save, then exit.
    # Under torchrun the agent owns SIGTERM and stops every rank together.
    previous = None
    if not info.enabled and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _train(cfg, reporter, info, resume, build_train_loader, load_split, build_atss,
                      load_backbone, load_checkpoint)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        reporter.close()
        distributed.shutdown()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def load_from_line(path, report, num_classes: int) -> str:
    """The one line `--load-from` says: what was taken from the file and what starts afresh."""
    line = f"weights from {path}: "
    if report.skipped:
        old = report.file_classes if report.file_classes is not None else "?"
        line += f"all but bbox_head.atss_cls ({old} -> {num_classes} classes, freshly initialised)"
    else:
        line += f"all {report.loaded} tensors ({num_classes} classes)"
    if report.unexpected:
        line += f"; {len(report.unexpected)} extra entries ignored"
    return line


def _dataset_opener(cfg: TrainConfig, load_split):
    """(open(which) -> CocoCache or None, name(which) -> str) for which in ("train", "val"):
    the COCO root's splits, or the JSON/folder pairs of any COCO-format dataset."""
    from atss_cli.data.cache import load_ann

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else None
    if cfg.coco:
        splits = {"train": cfg.train_split, "val": cfg.val_split}
        return (lambda which: load_split(Path(cfg.coco), splits[which], cache_dir) if splits[which] else None,
                lambda which: splits[which])
    files = {"train": (cfg.train_ann, cfg.train_images), "val": (cfg.val_ann, cfg.val_images)}
    return (lambda which: load_ann(Path(files[which][0]), Path(files[which][1]), cache_dir)
            if files[which][0] else None,
            lambda which: files[which][0])


def _open_datasets(cfg: TrainConfig, info, load_split):
    """(train set, val set or None); rank 0 builds the annotation caches, the others open them
    once they are there. The val set must have the train set's categories (same ids, names, order)."""
    from atss_cli.config import check_data_flags

    check_data_flags(cfg)
    open_set, name = _dataset_opener(cfg, load_split)
    sets = {}
    for which in ("train", "val") if cfg.eval_interval else ("train",):
        if info.is_main:
            sets[which] = open_set(which)
        distributed.barrier()
        if not info.is_main:
            sets[which] = open_set(which)
    train_set, val_set = sets["train"], sets.get("val")
    if val_set is not None and list(val_set.categories) != list(train_set.categories):
        raise AtssError(f"{name('val')} and {name('train')} list different categories "
                        f"({_category_diff(train_set.categories, val_set.categories)}); "
                        "give both files the same categories list")
    return train_set, val_set


def _category_diff(train: list[dict], val: list[dict], labels=("train only", "val only")) -> str:
    t = [(c["id"], c["name"]) for c in train]
    v = [(c["id"], c["name"]) for c in val]
    only_t, only_v = [x for x in t if x not in v], [x for x in v if x not in t]
    if not only_t and not only_v:
        return "same entries in another order"
    parts = []
    if only_t:
        parts.append(f"{labels[0]}: " + ", ".join(f"{i} {n!r}" for i, n in only_t[:5]))
    if only_v:
        parts.append(f"{labels[1]}: " + ", ".join(f"{i} {n!r}" for i, n in only_v[:5]))
    return "; ".join(parts)


def _train(cfg, reporter, info, resume, build_train_loader, load_split, build_atss, load_backbone, load_checkpoint):
    device = resolve_device(cfg.device, info.local_rank)
    work = Path(cfg.work_dir)
    if info.is_main:
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob(".*.tmp"):  # left by a kill in the middle of an atomic write
            stale.unlink(missing_ok=True)
    torch.manual_seed(cfg.seed)
    latest = work / ckpt_io.LATEST
    resuming = resume and latest.exists()
    # Before any data is read: a run that needs ImageNet weights and has none stops at once.
    pretrained = None if resuming else pretrained_weights(cfg)

    train_set, val_set = _open_datasets(cfg, info, load_split)
    model = build_atss(num_classes=train_set.num_classes, **cfg.model_kwargs)
    if cfg.load_from:
        report = load_checkpoint(model, Path(cfg.load_from), skip_mismatched=True)
        reporter.info(load_from_line(cfg.load_from, report, train_set.num_classes))
    elif pretrained is not None:
        load_backbone(model, pretrained)
        reporter.info(f"backbone: ImageNet weights from {pretrained}")
    elif not resuming:
        from atss_cli.model.checkpoint import imagenet_file_name

        reporter.info("backbone: random init" + (" (--from-scratch)" if cfg.from_scratch else
                                                  f" (no {imagenet_file_name(cfg.depth)} found)"))
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        model.to(memory_format=memory_format)

    loader, sampler = build_train_loader(
        train_set, batch_per_rank=cfg.batch_per_gpu, world_size=info.world_size, rank=info.rank,
        seed=cfg.seed, workers=cfg.workers, scale=tuple(cfg.scale), flip_prob=cfg.flip_prob,
        max_corrupt=cfg.max_bad_images, pin_memory=device.type == "cuda")
    steps_per_epoch = len(sampler)
    if steps_per_epoch == 0:
        raise AtssError(f"{cfg.train_split if cfg.coco else cfg.train_ann}: {len(train_set.train_indices())} "
                        "usable training images, "
                        f"fewer than one global batch of {cfg.batch_per_gpu * info.world_size}")
    accumulate = accumulation_steps(cfg.accumulate, base_batch=cfg.base_batch,
                                    batch_per_gpu=cfg.batch_per_gpu, world_size=info.world_size)
    accumulate = min(accumulate, steps_per_epoch)
    total_batch = cfg.batch_per_gpu * info.world_size * accumulate
    base_lr = cfg.lr * total_batch / cfg.base_batch if cfg.scale_lr else cfg.lr
    iters_per_epoch = math.ceil(steps_per_epoch / accumulate)
    total_iters = iters_per_epoch * cfg.epochs
    if cfg.max_iters:
        total_iters = min(total_iters, cfg.max_iters)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)

    pos = Position()
    global_batch = cfg.batch_per_gpu * info.world_size
    if resuming:
        state = ckpt_io.load_resume(latest)
        changed = _check_resumable(state, cfg, global_batch, latest)
        saved_categories = state.get("categories")
        if saved_categories is not None and list(saved_categories) != list(train_set.categories):
            diff = _category_diff(saved_categories, train_set.categories, ("run only", "data only"))
            raise AtssError(f"{latest} is a run on other categories ({diff}); "
                            "use another --work-dir, or --no-resume to start afresh (the old run is kept)")
        if changed:
            reporter.info(f"resuming with changed settings: {', '.join(changed)}")
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        pos = Position(epoch=state["epoch"], step=state["step"], iteration=state["iteration"])
        if state.get("rng") and state.get("world_size", 1) == info.world_size:
            rng = state["rng"][info.rank] if isinstance(state["rng"], list) else state["rng"]
            ckpt_io.set_rng_state(rng)
        if info.is_main:
            _truncate_metrics(work / "metrics.jsonl", pos)
        reporter.info(f"resumed from {latest}: epoch {pos.epoch + 1}, iteration {pos.iteration}")
    elif info.is_main:
        archive = _archive_previous_run(work)
        if archive is not None:
            reporter.info(f"starting afresh; the earlier run's files are kept in {archive}")
    distributed.barrier()

    derived = {"world_size": info.world_size, "accumulate": accumulate, "total_batch": total_batch,
               "lr": base_lr, "iters_per_epoch": iters_per_epoch, "total_iters": total_iters,
               "num_classes": train_set.num_classes, "train_images": len(train_set.train_indices()),
               "device": str(device)}
    if info.is_main:
        atomic_write_text(work / "config.json",
                                  json.dumps({**cfg.to_dict(), "derived": derived}, indent=2) + "\n")
    reporter.info(f"{info.world_size} process(es) x {cfg.batch_per_gpu} images x {accumulate} accumulation "
                  f"= total batch {total_batch}, lr {base_lr:g}, {iters_per_epoch} iterations/epoch")
    note = batch_note(total_batch, base_batch=cfg.base_batch, lr=base_lr, base_lr=cfg.lr, scale_lr=cfg.scale_lr)
    if note:
        reporter.info(note)

    loss_module = _LossModule(model)
    if info.enabled:
        loss_module = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None)

    writer = _tensorboard(work) if info.is_main else None
    metrics_path = work / "metrics.jsonl"
    bad_images = 0

    def save(position: Position, *, epoch_file: bool, collective: bool = True) -> None:
        # After an interrupt the other ranks may be gone: no collective call then.
        rng = ckpt_io.rng_state()
        if info.enabled and collective:
            gathered = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rng = gathered
        if not info.is_main:
            return
        state = {
            "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": position.epoch, "step": position.step, "iteration": position.iteration,
            "global_batch": global_batch,
            "sampler": {"epoch": position.epoch, "step": position.step}, "rng": rng,
            "world_size": info.world_size, "config": cfg.to_dict(), "categories": list(train_set.categories),
            "meta": {"derived": derived,
                                                                              "versions": ckpt_io.versions()},
        }
        ckpt_io.atomic_save(state, latest)
        if epoch_file:
            ckpt_io.atomic_save({"state_dict": state["state_dict"], "config": state["config"],
                                 "categories": state["categories"], "meta": state["meta"],
                                 "epoch": position.epoch}, work / f"epoch_{position.epoch}.pth")

    reporter.start(total_iters=total_iters, start_iter=pos.iteration, iters_per_epoch=iters_per_epoch)
    last_metrics: dict = {}

    def run_evaluation(epoch: int) -> dict:
        metrics = _evaluate(model, val_set, cfg, device, work, epoch, info)
        record = {"kind": "val", "epoch": epoch, "iteration": pos.iteration, **metrics}
        if info.is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in metrics.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f"val/{key}", value, pos.iteration)
        reporter.evaluated(record)
        model.train()
        return metrics

    def evaluation_due(epoch: int) -> bool:
        return bool(val_set is not None and cfg.eval_interval and epoch > 0
                    and (epoch % cfg.eval_interval == 0 or epoch == cfg.epochs))

    if pos.step == 0 and evaluation_due(pos.epoch):
        # Resumed from an epoch checkpoint whose evaluation was cut short: run it now.
        done_evals = {r["epoch"] for r in _read_records(metrics_path) if r.get("kind") == "val"}
        if pos.epoch not in distributed.broadcast_object(done_evals):
            last_metrics = run_evaluation(pos.epoch)
    model.train()
    window_start, window_images = time.perf_counter(), 0
    done = pos.iteration >= total_iters
    try:
        while not done and pos.epoch < cfg.epochs:
            sampler.load_state_dict({"epoch": pos.epoch, "step": pos.step})
            batches = iter(loader)
            while pos.step < steps_per_epoch and pos.iteration < total_iters:
                group = min(accumulate, steps_per_epoch - pos.step)
                lr = learning_rate(base_lr, iteration=pos.iteration, epoch=pos.epoch,
                                   warmup_iters=cfg.warmup_iters, warmup_ratio=cfg.warmup_ratio,
                                   milestones=tuple(cfg.milestones))
                for g in optimizer.param_groups:
                    g["lr"] = lr
                sums = torch.zeros(3, dtype=torch.float64)
                n_images = 0
                micro_batches = []
                for _ in range(group):
                    batch = next(batches)
                    bad_images += len(batch.get("skipped", ()))
                    images, targets = _to_device(batch, device)
                    micro_batches.append((images.contiguous(memory_format=memory_format), targets))
                scales, sizes = [None] * group, [None] * group
                if group > 1:
                    # The whole accumulated batch's normalisers, known before any backward.
                    pre = [normaliser_sums(model, images, targets) for images, targets in micro_batches]
                    scales = accumulation_scales(torch.stack([p[0] for p in pre]))
                    sizes = [p[1] for p in pre]
                for micro, (images, targets) in enumerate(micro_batches):
                    n_images += images.shape[0]
                    sync = micro == group - 1 or not info.enabled
                    ctx = contextlib.nullcontext() if sync else loss_module.no_sync()
                    with ctx:
                        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                            losses = loss_module(images, targets, scales[micro], sizes[micro])
                        terms = torch.stack([losses[k] for k in LOSS_KEYS]).float()
                        total = terms.sum()
                        scaler.scale(total / group).backward()
                    sums += distributed.all_reduce_mean(terms.detach()).double().cpu()
                sums /= group
                if not torch.isfinite(sums).all():
                    raise NonFiniteLoss(
                        f"non-finite loss at iteration {pos.iteration + 1} (cls {sums[0]:.4g}, bbox {sums[1]:.4g}, "
                        f"centerness {sums[2]:.4g}); stopped, {latest} is the last good checkpoint "
                        "(try a lower --lr, a longer warmup, or --amp none)")
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                pos.step += group
                pos.iteration += 1
                window_images += n_images * info.world_size

                record = {"kind": "train", "iteration": pos.iteration, "epoch": pos.epoch + 1,
                          "step": pos.step, "lr": lr, "loss": float(sums.sum()), "loss_cls": float(sums[0]),
                          "loss_bbox": float(sums[1]), "loss_centerness": float(sums[2])}
                if pos.iteration % cfg.log_interval == 0 or pos.iteration == total_iters or pos.step >= steps_per_epoch:
                    now = time.perf_counter()
                    record["images_per_s"] = window_images / max(now - window_start, 1e-9)
                    window_start, window_images = now, 0
                    if device.type == "cuda":
                        record["memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                if bad_images:
                    record["bad_images"] = bad_images
                if info.is_main:
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if writer is not None:
                        for key in ("loss", "loss_cls", "loss_bbox", "loss_centerness", "lr"):
                            writer.add_scalar(f"train/{key}", record[key], pos.iteration)
                reporter.iteration(record)
                if cfg.save_every_iters and pos.iteration % cfg.save_every_iters == 0 and pos.step < steps_per_epoch:
                    save(pos, epoch_file=False)

            if pos.step < steps_per_epoch:
                # Stopped by max_iters inside the epoch: keep the exact position.
                save(pos, epoch_file=False)
                break
            finished_epoch = pos.epoch + 1
            pos = Position(epoch=finished_epoch, step=0, iteration=pos.iteration)
            save(pos, epoch_file=cfg.checkpoint_interval > 0 and (
                finished_epoch % cfg.checkpoint_interval == 0 or finished_epoch == cfg.epochs))
            if evaluation_due(finished_epoch):
                last_metrics = run_evaluation(finished_epoch)
            if info.is_main:
                _draw_curves(metrics_path, work / "curves.png")
            if pos.iteration >= total_iters:
                break
            distributed.barrier()
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM anywhere in the loop: `pos` is the last completed iteration (or epoch end).
        save(pos, epoch_file=False, collective=False)
        raise TrainingInterrupted(f"interrupted at iteration {pos.iteration}; checkpoint saved to {latest}; "
                                  "run the same command to resume") from None

    if writer is not None:
        writer.close()
    return {"work_dir": str(work), "iteration": pos.iteration, "epoch": pos.epoch, "metrics": last_metrics,
            "bad_images": bad_images, "derived": derived}


def _evaluate(model, val_set, cfg, device, work: Path, epoch: int, info) -> dict:
    from atss_cli.engine.evaluate import evaluate

    model.eval()
    with torch.no_grad():
        metrics = evaluate(model, val_set, device=device, scale=tuple(cfg.scale), workers=cfg.workers,
                           evaluator=cfg.evaluator, results_path=work / f"results_epoch_{epoch}.json")
    return metrics or {}


def _tensorboard(work: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(work / "tensorboard"))


def _draw_curves(metrics_path: Path, out: Path) -> None:
    """Loss per iteration and mAP per epoch, as one PNG (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return
    records = _read_records(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val" and "mAP" in r]
    if not train:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    its = [r["iteration"] for r in train]
    for key in ("loss", "loss_cls", "loss_bbox", "loss_centerness"):
        axes[0].plot(its, [r[key] for r in train], label=key, linewidth=1)
    axes[0].set_xlabel("iteration")
    axes[0].set_title("training loss")
    axes[0].legend()
    if val:
        axes[1].plot([r["epoch"] for r in val], [r["mAP"] for r in val], marker="o", label="mAP@[.5:.95]")
        if "mAP_50" in val[0]:
            axes[1].plot([r["epoch"] for r in val], [r["mAP_50"] for r in val], marker="o", label="mAP@0.5")
        axes[1].legend()
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(out)
