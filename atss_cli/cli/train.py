"""`atss train`: the 1x recipe on one process or many (torchrun), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Device, fail, process_plan


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("train", no_args_is_help=True)(train_command)


def train_command(
    coco: Annotated[Optional[Path], typer.Option("--coco", help="COCO root (annotations/, train2017/, val2017/).",
                                                 exists=True, file_okay=False, resolve_path=True)] = None,
    train_ann: Annotated[Optional[Path], typer.Option(
        "--train-ann", help="Any COCO-format training JSON (instead of --coco); needs --train-images.",
        resolve_path=True)] = None,
    train_images: Annotated[Optional[Path], typer.Option(
        "--train-images", help="Folder the --train-ann file_name values are relative to.", resolve_path=True)] = None,
    val_ann: Annotated[Optional[Path], typer.Option(
        "--val-ann", help="COCO-format JSON evaluated during training (same categories); needs --val-images.",
        resolve_path=True)] = None,
    val_images: Annotated[Optional[Path], typer.Option(
        "--val-images", help="Folder the --val-ann file_name values are relative to.", resolve_path=True)] = None,
    work_dir: Annotated[Path, typer.Option("--work-dir", help="Checkpoints, logs and curves go here.")] = Path("work_dirs/atss"),
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=1, help="CUDA processes on this node (NCCL).")] = None,
    device: Annotated[Device, typer.Option("--device", help="auto, cpu or cuda.")] = Device.auto,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes with --device cpu (gloo).")] = 1,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1)] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0)] = 0,
    master_addr: Annotated[str, typer.Option("--master-addr")] = "127.0.0.1",
    master_port: Annotated[int, typer.Option("--master-port", min=0, max=65535)] = 0,
    max_restarts: Annotated[int, typer.Option(
        "--max-restarts", min=0, help="Restart the process group this often after a lost process; "
        "it continues from latest.pth (several nodes: c10d rendezvous).")] = 0,
    dist_timeout: Annotated[float, typer.Option(
        "--dist-timeout", min=1.0, help="Seconds a process waits on a silent peer (collectives, heartbeat) "
        "before it stops.")] = 120.0,
    join_timeout: Annotated[float, typer.Option(
        "--join-timeout", min=1.0, help="Seconds a node waits for the others at the rendezvous.")] = 300.0,
    print_sbatch: Annotated[bool, typer.Option(
        "--print-sbatch", help="Print an sbatch script for --nnodes N x --gpus G (one task per GPU, "
        "requeueable, USR1 before --time) running this command, and exit.")] = False,
    time_limit: Annotated[str, typer.Option("--time", help="The sbatch time limit (--print-sbatch).")] = "24:00:00",
    amp: Annotated[Optional[Amp], typer.Option("--amp", help="Mixed precision: none, bf16 or fp16.")] = None,
    batch_per_gpu: Annotated[Optional[int], typer.Option("--batch-per-gpu", min=1)] = None,
    accumulate: Annotated[Optional[int], typer.Option(
        "--accumulate", min=0, help="Micro-steps per iteration (default: keep the total batch at 16).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", min=0.0)] = None,
    scale_lr: Annotated[bool, typer.Option("--scale-lr", help="Scale lr linearly by total batch / 16.")] = False,
    pretrained: Annotated[Optional[Path], typer.Option(
        "--pretrained", exists=True,
        help="torchvision's IMAGENET1K_V1 ResNet file (resnet50-0676ba61.pth) or its folder "
             "(default: the torch hub cache).")] = None,
    from_scratch: Annotated[bool, typer.Option(
        "--from-scratch", help="Random backbone init, even where the config freezes stages or BatchNorm.")] = False,
    load_from: Annotated[Optional[Path], typer.Option("--load-from", exists=True, dir_okay=False,
                                                      help="Start from a detector checkpoint (ours or MMDetection's).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    eval_interval: Annotated[Optional[int], typer.Option("--eval-interval", min=0)] = None,
    resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from work-dir/latest.pth when there.")] = True,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: key=value.")] = None,
) -> None:
    """Train ATSS (default: R50-FPN, 1x schedule, total batch 16)."""
    import os

    from atss_cli.cli.common import debug_enabled

    if not debug_enabled():
        # c10d's C++ side logs every retried connection with a stack trace, before torch is
        # imported or never: our one-line errors say what failed (ATSS_DEBUG=1 shows it all).
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    from atss_cli.cli.reporting import ConsoleReporter
    from atss_cli.config import TrainConfig, apply_overrides, check_data_flags, to_json, validate

    flags = {"work_dir": str(work_dir)}
    for name, path in (("coco", coco), ("train_ann", train_ann), ("train_images", train_images),
                       ("val_ann", val_ann), ("val_images", val_images)):
        if path is not None:
            flags[name] = str(path)
    for name, value in (("batch_per_gpu", batch_per_gpu), ("accumulate", accumulate), ("epochs", epochs),
                        ("lr", lr), ("seed", seed), ("eval_interval", eval_interval)):
        if value is not None:
            flags[name] = value
    if amp is not None:
        flags["amp"] = amp.value
    if scale_lr:
        flags["scale_lr"] = True
    if pretrained is not None:
        flags["pretrained"] = str(pretrained)
    if load_from is not None:
        flags["load_from"] = str(load_from)
    if from_scratch:
        flags["from_scratch"] = True

    if print_sbatch:
        _print_sbatch(nnodes, gpus, time_limit, str(work_dir))
        return

    from atss_cli.engine import slurm
    from atss_cli.engine.distributed import ENV_JOIN_TIMEOUT, ENV_TIMEOUT

    os.environ[ENV_TIMEOUT] = f"{dist_timeout:g}"  # read by every process (torchrun passes it on)
    os.environ[ENV_JOIN_TIMEOUT] = f"{join_timeout:g}"
    place = None
    if nnodes == 1 and node_rank == 0 and master_port == 0 and master_addr == "127.0.0.1":
        place = slurm.place()  # under srun, SLURM says where this task stands
    if place is not None and place.per_task:
        if gpus is not None or nproc != 1:
            fail(f"under srun with {place.world_tasks} tasks on {place.nnodes} node(s) each task is one "
                 "training process: drop --gpus/--nproc (or run one task per node)")
        procs, flags["device"] = 1, process_plan(None, 1, device)[1]
    else:
        procs, flags["device"] = process_plan(gpus, nproc, device)
    if place is not None and not place.per_task and place.nnodes > 1:
        nnodes, node_rank, master_addr, master_port = (place.nnodes, place.node_rank, place.master_addr,
                                                       place.master_port)

    cfg = apply_overrides(TrainConfig().replace(**flags), set_ or [])
    validate(cfg)
    check_data_flags(cfg)
    _check_files(cfg)
    work_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train_ann and not cfg.val_ann and cfg.eval_interval and (place is None or place.rank == 0):
        # Training goes on (a custom set may have no labelled val split), but not silently.
        typer.echo("warning: --train-ann without --val-ann: no evaluation during training; give --val-ann FILE "
                   "--val-images DIR to evaluate, or --eval-interval 0 to say you mean it", err=True)

    if place is not None and place.per_task:
        _run_slurm_task(cfg, place, resume)
        return

    if procs == 1 and nnodes == 1:
        from atss_cli.engine.train import train

        summary = train(cfg, ConsoleReporter(cfg.log_interval), resume=resume)
        _print_summary(summary)
        return

    from atss_cli.atomic import atomic_write_text
    from atss_cli.engine.distributed import launch

    request = work_dir / "launch_config.json"
    atomic_write_text(request, to_json(cfg) + "\n")
    args = ["--config", str(request)] + ([] if resume else ["--no-resume"])
    launch("atss_cli.cli.train_worker", args, nproc=procs, nnodes=nnodes, node_rank=node_rank,
           master_addr=master_addr, master_port=master_port, max_restarts=max_restarts,
           join_timeout=join_timeout, work_dir=str(work_dir))
    typer.echo(f"done: checkpoints and logs in {work_dir}")


def _run_slurm_task(cfg, place, resume: bool) -> None:
    """This srun task is one training process: SLURM's ids become torch.distributed's."""
    import os

    from atss_cli.cli.train_worker import run_rank

    os.environ.update(RANK=str(place.rank), WORLD_SIZE=str(place.world_tasks), LOCAL_RANK=str(place.local_rank),
                      LOCAL_WORLD_SIZE=str(place.local_tasks), GROUP_RANK=str(place.node_rank),
                      MASTER_ADDR=place.master_addr, MASTER_PORT=str(place.master_port))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(place.local_tasks, 1))))
    code, summary = run_rank(lambda: cfg, resume=resume)
    if code:
        from atss_cli.cli.train_worker import leave

        leave(code)
    if place.rank == 0 and not summary.get("preempted"):
        typer.echo(f"done: checkpoints and logs in {cfg.work_dir}")


def _print_sbatch(nnodes: int, gpus: int | None, time_limit: str, work_dir: str) -> None:
    """The sbatch script for this very command, less the flags SLURM now supplies."""
    import sys

    from atss_cli.engine.slurm import sbatch_script

    argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else []
    drop_value = {"--print-sbatch": 0, "--time": 1, "--nnodes": 1, "--gpus": 1, "--node-rank": 1,
                  "--master-addr": 1, "--master-port": 1, "--nproc": 1}
    kept, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in drop_value:
            i += 1 + (drop_value[name] if "=" not in argv[i] else 0)
            continue
        kept.append(argv[i])
        i += 1
    typer.echo(sbatch_script(kept, nodes=nnodes, gpus_per_node=gpus or 1, time_limit=time_limit,
                             work_dir=work_dir), nl=False)


def _check_files(cfg) -> None:
    """The JSONs and folders exist, before any model or process is started."""
    from atss_cli.data.cache import check_ann

    for ann, images in ((cfg.train_ann, cfg.train_images), (cfg.val_ann, cfg.val_images)):
        if ann:
            check_ann(Path(ann), Path(images))


def _print_summary(summary: dict) -> None:
    if summary.get("preempted"):
        return  # the reporter said where it stopped and what was requeued
    metrics = summary.get("metrics") or {}
    line = f"done: {summary['iteration']} iterations, checkpoints and logs in {summary['work_dir']}"
    if "mAP" in metrics:
        line += f"; mAP@[.5:.95]={metrics['mAP']:.4f} mAP@0.5={metrics.get('mAP_50', float('nan')):.4f}"
    typer.echo(line)
