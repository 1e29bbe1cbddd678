"""`atss train`: the 1x recipe on one process or many (torchrun), resumable.

The flags become a TrainConfig and a Processes; atss_cli.launch.training.run_training does the rest."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Device, warning


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
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs", help="The whole step in CUDA graphs, one per padded batch shape (one CUDA process, "
        "--accumulate 1, --amp none or bf16).")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any config field: key=value.")] = None,
) -> None:
    """Train ATSS (default: R50-FPN, 1x schedule, total batch 16)."""
    from atss_cli.terminal import debug_enabled

    if not debug_enabled():
        # Before torch is imported (launch.training imports it): c10d's C++ side logs every retried
        # connection with a stack trace; our one-line errors say what failed (ATSS_DEBUG=1 shows it all).
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    from atss_cli.config import TrainConfig, apply_overrides
    from atss_cli.launch.plan import Processes
    from atss_cli.launch.training import run_training, sbatch_for

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
    if cuda_graphs:
        flags["cuda_graphs"] = True
    processes = Processes(gpus=gpus, nproc=nproc, device=device.value, nnodes=nnodes, node_rank=node_rank,
                          master_addr=master_addr, master_port=master_port, max_restarts=max_restarts,
                          dist_timeout=dist_timeout, join_timeout=join_timeout)

    if print_sbatch:
        argv = sys.argv[sys.argv.index("train") + 1:] if "train" in sys.argv else []
        typer.echo(sbatch_for(argv, processes, time_limit=time_limit, work_dir=str(work_dir)), nl=False)
        return
    cfg = apply_overrides(TrainConfig().replace(**flags), set_ or [])
    result = run_training(cfg, processes, resume=resume, warn=warning)
    summary = result.get("summary") or {}
    if result["mode"] == "torchrun" or (result["mode"] == "srun" and result["rank"] == 0
                                        and not summary.get("preempted")):
        typer.echo(f"done: checkpoints and logs in {result['work_dir']}")
    elif result["mode"] == "process" and not summary.get("preempted"):
        # (a preempted run's reporter said where it stopped and what was requeued)
        metrics = summary.get("metrics") or {}
        line = f"done: {summary['iteration']} iterations, checkpoints and logs in {summary['work_dir']}"
        if "mAP" in metrics:
            line += f"; mAP@[.5:.95]={metrics['mAP']:.4f} mAP@0.5={metrics.get('mAP_50', float('nan')):.4f}"
        typer.echo(line)
