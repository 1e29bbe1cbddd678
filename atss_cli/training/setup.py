"""Everything a training run is built from, assembled before the first iteration: the work dir,
the datasets, the model and its starting weights, the loader, the batch plan, the optimizer,
and the resume (or the fresh start that archives an earlier run).

The order of the steps in `prepare_run` is part of the recipe: the seed is set before the model
is built (its random init), and a resume restores the RNG state after everything that draws
from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from atss_cli.atomic import atomic_write_text
from atss_cli import precision
from atss_cli.config import TrainConfig
from atss_cli.training import checkpoint as ckpt_io
from atss_cli.distributed import group as distributed
from atss_cli.device import resolve_device
from atss_cli.training.pretrained import pretrained_weights
from atss_cli.training.run_log import RunLog
from atss_cli.training.schedule import batch_note, plan_batches
from atss_cli.training.run import Position, TrainRun
from atss_cli.training.state import archive_previous_run, category_diff, restore, resume_drop_last
from atss_cli.training.graphs import GraphedSteps, check_graphs_fit
from atss_cli.training.step import LossModule
from atss_cli.errors import AtssError


def prepare_run(cfg: TrainConfig, reporter, info: distributed.DistInfo, resume: bool) -> TrainRun:
    from atss_cli.data import build_train_loader

    device = resolve_device(cfg.device, info.local_rank)
    work = Path(cfg.work_dir)
    if info.is_main:
        work.mkdir(parents=True, exist_ok=True)
        for stale in work.glob(".*.tmp"):  # left by a kill in the middle of an atomic write
            stale.unlink(missing_ok=True)
    torch.manual_seed(cfg.seed)
    resuming = resume and (work / ckpt_io.LATEST).exists()
    # Before any data is read: a run that needs ImageNet weights and has none stops at once.
    pretrained = None if resuming else pretrained_weights(cfg)

    train_set, val_set = open_datasets(cfg, info)
    model = _build_model(cfg, train_set.num_classes, pretrained, resuming, reporter)
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.channels_last:
        model.to(memory_format=memory_format)

    # A resume keeps the epoch-end rule its latest.pth was written under (one line if not the command's).
    drop_last, note = resume_drop_last(work / ckpt_io.LATEST, cfg) if resuming else (cfg.drop_last, None)
    if note:
        reporter.info(note)
    loader, sampler = build_train_loader(
        train_set, batch_per_rank=cfg.batch_per_gpu, world_size=info.world_size, rank=info.rank,
        seed=cfg.seed, workers=cfg.workers, scale=tuple(cfg.scale), flip_prob=cfg.flip_prob,
        max_corrupt=cfg.max_bad_images, drop_last=drop_last, pin_memory=device.type == "cuda",
        uint8_images=True)  # normalised on the device by the step (training/step.py batch_on_device)
    if len(sampler) == 0:
        raise AtssError(f"{cfg.train_split if cfg.coco else cfg.train_ann}: {len(train_set.train_indices())} "
                        "usable training images, "
                        f"fewer than one global batch of {cfg.batch_per_gpu * info.world_size}")
    plan = plan_batches(cfg, steps_per_epoch=len(sampler), world_size=info.world_size)
    if cfg.cuda_graphs:
        check_graphs_fit(cfg, device, info.world_size, plan.accumulate)

    optimizer = build_optimizer(model, lr=plan.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                fused=fused_sgd_fits(device, cfg.amp))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    amp_dtype = precision.amp_dtype(cfg.amp)
    derived = {"world_size": info.world_size, "accumulate": plan.accumulate, "total_batch": plan.total_batch,
               "lr": plan.base_lr, "iters_per_epoch": plan.iters_per_epoch, "total_iters": plan.total_iters,
               "num_classes": train_set.num_classes, "train_images": len(train_set.train_indices()),
               "drop_last": drop_last,
               "device": str(device)}
    run = TrainRun(cfg=cfg, info=info, device=device, work=work, train_set=train_set, val_set=val_set,
                   model=model, loss_module=model, optimizer=optimizer, scaler=scaler, amp_dtype=amp_dtype,
                   memory_format=memory_format, loader=loader, sampler=sampler, plan=plan, derived=derived,
                   log=RunLog(work, writes=info.is_main), start=Position())

    if resuming:
        run.start = restore(run, reporter)
    elif info.is_main:
        archive = archive_previous_run(work)
        if archive is not None:
            reporter.info(f"starting afresh; the earlier run's files are kept in {archive}")
    distributed.barrier()

    if info.is_main:
        atomic_write_text(work / "config.json", json.dumps({**cfg.to_dict(), "derived": derived}, indent=2) + "\n")
    reporter.info(f"{info.world_size} process(es) x {cfg.batch_per_gpu} images x {plan.accumulate} accumulation "
                  f"= total batch {plan.total_batch}, lr {plan.base_lr:g}, {plan.iters_per_epoch} iterations/epoch")
    note = batch_note(plan.total_batch, base_batch=cfg.base_batch, lr=plan.base_lr, base_lr=cfg.lr,
                      scale_lr=cfg.scale_lr)
    if note:
        reporter.info(note)

    if cfg.cuda_graphs:
        run.graphs = GraphedSteps(device, max_graphs=cfg.graph_cache, box_buckets=cfg.graph_box_buckets)
        reporter.info(f"CUDA graphs: one per padded batch shape and GT bucket "
                      f"({'/'.join(map(str, cfg.graph_box_buckets))} rows), at most {cfg.graph_cache}; "
                      "a shape's first step and steps at a changing lr (the warm-up) run eager")
    run.loss_module = LossModule(model)
    if info.enabled:
        run.loss_module = torch.nn.parallel.DistributedDataParallel(
            run.loss_module, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def build_optimizer(model: torch.nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    fused: bool) -> torch.optim.SGD:
    """The recipe's SGD (MMDetection's optim_wrapper: one group of every trained parameter, weight
    decay on all of them, no Nesterov, no dampening): torch's fused kernel when `fused`, else
    torch's default implementation (foreach on CUDA, the per-tensor loop on the CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True if fused else None)


