"""`atss demo`: the main job end to end on generated data, on the CPU, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Where the dataset, run, pictures and figures go.")] = Path("demo_out"),
    num_train: Annotated[int, typer.Option("--num-train", min=8, help="Generated training images.")] = 300,
    num_val: Annotated[int, typer.Option("--num-val", min=4, help="Generated validation images.")] = 50,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Training epochs [default: the demo's 8].",
                                                  show_default=False)] = None,
    workers: Annotated[int, typer.Option("--workers", min=0)] = 1,
    bench: Annotated[bool, typer.Option("--bench/--no-bench", help="Run the short assigner benchmark.")] = True,
) -> None:
    """Generate a dataset, train a small ATSS on the CPU, evaluate it, draw predictions."""
    from atss_cli.terminal import ConsoleReporter
    from atss_cli.demo import DEMO_EPOCHS, run_demo

    reporter = ConsoleReporter(log_interval=10)
    result = run_demo(out, reporter, train_images=num_train, val_images=num_val, epochs=epochs or DEMO_EPOCHS,
                      workers=workers, bench=bench)
    m = result["metrics"]
    if result["bench_result"] is not None:
        from atss_cli.cli.bench_assigner import print_result
        from atss_cli.cli.common import console

        print_result(console(), result["bench_result"])
    typer.echo(f"dataset:      {result['data']}")
    typer.echo(f"training run: {result['work_dir']} (checkpoints, metrics.jsonl, curves.png)")
    typer.echo(f"predictions:  {result['predictions']}")
    if result["bench"]:
        typer.echo(f"benchmark:    {result['bench']}")
    typer.echo(f"demo: mAP@[.5:.95]={m.get('mAP', 0.0):.3f} mAP@0.5={m.get('mAP_50', 0.0):.3f} "
               f"({result['val_images']} images, {result['seconds']:.0f} s)")
