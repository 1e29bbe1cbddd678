"""`atss train` as a function: the config checked once, then the run in this process, as this
srun task, or in N processes under torchrun.

    run_training(cfg, processes=Processes(), *, resume=True, warn=None) -> dict
        {"mode": "process", "summary": train()'s summary}     one process, trained here
        {"mode": "srun", "rank": r, "summary": ...}           this srun task was one rank
        {"mode": "torchrun", "work_dir": ...}                 the workers trained (and printed)
        `cfg.device` is replaced by the device the processes use. `warn(message)` receives
        warnings (their parameters marked with atss_cli.errors.param).
    sbatch_for(train_args, processes, *, time_limit, work_dir) -> str
        the sbatch script that runs `atss train train_args` on processes.nnodes x processes.gpus,
        less the flags SLURM then supplies.

Every launched process runs atss_cli/launch/worker.py with the config written to
`<work_dir>/launch_config.json`: the same `train()` as one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from atss_cli.config import TrainConfig, check_data_flags, to_json, validate
from atss_cli.errors import AtssError, param
from atss_cli.launch.plan import Processes, process_plan

LAUNCH_FILE = "launch_config.json"


def run_training(cfg: TrainConfig, processes: Processes = Processes(), *, resume: bool = True,
                 warn: Callable[[str], None] | None = None) -> dict:
    from atss_cli.distributed.group import ENV_JOIN_TIMEOUT, ENV_TIMEOUT
    from atss_cli.launch import slurm

    os.environ[ENV_TIMEOUT] = f"{processes.dist_timeout:g}"  # read by every process (torchrun passes it on)
    os.environ[ENV_JOIN_TIMEOUT] = f"{processes.join_timeout:g}"
    place = slurm.place() if processes.default_place else None  # under srun, SLURM says where this task stands
    p = processes
    if place is not None and place.per_task:
        if p.gpus is not None or p.nproc != 1:
            raise AtssError(f"under srun with {place.world_tasks} tasks on {place.nnodes} node(s) each task is one "
                            f"training process: drop {param('gpus')}/{param('nproc')} (or run one task per node)")
        procs, device = 1, process_plan(None, 1, p.device)[1]
    else:
        procs, device = process_plan(p.gpus, p.nproc, p.device)
    nnodes, node_rank, master_addr, master_port = p.nnodes, p.node_rank, p.master_addr, p.master_port
    if place is not None and not place.per_task and place.nnodes > 1:
        nnodes, node_rank, master_addr, master_port = (place.nnodes, place.node_rank, place.master_addr,
                                                       place.master_port)

    cfg = cfg.replace(device=device)
    validate(cfg)
    check_data_flags(cfg)
    _check_files(cfg)
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    if cfg.train_ann and not cfg.val_ann and cfg.eval_interval and (place is None or place.rank == 0) and warn:
        # Training goes on (a custom set may have no labelled val split), but not silently.
        warn(f"{param('train_ann')} without {param('val_ann')}: no evaluation during training; give "
             f"{param('val_ann')} FILE {param('val_images')} DIR to evaluate, or {param('eval_interval')} 0 "
             "to say you mean it")

    if place is not None and place.per_task:
        return _run_slurm_task(cfg, place, resume)

    if procs == 1 and nnodes == 1:
        from atss_cli.terminal import ConsoleReporter
        from atss_cli.training.train import train

        return {"mode": "process", "summary": train(cfg, ConsoleReporter(cfg.log_interval), resume=resume)}

    from atss_cli.atomic import atomic_write_text
    from atss_cli.launch.torchrun import launch

    request = Path(cfg.work_dir) / LAUNCH_FILE
    atomic_write_text(request, to_json(cfg) + "\n")
    args = ["--config", str(request)] + ([] if resume else ["--no-resume"])
    launch("atss_cli.launch.worker", args, nproc=procs, nnodes=nnodes, node_rank=node_rank,
           master_addr=master_addr, master_port=master_port, max_restarts=p.max_restarts,
           join_timeout=p.join_timeout, work_dir=str(cfg.work_dir))
    return {"mode": "torchrun", "work_dir": str(cfg.work_dir)}


def _run_slurm_task(cfg: TrainConfig, place, resume: bool) -> dict:
    """This srun task is one training process: SLURM's ids become torch.distributed's."""
    from atss_cli.launch.worker import leave, run_rank

    os.environ.update(RANK=str(place.rank), WORLD_SIZE=str(place.world_tasks), LOCAL_RANK=str(place.local_rank),
                      LOCAL_WORLD_SIZE=str(place.local_tasks), GROUP_RANK=str(place.node_rank),
                      MASTER_ADDR=place.master_addr, MASTER_PORT=str(place.master_port))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(place.local_tasks, 1))))
    code, summary = run_rank(lambda: cfg, resume=resume)
    if code:
        leave(code)
    return {"mode": "srun", "rank": place.rank, "summary": summary, "work_dir": str(cfg.work_dir)}


def _check_files(cfg: TrainConfig) -> None:
    """The JSONs and folders exist, before any model or process is started."""
    from atss_cli.data.cache import check_ann

    for ann, images in ((cfg.train_ann, cfg.train_images), (cfg.val_ann, cfg.val_images)):
        if ann:
            check_ann(Path(ann), Path(images))


# The flags of `atss train` that SLURM's environment replaces inside an sbatch job, and how many
# values each takes.
_SLURM_SUPPLIED = {"--print-sbatch": 0, "--time": 1, "--nnodes": 1, "--gpus": 1, "--node-rank": 1,
                   "--master-addr": 1, "--master-port": 1, "--nproc": 1}


def sbatch_for(train_args: list[str], processes: Processes, *, time_limit: str, work_dir: str) -> str:
    from atss_cli.launch.slurm import sbatch_script

    kept, i = [], 0
    while i < len(train_args):
        name = train_args[i].split("=", 1)[0]
        if name in _SLURM_SUPPLIED:
            i += 1 + (_SLURM_SUPPLIED[name] if "=" not in train_args[i] else 0)
            continue
        kept.append(train_args[i])
        i += 1
    return sbatch_script(kept, nodes=processes.nnodes, gpus_per_node=processes.gpus or 1, time_limit=time_limit,
                         work_dir=work_dir)
