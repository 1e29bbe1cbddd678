"""The training loop: the 1x recipe, resumable to the iteration, one process or many.

`train(cfg, reporter)` runs in every process (torchrun sets the environment); rank 0 writes the
work dir. What the user sees goes through `reporter` (the CLI's), never print().

Work dir layout:
  config.json     the resolved TrainConfig plus derived facts (world size, accumulation, lr)
  latest.pth      the resume point (atomic), epoch_N.pth per epoch
  metrics.jsonl   one JSON record per iteration ("train") and per evaluation ("val")
  curves.png      loss and mAP curves, redrawn after each epoch
  results_epoch_N.json  detections of each evaluation (COCO result format)

This file is the recipe (`_run_recipe`); its steps live beside it:
  train_setup.py  building a run: datasets, model and weights, loader, batch plan, optimizer
  train_state.py  what a checkpoint saves and what a resume restores
  train_step.py   one iteration: micro-batches, gradient accumulation, the optimizer step
  run_log.py      metrics.jsonl, TensorBoard, curves.png
  preemption.py   SIGUSR1/SIGTERM: all ranks stop at one iteration, save, requeue under SLURM
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from atss_cli.config import TrainConfig
from atss_cli.distributed import group as distributed
from atss_cli.device import resolve_device
from atss_cli.training.preemption import StopRequest, request_requeue, slurm_job_id
from atss_cli.training.pretrained import find_pretrained, pretrained_weights
from atss_cli.training.run_log import Throughput
from atss_cli.training.run import Position, TrainRun
from atss_cli.training.setup import prepare_run
from atss_cli.training.state import save_checkpoint
from atss_cli.training.step import IterationResult, NonFiniteLoss, read_iteration, train_iteration
from atss_cli.errors import AtssError

__all__ = ["Reporter", "SilentReporter", "TrainingInterrupted", "NonFiniteLoss", "train",
           "find_pretrained", "pretrained_weights"]


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
    """Ctrl-C, or a stop signal outside SLURM: the checkpoint is saved; the same command resumes."""

    exit_code = 130


def train(cfg: TrainConfig, reporter: Reporter | None = None, *, resume: bool = True) -> dict:
    """Train per `cfg`; returns a summary (last iteration, final metrics, work dir, and
    `preempted` / `requeued` when a stop signal ended it under SLURM)."""
    reporter = reporter or SilentReporter()
    stop = StopRequest()
    # From here on SIGUSR1/SIGTERM only raise a flag; the loop stops at an iteration all ranks
    # agree on (Ctrl-C still stops at once).
    with stop.installed():
        info = distributed.init_from_env(resolve_device(cfg.device).type)
        try:
            run = prepare_run(cfg, reporter, info, resume)
            return _run_recipe(run, reporter, stop)
        finally:
            reporter.close()
            distributed.shutdown()


def _run_recipe(run: TrainRun, reporter: Reporter, stop: StopRequest) -> dict:
    """Epochs of iterations from where the run stands (train_state.restore says what a resume
    restored); each epoch's end is the block after the inner loop."""
    cfg, plan = run.cfg, run.plan
    pos = run.start
    reporter.start(total_iters=plan.total_iters, start_iter=pos.iteration, iters_per_epoch=plan.iters_per_epoch)
    last_metrics = _evaluation_cut_short(run, pos, reporter)
    run.model.train()
    unread = Unread(run, reporter)
    try:
        while pos.iteration < plan.total_iters and pos.epoch < cfg.epochs:
            batches = _epoch_batches(run, pos)
            while _inside_epoch(run, pos):
                result = train_iteration(run, pos, batches, stop)
                pos = Position(epoch=pos.epoch, step=pos.step + result.micro_steps, iteration=pos.iteration + 1)
                # The previous iteration's values, read now that this one is queued.
                stop_seen = unread.read_all_but_last(pos, result)
                save_due = bool(cfg.save_every_iters) and pos.iteration % cfg.save_every_iters == 0
                if stop_seen or save_due or not _inside_epoch(run, pos):
                    # Every iteration read (finite) and logged before a save, a stop or an epoch's end.
                    stop_seen = unread.read_all() or stop_seen
                if stop_seen and _inside_epoch(run, pos):
                    # Every rank read the flag from the same loss all_reduce: all save here.
                    # (After an epoch's last iteration the epoch's end saves and stops.)
                    save_checkpoint(run, pos, epoch_file=False)
                    return _stopped_by_signal(run, pos, stop, reporter, last_metrics, unread.bad_images)
                if save_due and _inside_epoch(run, pos):
                    save_checkpoint(run, pos, epoch_file=False)
            if pos.step < plan.steps_per_epoch:
                # Stopped by max_iters inside the epoch: keep the exact position.
                save_checkpoint(run, pos, epoch_file=False)
                break

            # The epoch's end: checkpoint, a stop signal honoured, evaluation when due, curves.
            pos = _save_epoch_end(run, pos)
            if stop.agreed(run.device):
                # The evaluation this epoch's end owes is run first by the resumed run.
                return _stopped_by_signal(run, pos, stop, reporter, last_metrics, unread.bad_images)
            if _evaluation_due(run, pos.epoch):
                last_metrics = _evaluate(run, pos, reporter)
            run.log.draw_curves()
            if pos.iteration >= plan.total_iters:
                break
            distributed.barrier()
    except KeyboardInterrupt:
        # Ctrl-C anywhere in the loop: `pos` is the last completed iteration (or epoch end), saved
        # once its values are read (NonFiniteLoss instead if one is not finite). The other ranks
        # may be gone already, so rank 0 saves alone, without a collective call.
        unread.read_all()
        save_checkpoint(run, pos, epoch_file=False, collective=False)
        raise TrainingInterrupted(f"interrupted at iteration {pos.iteration}; checkpoint saved to {run.latest}; "
                                  "run the same command to resume") from None
    finally:
        run.log.close()
    return _summary(run, pos, last_metrics, unread.bad_images)


