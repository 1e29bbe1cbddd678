"""`atss train`: the 1x recipe on one process or many (torchrun), resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Device, process_plan


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

    procs, flags["device"] = process_plan(gpus, nproc, device)

    cfg = apply_overrides(TrainConfig().replace(**flags), set_ or [])
    validate(cfg)
    check_data_flags(cfg)
    _check_files(cfg)
    work_dir.mkdir(parents=True, exist_ok=True)

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
           master_addr=master_addr, master_port=master_port)
    typer.echo(f"done: checkpoints and logs in {work_dir}")


def _check_files(cfg) -> None:
    """The JSONs and folders exist, before any model or process is started."""
    from atss_cli.data.cache import check_ann

    for ann, images in ((cfg.train_ann, cfg.train_images), (cfg.val_ann, cfg.val_images)):
        if ann:
            check_ann(Path(ann), Path(images))


def _print_summary(summary: dict) -> None:
    metrics = summary.get("metrics") or {}
    line = f"done: {summary['iteration']} iterations, checkpoints and logs in {summary['work_dir']}"
    if "mAP" in metrics:
        line += f"; mAP@[.5:.95]={metrics['mAP']:.4f} mAP@0.5={metrics.get('mAP_50', float('nan')):.4f}"
    typer.echo(line)
