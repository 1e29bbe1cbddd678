"""What a training checkpoint saves and what a resume restores, in one place.

latest.pth (written atomically by rank 0, see checkpoint.py) holds the weights, the optimizer
and GradScaler state, the Position (epoch, micro-step in it, iteration), every rank's RNG
state, the images per micro-step and world size it was taken with, the config, the categories
and meta. A resume restores exactly those; the data order follows from the sampler's
(epoch, step) and the seed, so the run continues as if it had never stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from atss_cli.config import TrainConfig
from atss_cli.training import checkpoint as ckpt_io
from atss_cli.training.run import Position, TrainRun
from atss_cli.errors import AtssError, param


RUN_FILES = ("latest.pth", "config.json", "metrics.jsonl", "curves.png")
ARCH_FIELDS = ("depth", "fpn_channels", "head_channels", "stacked_convs")
# Fields a resume may change without a note: where things are, how much to log, how long to run.
_FREE_TO_CHANGE = {"work_dir", "coco", "train_ann", "train_images", "val_ann", "val_images", "cache_dir", "workers",
                   "log_interval", "max_iters", "eval_interval", "pretrained", "load_from", "from_scratch", "device",
                   "drop_last"}  # drop_last: a resume keeps the checkpoint's rule and says so (resume_drop_last)


def save_checkpoint(run: TrainRun, pos: Position, *, epoch_file: bool, collective: bool = True) -> None:
    """latest.pth at `pos` (and epoch_N.pth when `epoch_file`). A collective call: every rank
    gives its RNG state; rank 0 writes. `collective=False` after an interrupt, when the other
    ranks may be gone: rank 0 saves its own RNG state only."""
    rng = ckpt_io.rng_state()
    if run.info.enabled and collective:
        gathered = [None] * run.info.world_size
        torch.distributed.all_gather_object(gathered, rng)
        rng = gathered
    if not run.info.is_main:
        return
    state = {
        "state_dict": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "epoch": pos.epoch, "step": pos.step, "iteration": pos.iteration,
        "global_batch": run.plan.global_batch, "drop_last": run.sampler.drop_last,
        "sampler": {"epoch": pos.epoch, "step": pos.step}, "rng": rng,
        "world_size": run.info.world_size, "config": run.cfg.to_dict(),
        "categories": list(run.train_set.categories),
        "meta": {"derived": run.derived, "versions": ckpt_io.versions()},
    }
    ckpt_io.atomic_save(state, run.latest)
    if epoch_file:
        ckpt_io.atomic_save({"state_dict": state["state_dict"], "config": state["config"],
                             "categories": state["categories"], "meta": state["meta"],
                             "epoch": pos.epoch}, run.work / f"epoch_{pos.epoch}.pth")


def restore(run: TrainRun, reporter) -> Position:
    """Resume from latest.pth: refuse a file that cannot continue this run, then restore the
    weights, optimizer, GradScaler, position and this rank's RNG; the metrics log loses the
    records written after that checkpoint."""
    latest = run.latest
    state = ckpt_io.load_resume(latest)
    changed = check_resumable(state, run.cfg, run.plan.global_batch, latest)
    check_categories(state, run.train_set.categories, latest)
    if changed:
        reporter.info(f"resuming with changed settings: {', '.join(changed)}")
    run.model.load_state_dict(state["state_dict"])
    run.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    pos = Position(epoch=state["epoch"], step=state["step"], iteration=state["iteration"])
    # Each rank's own stream, when the run had as many ranks (a single dict: saved by rank 0
    # alone after an interrupt, or by a one-process run).
    if state.get("rng") and state.get("world_size", 1) == run.info.world_size:
        rng = state["rng"][run.info.rank] if isinstance(state["rng"], list) else state["rng"]
        ckpt_io.set_rng_state(rng)
    run.log.truncate(iteration=pos.iteration, epoch=pos.epoch)
    reporter.info(f"resumed from {latest}: epoch {pos.epoch + 1}, iteration {pos.iteration}")
    return pos


def resume_drop_last(latest: Path, cfg: TrainConfig) -> tuple[bool, str | None]:
    """(the epoch-end rule a resume from `latest` continues with, the one line saying so when it is
    not the command's). The rule sets the epoch's batches, so a run keeps the one it started with;
    a latest.pth without a "drop_last" entry was written when leftovers were always dropped."""
    try:  # memory-mapped: only the small entries are read here, restore() reads the file
        state = torch.load(latest, map_location="cpu", weights_only=False, mmap=True)
        saved = bool(state.get("drop_last", True))
        old_file = "drop_last" not in state
    except Exception:  # noqa: BLE001 - restore() says what is wrong with the file
        return cfg.drop_last, None
    if saved == cfg.drop_last:
        return saved, None
    rule = "dropped" if saved else "joined into batches"
    why = "was written before the drop_last setting existed" if old_file else f"was written with drop_last={saved}"
    return saved, (f"{latest} {why}: resuming under its rule, drop_last={str(saved).lower()} (each epoch's "
                   f"leftover images {rule}); --no-resume starts afresh with drop_last={str(cfg.drop_last).lower()}")


def check_resumable(state: dict, cfg: TrainConfig, global_batch: int, latest: Path) -> list[str]:
    """Refuse a resume that cannot continue the same run; return the config fields that changed."""
    saved = state.get("config") or {}
    for key in ARCH_FIELDS:
        if key in saved and saved[key] != getattr(cfg, key):
            raise AtssError(f"{latest} is a run with {key}={saved[key]}, this command asks {key}={getattr(cfg, key)}; "
                            f"use another {param('work_dir')}, or {param('no_resume')} to start afresh (the old run is kept)")
    if state["step"] > 0 and state.get("global_batch", global_batch) != global_batch:
        raise AtssError(f"{latest} stopped inside an epoch with {state['global_batch']} images per step; this "
                        f"command has {global_batch} (processes x {param('batch_per_gpu')}): resume with the same "
                        f"layout, or start from its weights with {param('load_from')} in another {param('work_dir')}")
    return sorted(k for k, v in saved.items() if k not in _FREE_TO_CHANGE and k in cfg.to_dict()
                  and _plain(v) != _plain(getattr(cfg, k)))


def check_categories(state: dict, categories: list[dict], latest: Path) -> None:
    saved = state.get("categories")
    if saved is not None and list(saved) != list(categories):
        diff = category_diff(saved, categories, ("run only", "data only"))
        raise AtssError(f"{latest} is a run on other categories ({diff}); "
                        f"use another {param('work_dir')}, or {param('no_resume')} to start afresh (the old run is kept)")


def category_diff(train: list[dict], val: list[dict], labels=("train only", "val only")) -> str:
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


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def archive_previous_run(work: Path) -> Path | None:
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