def _inside_epoch(run: TrainRun, pos: Position) -> bool:
    """Whether another iteration of this epoch follows (not the epoch's end, not the run's)."""
    return pos.step < run.plan.steps_per_epoch and pos.iteration < run.plan.total_iters


def _epoch_batches(run: TrainRun, pos: Position):
    """The loader's batches of `pos.epoch` from micro-step `pos.step` on (the sampler's order is
    a function of the seed, the epoch and the step, so a resume reads what the run would have)."""
    run.sampler.load_state_dict({"epoch": pos.epoch, "step": pos.step})
    return iter(run.loader)


class Unread:
    """The queued iterations whose values the host has not read yet (at most two: the one just
    queued and the one before it), read and logged in order.

    Read one iteration late: once iteration i+1 is queued, the host waits for i's loss
    all_reduce only, while the device has i+1 in hand, and the GPU never idles waiting for the
    host to queue a step. (Every K iterations would only spare K-1 reads of 32 bytes that are
    already on the host by then, and it would hold K iterations' results, log K lines at once
    and stop K iterations after a signal.) Every rank decides on the same values what to do
    after a late read: a stop flag read with iteration i stops all of them after i+1.
    """

    def __init__(self, run: TrainRun, reporter: Reporter):
        self.run, self.reporter = run, reporter
        self.queued: list[tuple[Position, IterationResult]] = []
        self.throughput, self.bad_images = Throughput(), 0

    def read_all_but_last(self, pos: Position, result: IterationResult) -> bool:
        """Queue `result` (the iteration that ended at `pos`) and read the ones before it; whether
        one of those says stop."""
        self.queued.append((pos, result))
        return self._read(len(self.queued) - 1)

    def read_all(self) -> bool:
        return self._read(len(self.queued))

    def _read(self, count: int) -> bool:
        stop = False
        for _ in range(count):
            pos, result = self.queued.pop(0)  # off the list first: an interrupt never logs it twice
            values = read_iteration(result, self.run.latest)
            self.bad_images += result.skipped
            self.throughput.add(result.images * self.run.info.world_size)
            _log_iteration(self.run, pos, result, values.losses, self.throughput, self.bad_images, self.reporter)
            stop = stop or values.stop
        return stop


def _log_iteration(run: TrainRun, pos: Position, result: IterationResult, losses: torch.Tensor,
                   throughput: Throughput, bad_images: int, reporter: Reporter) -> None:
    """One "train" record in metrics.jsonl (and TensorBoard) and the reporter; throughput and
    memory on logged iterations and at an epoch's last."""
    record = {"kind": "train", "iteration": pos.iteration, "epoch": pos.epoch + 1, "step": pos.step,
              "lr": result.lr, "loss": float(losses.sum()), "loss_cls": float(losses[0]),
              "loss_bbox": float(losses[1]), "loss_centerness": float(losses[2])}
    if (pos.iteration % run.cfg.log_interval == 0 or pos.iteration == run.plan.total_iters
            or pos.step >= run.plan.steps_per_epoch):
        record["images_per_s"] = throughput.take()
        if result.peak_memory_mb is not None:
            record["memory_mb"] = result.peak_memory_mb
        if result.graph_counts is not None:
            record["cuda_graphs"] = result.graph_counts
    if bad_images:
        record["bad_images"] = bad_images
    run.log.train(record)
    reporter.iteration(record)