def fused_sgd_fits(device: torch.device, amp: str | None) -> bool:
    """Fused SGD on CUDA (one kernel launch per step for every parameter, instead of a few per
    foreach chunk), except under fp16: there GradScaler hands a fused optimizer its found-inf
    flag, and torch's fused SGD kernel, on a step it skips, leaves the momentum it allocates on
    the first step uninitialised (an fp16 run skips its first steps while the scale settles).
    On the CPU the default loop is MMDetection's own path."""
    return device.type == "cuda" and precision.amp_dtype(amp) != torch.float16


def _build_model(cfg: TrainConfig, num_classes: int, pretrained: Path | None, resuming: bool, reporter):
    """The detector with its starting weights: --load-from's, the ImageNet backbone, or random
    (a resume loads its own weights later)."""
    from atss_cli.model import build_atss, load_backbone, load_checkpoint

    model = build_atss(num_classes=num_classes, **cfg.model_kwargs)
    if cfg.load_from:
        report = load_checkpoint(model, Path(cfg.load_from), skip_mismatched=True)
        reporter.info(load_from_line(cfg.load_from, report, num_classes))
    elif pretrained is not None:
        load_backbone(model, pretrained)
        reporter.info(f"backbone: ImageNet weights from {pretrained}")
    elif not resuming:
        from atss_cli.model.checkpoint import imagenet_file_name

        reporter.info("backbone: random init" + (" (--from-scratch)" if cfg.from_scratch else
                                                  f" (no {imagenet_file_name(cfg.depth)} found)"))
    return model


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


def _dataset_opener(cfg: TrainConfig):
    """(open(which) -> CocoCache or None, name(which) -> str) for which in ("train", "val"):
    the COCO root's splits, or the JSON/folder pairs of any COCO-format dataset."""
    from atss_cli.data import load_split
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


def open_datasets(cfg: TrainConfig, info: distributed.DistInfo):
    """(train set, val set or None); rank 0 builds the annotation caches, the others open them
    once they are there. The val set must have the train set's categories (same ids, names, order)."""
    from atss_cli.config import check_data_flags

    check_data_flags(cfg)
    open_set, name = _dataset_opener(cfg)
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
                        f"({category_diff(train_set.categories, val_set.categories)}); "
                        "give both files the same categories list")
    return train_set, val_set
