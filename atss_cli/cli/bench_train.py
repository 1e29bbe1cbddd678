"""`atss bench train`: images/s of the real training iteration fed by the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import Amp, Device, JsonOut, console, progress_printer, write_json


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("train")(bench_train_command)


def bench_train_command(
    device: Annotated[Device, typer.Option("--device", help="cpu or cuda (auto: cuda when present).")] = Device.auto,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per step (one process, accumulate 1).")] = 2,
    amp: Annotated[Amp, typer.Option("--amp", help="Autocast: none, bf16 or fp16.")] = Amp.none,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="Model and images in channels_last.")] = False,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Timed steps.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed steps before timing.")] = 3,
    depth: Annotated[int, typer.Option("--depth", help="ResNet depth: 18, 34, 50 or 101 (the recipe's "
                                                         "frozen stem and BatchNorm).")] = 50,
    preset: Annotated[Optional[str], typer.Option("--preset", help="A named model preset instead of --depth "
                                                                   "(r50, r101, tiny).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=0, help="Loader processes (default: the "
                                                                           "training default).")] = None,
    scale: Annotated[str, typer.Option("--scale", help="The recipe's keep-ratio resize, LONGxSHORT.")] = "1333x800",
    image_size: Annotated[str, typer.Option("--image-size", help="Generated JPEGs' size WxH (COCO's usual "
                                                                 "640x480; resized by --scale to 1067x800).")] = "640x480",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="Generated JPEGs' quality.")] = 90,
    images_dir: Annotated[Optional[Path], typer.Option(
        "--images-dir", file_okay=False, help="Keep the generated JPEGs here (default: a folder in the temp "
                                              "dir, reused).")] = None,
    coco: Annotated[Optional[Path], typer.Option("--coco", exists=True, file_okay=False,
                                                 help="Train on this COCO root's train2017 instead.")] = None,
    train_ann: Annotated[Optional[Path], typer.Option("--train-ann", exists=True, dir_okay=False,
                                                      help="Or on this COCO-format JSON ...")] = None,
    train_images: Annotated[Optional[Path], typer.Option("--train-images", exists=True, file_okay=False,
                                                         help="... and its image folder.")] = None,
    peak_tflops: Annotated[Optional[float], typer.Option(
        "--peak-tflops", help="The device's peak TFLOP/s for the fraction (default: a table of known GPUs).")] = None,
    profile: Annotated[bool, typer.Option("--profile", help="Also the top operators by self time "
                                                            "(torch.profiler, 3 more steps).")] = False,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Model init, data order and the generated images.")] = 0,
    cuda_graphs: Annotated[bool, typer.Option("--cuda-graphs", help="The step in CUDA graphs, as "
                                                                    "`atss train --cuda-graphs` (CUDA, amp none or bf16).")] = False,
    json_out: JsonOut = None,
) -> None:
    """Time the training loop's iteration with its real loader: images/s, step time, loader wait,
    host syncs per step, FLOP/s against the device's peak, peak memory.

    `atss bench model --mode train` times the model's step on one fixed batch already on the
    device (the ceiling); this command runs what `atss train` runs per iteration, fed by the
    DataLoader over JPEG files, so the gap between the two is the loader's and the loop's cost.
    """
    from atss_cli.benchmarks import model as bench_model
    from atss_cli.benchmarks import train as bench

    out = console()
    w, h = bench_model.parse_size(scale)
    report = bench.bench_train(
        device=device.value, batch=batch, amp=amp.value, channels_last=channels_last, steps=steps, warmup=warmup,
        depth=depth, preset=preset, workers=workers, scale=(w, h), image_size=bench_model.parse_size(image_size),
        quality=quality, images_dir=images_dir, coco=coco, train_ann=train_ann, train_images=train_images,
        peak_tflops=peak_tflops, profile=profile, threads=threads, seed=seed, cuda_graphs=cuda_graphs,
        progress=progress_printer(out))
    print_report(out, report)
    write_json(out, json_out, report)


def print_report(out, r: dict) -> None:
    from rich.markup import escape

    env, s, st = r["environment"], r["setting"], r["step_s"]
    devices = ", ".join(f"{k}: {v}" for k, v in env["devices"].items())
    out.print(f"torch {env['torch']} (CUDA {env['cuda']}), torchvision {env['torchvision']}, "
              f"python {env['python']}, {env['threads']} CPU threads; {devices}")
    if env.get("load_average"):
        out.print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in env["load_average"]))
    d = s["data"]
    data = (f"{d['count']} generated {d['size']} JPEGs, quality {d['quality']}, {d['mean_bytes'] / 1e3:.0f} kB each"
            if d["source"] == "generated" else escape(f"{d['source']} {d.get('root') or d.get('ann')}"))
    variant = (f"R{s['depth']} {'fp32' if s['amp'] == 'none' else s['amp']}" + (" NHWC" if s["channels_last"] else "")
               + (" CUDA graphs" if s.get("cuda_graphs") else ""))
    out.print(f"atss bench train: {variant}, 1 process x {s['batch']} images, accumulate 1, "
              f"{s['workers']} loader workers, resize to fit {s['scale'][0]}x{s['scale'][1]}; data: {data}")
    out.print(f"  images/s        {r['images_per_s']:.2f}  ({r['images']} images in {r['window_s']:.2f} s, "
              f"{s['steps']} steps after {s['warmup']} warm-up)")
    out.print(f"  step s          median {st['median']:.4f}, IQR {st['q1']:.4f}..{st['q3']:.4f} "
              f"({st['iqr_pct']:.0f}%), min..max {st['min']:.4f}..{st['max']:.4f}")
    out.print(f"  loader wait     {100 * r['loader_wait_share']:.1f}% of the window ({r['loader_wait_s']:.3f} s)")
    if r["host_syncs_per_step"] is None:
        out.print(f"  host syncs/step {r['host_sync_note']}")
    else:
        sites = escape("; ".join(f"{x['where']} x{x['count']}" for x in r["host_sync_sites"][:5]))
        out.print(f"  host syncs/step {r['host_syncs_per_step']:.1f}" + (f"  ({sites})" if sites else ""))
    ach = r["achieved_tflops"]
    for what, error in (r.get("diagnostic_errors") or {}).items():
        out.print(f"  {what} failed: {escape(error)}")
    frac = (f", {100 * r['peak_fraction']:.1f}% of {r['peak_tflops']:g} TFLOP/s ({r['peak_basis']})"
            if r["peak_fraction"] is not None else f" (peak: {r['peak_basis']})")
    out.print(f"  FLOP/s          {'-' if ach is None else format(ach, '.3g')} TFLOP/s achieved ({r['flops_per_image'] / 1e9:.1f} GFLOP an image, "
              f"forward+backward, FlopCounterMode){frac}")
    out.print(f"  peak memory     {r['peak_memory_gb']:.2f} GB ({escape(r['peak_memory_kind'])})")
    g = r.get("cuda_graphs")
    if g:
        eager = ", ".join(f"{k} {v}" for k, v in g["eager"].items()) or "none"
        out.print(f"  CUDA graphs     {g['timed_steps_replayed']} of {g['timed_steps']} timed steps replayed; "
                  f"{g['captures']} captured in {g['capture_s']:.2f} s, {g['graphs']} held; eager steps: {eager}")
    if r.get("profile"):
        from rich.table import Table

        table = Table(title="top operators by self time, per step", title_justify="left")
        for name in ("operator", "calls", "self CPU ms", "self device ms"):
            table.add_column(name, justify="left" if name == "operator" else "right", no_wrap=True)
        for p in r["profile"]:
            table.add_row(escape(p["name"][:60]), f"{p['calls_per_step']:.0f}", f"{p['self_cpu_ms_per_step']:.2f}",
                          "-" if p["self_device_ms_per_step"] is None else f"{p['self_device_ms_per_step']:.2f}")
        out.print(table)
