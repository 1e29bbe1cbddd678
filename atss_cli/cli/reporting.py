"""How a training run shows itself: a Rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys


class ConsoleReporter:
    """Implements atss_cli.engine.train.Reporter for the rank-0 process."""

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
