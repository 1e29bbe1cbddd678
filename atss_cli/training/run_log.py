"""What a training run writes as it goes: metrics.jsonl (one JSON record per iteration, "train",
and per evaluation, "val"), TensorBoard scalars when tensorboard is installed, and curves.png.

Only rank 0 writes; the other ranks hold a RunLog that writes nothing, so the loop need not ask.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from atss_cli.atomic import atomic_write_text

TRAIN_SCALARS = ("loss", "loss_cls", "loss_bbox", "loss_centerness", "lr")


def read_records(path: Path) -> list[dict]:
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


class RunLog:
    def __init__(self, work: Path, *, writes: bool):
        self.path = work / "metrics.jsonl"
        self.curves = work / "curves.png"
        self.writes = writes
        self.work = work
        self._writer = None  # opened with the first record: a resume truncates the log first

    @property
    def writer(self):
        if self.writes and self._writer is None:
            self._writer = _tensorboard(self.work) or False
        return self._writer or None

    def train(self, record: dict) -> None:
        if self.writes:
            self._append(record)
            if self.writer is not None:
                for key in TRAIN_SCALARS:
                    self.writer.add_scalar(f"train/{key}", record[key], record["iteration"])

    def val(self, record: dict, metrics: dict) -> None:
        if self.writes:
            self._append(record)
            if self.writer is not None:
                for key, value in metrics.items():
                    if isinstance(value, (int, float)):
                        self.writer.add_scalar(f"val/{key}", value, record["iteration"])

    def evaluated_epochs(self) -> set[int]:
        return {r["epoch"] for r in read_records(self.path) if r.get("kind") == "val"}

    def truncate(self, *, iteration: int, epoch: int) -> None:
        """Drop records written after the checkpoint we resume from, so the log reads as one run."""
        if not self.writes:
            return
        keep = [r for r in read_records(self.path)
                if (r.get("kind") == "train" and r["iteration"] <= iteration)
                or (r.get("kind") == "val" and r["epoch"] <= epoch)]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def draw_curves(self) -> None:
        if self.writes:
            draw_curves(self.path, self.curves)

    def close(self) -> None:
        if self._writer:
            self._writer.close()

    def _append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class Throughput:
    """Images per second over the iterations since the last logged one."""

    def __init__(self):
        self.start, self.images = time.perf_counter(), 0

    def add(self, images: int) -> None:
        self.images += images

    def take(self) -> float:
        now = time.perf_counter()
        rate = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return rate


def _tensorboard(work: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(work / "tensorboard"))


def draw_curves(metrics_path: Path, out: Path) -> None:
    """Loss per iteration and mAP per epoch, as one PNG (skipped when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - plotting is optional
        return
    records = read_records(metrics_path)
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
