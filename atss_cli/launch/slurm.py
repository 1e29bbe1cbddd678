"""SLURM: where `atss train` run by `srun` finds its place in the job, and the sbatch template.

Under `srun` every task sees SLURM_PROCID, SLURM_NTASKS, SLURM_NNODES ... (the batch script
itself has no SLURM_STEP_ID: there `atss train` is a plain single-node command). Two layouts:

- one task per process (`srun --ntasks-per-node=G`, SLURM_NTASKS > SLURM_NNODES): each task is a
  training process itself, no torchrun; rank, world size and local rank are SLURM's;
- one task per node: the task starts its node's processes with torchrun, as `--nnodes/--node-rank`.

The master is the first host of the step's node list; the port is derived from the job id, so
every task agrees on it without talking, and two jobs sharing a node do not collide.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

from atss_cli.errors import AtssError


@dataclass(frozen=True)
class SlurmPlace:
    per_task: bool          # True: this task is one training process (no torchrun)
    rank: int               # SLURM_PROCID (per task) / node id (per node)
    world_tasks: int        # tasks in the step
    nnodes: int
    node_rank: int
    local_rank: int
    local_tasks: int
    master_addr: str
    master_port: int
    job_id: str


def under_srun(env=None) -> bool:
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env)


def place(env=None) -> SlurmPlace | None:
    """This task's place in the srun step, or None outside srun."""
    env = os.environ if env is None else env
    if not under_srun(env):
        return None
    ntasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    nnodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    job = env.get("SLURM_JOB_ID", "0")
    local_tasks = first_count(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1")
    return SlurmPlace(per_task=ntasks > nnodes, rank=int(env["SLURM_PROCID"]), world_tasks=ntasks, nnodes=nnodes,
                      node_rank=int(env.get("SLURM_NODEID", 0)), local_rank=int(env.get("SLURM_LOCALID", 0)),
                      local_tasks=local_tasks, master_addr=first_host(nodelist) if nodelist else "127.0.0.1",
                      master_port=port_for_job(job), job_id=job)


def port_for_job(job_id: str) -> int:
    """A port every task of the job computes alike: 20000-29999, from the job id."""
    digits = re.sub(r"\D", "", job_id) or "0"
    return 20000 + int(digits) % 10000


def first_count(tasks_per_node: str) -> int:
    """'4(x2),3' -> 4: the tasks on the first node (SLURM_TASKS_PER_NODE's form)."""
    m = re.match(r"\s*(\d+)", tasks_per_node)
    return int(m.group(1)) if m else 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list ('gpu[03-05,9],cpu1' -> 'gpu03'): scontrol's answer
    where it is installed, else our own reading of the syntax."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return parse_first_host(nodelist)


def parse_first_host(nodelist: str) -> str:
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise AtssError(f"cannot read the SLURM node list {nodelist!r}")
    prefix, ranges = m.group(1), m.group(2)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def sbatch_script(train_args: list[str], *, nodes: int, gpus_per_node: int, time_limit: str,
                  job_name: str = "atss", work_dir: str = "work_dirs/atss", cpus_per_gpu: int = 8) -> str:
    """A ready sbatch script: one task per GPU (each a training process, no torchrun), requeueable,
    with USR1 two minutes before the time limit, forwarded to the tasks for a clean save."""
    command = shlex.join(["atss", "train", *train_args])
    return f"""#!/bin/bash
# {nodes} node(s) x {gpus_per_node} GPU(s): `sbatch` this file. One task per GPU, each a training
# process that finds its rank, world size and master in SLURM's environment.
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={gpus_per_node}
#SBATCH --gpus-per-node={gpus_per_node}
#SBATCH --cpus-per-task={cpus_per_gpu}
#SBATCH --time={time_limit}
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# SLURM sends USR1 to this script two minutes before the time limit (and a preempting
# scheduler sends TERM): pass it on to the training tasks (srun forwards it), which agree on an
# iteration, save latest.pth and ask for a requeue; the requeued job resumes from there.
mkdir -p {shlex.quote(work_dir)}
srun {command} &
step=$!
trap 'kill -USR1 "$step"' USR1
trap 'kill -TERM "$step"' TERM
status=0
while kill -0 "$step" 2>/dev/null; do wait "$step"; status=$?; done
exit "$status"
"""
