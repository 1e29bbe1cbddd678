"""The shared state of a training run: what `prepare_run` builds (TrainRun) and where the run
stands (Position). The loop, the step and the checkpoint code all read these; nothing here acts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from atss_cli.config import TrainConfig
from atss_cli.distributed.group import DistInfo
from atss_cli.training import checkpoint as ckpt_io
from atss_cli.training.run_log import RunLog
from atss_cli.training.schedule import BatchPlan


@dataclass
class Position:
    epoch: int = 0        # 0-based epoch in progress
    step: int = 0         # micro-steps (loader batches) consumed in that epoch
    iteration: int = 0    # optimizer steps taken in the whole run


@dataclass
class TrainRun:
    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    work: Path
    train_set: object
    val_set: object | None
    model: torch.nn.Module
    loss_module: torch.nn.Module  # the model's loss, wrapped in DistributedDataParallel over processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    loader: object
    sampler: object
    plan: BatchPlan
    derived: dict                 # the facts config.json and the checkpoints record beside the config
    log: RunLog
    start: Position               # where this process starts: 0, or where latest.pth stopped
    graphs: object | None = None  # training.graphs.GraphedSteps when cfg.cuda_graphs, else None

    @property
    def latest(self) -> Path:
        return self.work / ckpt_io.LATEST
