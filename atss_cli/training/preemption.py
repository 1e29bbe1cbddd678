"""Stopping a run when the scheduler asks: SIGUSR1 (SLURM's warning before the time limit,
`sbatch --signal=USR1@120`) or SIGTERM (preemption, `scancel`, the time limit itself).

The signal handler only raises a flag. The training loop sends that flag along with the losses
it averages over processes every iteration (see training/step.py train_iteration), so all ranks
see that one of them was signalled in the same iteration; they read it one iteration late (once
the next is queued, train.Unread), finish that next one, save one checkpoint together and stop;
nothing is interrupted half-way. Under SLURM rank 0 then asks for the job to be put
back in the queue (`scontrol requeue`), and the requeued job resumes from latest.pth.
Ctrl-C (SIGINT) is not a preemption: it stops at once (KeyboardInterrupt), as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading

import torch

from atss_cli.distributed import group as distributed
from atss_cli.errors import AtssError

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    """The flag the stop signals raise in this process (`requested`), and which signal it was."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a stop signal to another process"

    def _on_signal(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        """Catch STOP_SIGNALS for the duration of the block (the main thread only can: elsewhere,
        e.g. a run started from a worker thread, the process keeps its own handling)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def agreed(self, device: torch.device) -> bool:
        """Whether any process was asked to stop: a collective call (a one-value all_reduce MAX),
        for the points outside the iterations (an epoch's end)."""
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        return bool(distributed.all_reduce_max(flag)[0] > 0)


def slurm_job_id() -> str | None:
    """The SLURM job this process belongs to, if any (sbatch and srun set SLURM_JOB_ID)."""
    return os.environ.get("SLURM_JOB_ID") or None


def request_requeue(job_id: str, *, timeout: float = 60.0) -> None:
    """`scontrol requeue JOB`: SLURM puts the job back in the queue (it needs `--requeue`, or
    JobRequeue=1 in slurm.conf); an AtssError naming the failure otherwise."""
    command = ["scontrol", "requeue", str(job_id)]
    hint = "submit the same job again to resume from latest.pth"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise AtssError(f"cannot requeue SLURM job {job_id}: no scontrol on PATH; {hint}") from None
    except subprocess.TimeoutExpired:
        raise AtssError(f"`{' '.join(command)}` did not answer within {timeout:g} s; {hint}") from None
    if proc.returncode != 0:
        said = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise AtssError(f"`{' '.join(command)}` failed (exit {proc.returncode}"
                        f"{': ' + said[0] if said else ''}); {hint}")