def _save_epoch_end(run: TrainRun, pos: Position) -> Position:
    """The position moves to the next epoch's start and latest.pth is written there, with
    epoch_N.pth every `checkpoint_interval` epochs and at the last."""
    finished = pos.epoch + 1
    pos = Position(epoch=finished, step=0, iteration=pos.iteration)
    interval = run.cfg.checkpoint_interval
    save_checkpoint(run, pos, epoch_file=interval > 0 and (finished % interval == 0 or finished == run.cfg.epochs))
    return pos


def _evaluation_due(run: TrainRun, epoch: int) -> bool:
    cfg = run.cfg
    return bool(run.val_set is not None and cfg.eval_interval and epoch > 0
                and (epoch % cfg.eval_interval == 0 or epoch == cfg.epochs))


def _evaluation_cut_short(run: TrainRun, pos: Position, reporter: Reporter) -> dict:
    """A resume from an epoch's end whose evaluation a kill (or a stop signal) cut short runs it
    first; rank 0's metrics.jsonl says which evaluations were done."""
    if pos.step == 0 and _evaluation_due(run, pos.epoch):
        if pos.epoch not in distributed.broadcast_object(run.log.evaluated_epochs()):
            return _evaluate(run, pos, reporter)
    return {}


def _evaluate(run: TrainRun, pos: Position, reporter: Reporter) -> dict:
    """Evaluate the model after epoch `pos.epoch` (every rank takes part); one "val" record."""
    from atss_cli.evaluation.evaluate import evaluate

    cfg = run.cfg
    run.model.eval()
    with torch.no_grad():
        metrics = evaluate(run.model, run.val_set, device=run.device, scale=tuple(cfg.scale), workers=cfg.workers,
                           evaluator=cfg.evaluator, results_path=run.work / f"results_epoch_{pos.epoch}.json")
    metrics = metrics or {}
    record = {"kind": "val", "epoch": pos.epoch, "iteration": pos.iteration, **metrics}
    run.log.val(record, metrics)
    reporter.evaluated(record)
    if run.info.is_main and pos.epoch >= cfg.epochs:  # the last evaluation: its analysis beside the run
        _write_analysis(run, run.work / f"results_epoch_{pos.epoch}.json", reporter)
    run.model.train()
    return metrics


def _write_analysis(run: TrainRun, results: Path, reporter: Reporter) -> None:
    """WORK_DIR/analysis (atss_cli.evaluation.analysis) of the detections of the last
    evaluation, on rank 0. A failure is reported in one line and the run goes on."""
    from atss_cli.evaluation.ground_truth import eval_ground_truth
    from atss_cli.evaluation.analysis import analyze

    out = run.work / "analysis"
    try:
        analyze(eval_ground_truth(run.val_set), results, out, images_dir=run.val_set.image_dir,
                name=run.val_set.ann_file.name)
    except (AtssError, OSError, ValueError, KeyError) as exc:
        reporter.info(f"analysis of {results.name} failed: {exc}")
        return
    reporter.info(f"analysis: {out / 'report.html'}")


def _stopped_by_signal(run: TrainRun, pos: Position, stop: StopRequest, reporter: Reporter,
                       last_metrics: dict, bad_images: int) -> dict:
    """After a stop signal, with latest.pth saved at `pos` by all ranks together: under SLURM
    rank 0 asks for a requeue and the run ends normally (exit 0); elsewhere it ends as Ctrl-C
    does (TrainingInterrupted, exit 130)."""
    where = f"at iteration {pos.iteration} ({stop.name}); checkpoint saved to {run.latest}"
    job = slurm_job_id()
    if job is None:
        raise TrainingInterrupted(f"interrupted {where}; run the same command to resume")
    if run.info.is_main:
        request_requeue(job)
    reporter.info(f"preempted {where}; SLURM job {job} requeued, it resumes from there")
    return {**_summary(run, pos, last_metrics, bad_images), "preempted": True, "requeued": job}


def _summary(run: TrainRun, pos: Position, last_metrics: dict, bad_images: int) -> dict:
    return {"work_dir": str(run.work), "iteration": pos.iteration, "epoch": pos.epoch, "metrics": last_metrics,
            "bad_images": bad_images, "derived": run.derived}
