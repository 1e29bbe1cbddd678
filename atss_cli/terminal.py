"""What a user sees on the terminal: one-line errors, the training progress, the metrics tables.

The command modules (atss_cli/cli/) and the launched worker processes (atss_cli/launch/worker.py)
print through these; nothing below them prints. Imports only the standard library at load time
(rich inside the functions), so `atss --help` stays fast.
"""

from __future__ import annotations

import os
import sys

from atss_cli.errors import AtssError

# Library errors name parameters (atss_cli.errors.param); a parameter's flag is its name with
# dashes, except where the command calls it otherwise.
FLAG_NAMES = {"overrides": "--set"}


def flag_for(name: str) -> str:
    """The command-line flag that sets the library parameter `name`."""
    return FLAG_NAMES.get(name) or "--" + name.replace("_", "-")


def console():
    """The Rich console for user-facing output (stdout); quiet progress when not a TTY."""
    from rich.console import Console

    out = Console(highlight=False)
    if not out.is_terminal:
        out.width = max(out.width, 150)  # logs and pipes: do not squash tables to 80 columns
    return out


def debug_enabled() -> bool:
    return os.environ.get("ATSS_DEBUG", "") not in ("", "0")


def report_error(exc: BaseException, prefix: str = "") -> int:
    """Print one line for `exc` on stderr and return the exit code; the traceback only on request.

    `prefix` goes after "error: " (e.g. "[rank 1] " in a multi-process run).
    """
    if debug_enabled():
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, AtssError):
        _stderr_line(f"error: {prefix}{exc.render(flag_for)}")
        return exc.exit_code
    if isinstance(exc, FileNotFoundError):
        _stderr_line(f"error: {prefix}file not found: {exc.filename or exc}")
        return 2
    if isinstance(exc, MemoryError):
        _stderr_line(f"error: {prefix}out of memory (host RAM); try fewer loader workers or a smaller batch")
        return 1
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    _stderr_line(f"error: {prefix}internal error: {type(exc).__name__}: {msg} "
                 "(this is a bug; ATSS_DEBUG=1 shows the traceback)")
    return 1


def _stderr_line(text: str) -> None:
    # One write for the text and its newline: with PYTHONUNBUFFERED (or -u) print() makes two, and
    # the ranks of a multi-process run, sharing one stderr, could interleave between them.
    sys.stderr.write(text + "\n")
    sys.stderr.flush()

class ConsoleReporter:
    """Implements atss_cli.training.train.Reporter for the rank-0 process."""

    def __init__(self, log_interval: int = 20, *, live: bool | None = None):
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=True)
        self.live = sys.stdout.isatty() if live is None else live
        self.log_interval = max(1, log_interval)
        self.progress = None
        self.task = None
        self.total = 0

    def info(self, message: str) -> None:
        self.console.print(message)

    def start(self, *, total_iters: int, start_iter: int, iters_per_epoch: int) -> None:
        self.total = total_iters
        if not self.live:
            self.console.print(f"training: iterations {start_iter}/{total_iters} ({iters_per_epoch} per epoch)")
            return
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} (cls {task.fields[cls]:.3f} box {task.fields[box]:.3f} "
                       "ctr {task.fields[ctr]:.3f})"),
            TextColumn("lr {task.fields[lr]:.2e}"), TextColumn("{task.fields[speed]:.1f} img/s"),
            TextColumn("{task.fields[mem]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=self.console, transient=False)
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_iters, completed=start_iter, epoch=1, loss=0.0,
                                           cls=0.0, box=0.0, ctr=0.0, lr=0.0, speed=0.0, mem="")

    def iteration(self, r: dict) -> None:
        if self.progress is not None:
            fields = dict(epoch=r["epoch"], loss=r["loss"], cls=r["loss_cls"], box=r["loss_bbox"],
                          ctr=r["loss_centerness"], lr=r["lr"])
            if "images_per_s" in r:
                fields["speed"] = r["images_per_s"]
            if "memory_mb" in r:
                fields["mem"] = f"{r['memory_mb']:.0f} MB"
            self.progress.update(self.task, completed=r["iteration"], **fields)
        elif r["iteration"] % self.log_interval == 0 or r["iteration"] == self.total:
            speed = f" {r['images_per_s']:.1f} img/s" if "images_per_s" in r else ""
            mem = f" {r['memory_mb']:.0f} MB" if "memory_mb" in r else ""
            self.console.print(
                f"epoch {r['epoch']} iter {r['iteration']}/{self.total} loss {r['loss']:.4f} "
                f"(cls {r['loss_cls']:.4f} bbox {r['loss_bbox']:.4f} ctr {r['loss_centerness']:.4f}) "
                f"lr {r['lr']:.3e}{speed}{mem}")

    def evaluated(self, r: dict) -> None:
        keys = [k for k in ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l") if k in r]
        # COCOeval reports -1 for an area range without ground truth.
        text = " ".join(f"{k}={r[k]:.4f}" if r[k] >= 0 else f"{k}=n/a" for k in keys)
        self.console.print(f"epoch {r['epoch']} val: {text}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def progress_bar(con):
    """A Rich progress bar on a terminal; nothing otherwise."""
    if not con.is_terminal:
        return None, lambda: None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(TextColumn("inference"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=con, transient=True)
    state = {"task": None}

    def update(done: int, total: int) -> None:
        if state["task"] is None:
            bar.start()
            state["task"] = bar.add_task("eval", total=total or None)
        bar.update(state["task"], completed=done)

    return update, bar.stop


def print_metrics(con, metrics: dict, title: str = "COCO bbox") -> None:
    """The 12 metrics (and per-class AP) as Rich tables, then where the detections went."""
    from rich.table import Table

    from atss_cli.evaluation.cocoeval import METRIC_NAMES, METRIC_TITLES

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("COCOeval line")
    for name in METRIC_NAMES:
        table.add_row(name, _fmt(metrics[name]), METRIC_TITLES[name])
    con.print(table)
    per_class = metrics.get("per_class")
    if per_class:
        pc = Table(title="AP per category (IoU=.50:.95)")
        pc.add_column("category")
        pc.add_column("AP", justify="right")
        for name, ap in per_class.items():
            pc.add_row(name, _fmt(ap))
        con.print(pc)
    line = f"{metrics.get('num_images', 0)} images, {metrics.get('num_detections', 0)} detections"
    if "seconds_inference" in metrics:
        line += f" -> {metrics.get('results')}; inference {metrics['seconds_inference']:.1f} s,"
    else:
        line += f" from {metrics.get('results')};"
    print(f"{line} COCOeval {metrics.get('seconds_eval', 0.0):.1f} s")


def _fmt(value: float) -> str:
    return "n/a" if value is None or value < 0 else f"{value:.3f}"


def print_analysis(result: dict | None, out_dir) -> None:
    """The lines `--analyze` adds: the gallery's skip reason, if any, and where the report is."""
    if result is None:
        return
    from pathlib import Path

    if result["gallery"].get("skipped"):
        print(result["gallery"]["skipped"])
    t = result["tide"]
    worst = max(t["dap"], key=t["dap"].get)
    print(f"analysis: {Path(out_dir) / 'report.html'} (TIDE AP50 {t['ap50']:.1f}; most lost to {worst}: "
          f"{t['dap'][worst]:.1f}; {result['seconds']['total']:.1f} s)")
