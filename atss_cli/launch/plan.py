"""Where a run's processes go: the launch options of `atss train` and `atss eval`, and how many
processes on which device they mean.

    Processes(gpus=None, nproc=1, device="auto", nnodes=1, node_rank=0, master_addr="127.0.0.1",
              master_port=0, max_restarts=0, dist_timeout=120.0, join_timeout=300.0)
    process_plan(gpus, nproc, device) -> (processes on this node, "cpu" | "cuda")
"""

from __future__ import annotations

from dataclasses import dataclass

from atss_cli.distributed.group import DEFAULT_JOIN_TIMEOUT_S, DEFAULT_TIMEOUT_S
from atss_cli.errors import AtssError, param


@dataclass(frozen=True)
class Processes:
    gpus: int | None = None          # CUDA processes on this node (NCCL)
    nproc: int = 1                   # CPU processes on this node (gloo)
    device: str = "auto"             # auto | cpu | cuda
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0             # 0: a free port (one node only)
    max_restarts: int = 0            # restarts of the group after a lost process (c10d rendezvous)
    dist_timeout: float = float(DEFAULT_TIMEOUT_S)        # seconds a process waits on a silent peer
    join_timeout: float = float(DEFAULT_JOIN_TIMEOUT_S)   # seconds a node waits at the rendezvous

    @property
    def default_place(self) -> bool:
        """No node layout was given: under srun, SLURM's environment says where this task stands."""
        return (self.nnodes == 1 and self.node_rank == 0 and self.master_port == 0
                and self.master_addr == "127.0.0.1")


def process_plan(gpus: int | None, nproc: int, device: str) -> tuple[int, str]:
    """How many processes and on which device, from `gpus` / `nproc` / `device`."""
    if gpus is not None and device == "cpu":
        raise AtssError(f"{param('gpus')} needs CUDA; use {param('device')} cpu {param('nproc')} N for CPU processes")
    if gpus is not None and nproc != 1:
        raise AtssError(f"give either {param('gpus')} (CUDA) or {param('nproc')} (CPU), not both")
    import torch

    if gpus is not None:
        have = torch.cuda.device_count()
        if gpus > have:
            raise AtssError(f"{param('gpus')} {gpus}: this machine has {have} CUDA device(s)")
        return gpus, "cuda"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise AtssError(f"{param('device')} cuda: torch sees no CUDA device")
        if nproc > 1:
            raise AtssError(f"{param('nproc')} is for {param('device')} cpu; use {param('gpus')} N for CUDA processes")
        return 1, "cuda"
    if device == "cpu" or not torch.cuda.is_available():
        return nproc, "cpu"
    if nproc > 1:
        raise AtssError(f"{param('nproc')} is for {param('device')} cpu; use {param('gpus')} N for CUDA processes")
    return 1, "cuda"
