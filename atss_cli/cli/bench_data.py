"""`atss bench data`: images/s of the training input pipeline per worker and through the loader."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from atss_cli.cli.common import JsonOut, console, progress_printer, write_json


class Decoder(str, enum.Enum):
    opencv = "opencv"
    torchvision_gpu = "torchvision-gpu"


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    bench_app.command("data")(bench_data_command)


def bench_data_command(
    workers: Annotated[Optional[list[int]], typer.Option(
        "--workers", min=0, help="Also time the real training DataLoader at N workers; repeat for several.")] = None,
    target_ips: Annotated[float, typer.Option("--target-ips", help="The images/s a GPU needs fed, for the "
                                                                   "workers-needed line.")] = 200.0,
    decoder: Annotated[Optional[list[Decoder]], typer.Option(
        "--decoder", help="opencv (the training pipeline, default) and/or torchvision-gpu (batched "
                          "decode_jpeg + resize on CUDA; needs a GPU); repeat for both.")] = None,
    images: Annotated[int, typer.Option("--images", min=2, help="Images timed per stage pass.")] = 64,
    image_size: Annotated[str, typer.Option("--image-size", help="Generated JPEGs' size WxH.")] = "640x480",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="Generated JPEGs' quality.")] = 90,
    scale: Annotated[str, typer.Option("--scale", help="The recipe's keep-ratio resize, LONGxSHORT.")] = "1333x800",
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per loader batch.")] = 2,
    loader_batches: Annotated[int, typer.Option("--loader-batches", min=1, help="Batches timed per worker "
                                                                                "count.")] = 16,
    gpu_batch: Annotated[int, typer.Option("--gpu-batch", min=1, help="Images per decode_jpeg call "
                                                                      "(torchvision-gpu).")] = 16,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Passes over the images per stage.")] = 3,
    images_dir: Annotated[Optional[Path], typer.Option(
        "--images-dir", file_okay=False, help="Keep the generated JPEGs here (default: the temp dir).")] = None,
    coco: Annotated[Optional[Path], typer.Option("--coco", exists=True, file_okay=False,
                                                 help="Time this COCO root's train2017 instead.")] = None,
    train_ann: Annotated[Optional[Path], typer.Option("--train-ann", exists=True, dir_okay=False,
                                                      help="Or this COCO-format JSON ...")] = None,
    train_images: Annotated[Optional[Path], typer.Option("--train-images", exists=True, file_okay=False,
                                                         help="... and its image folder.")] = None,
    json_out: JsonOut = None,
) -> None:
    """Time decode, resize, flip and padding of COCO-size JPEGs through the training pipeline (one
    worker's rate), the DataLoader at --workers N, and how many workers a GPU at --target-ips needs."""
    from atss_cli.benchmarks import data as bench
    from atss_cli.benchmarks.model import parse_size

    out = console()
    report = bench.bench_data(
        images=images, image_size=parse_size(image_size), quality=quality, scale=parse_size(scale),
        workers=workers, batch=batch, loader_batches=loader_batches, repeats=repeats, target_ips=target_ips,
        decoders=tuple(d.value for d in decoder) if decoder else ("opencv",), gpu_batch=gpu_batch,
        images_dir=images_dir, coco=coco, train_ann=train_ann, train_images=train_images,
        progress=progress_printer(out))
    print_report(out, report)
    write_json(out, json_out, report)


def print_report(out, r: dict) -> None:
    from rich.markup import escape

    env, s = r["environment"], r["setting"]
    out.print(f"torch {env['torch']}, torchvision {env['torchvision']}, python {env['python']}; "
              f"{env['cpu']}, {env['affinity'] or env['cpu_count']} usable CPUs; load average "
              + ", ".join(f"{v:.2f}" for v in (env.get("load_average") or [])))
    d = s["data"]
    data = (f"{d['size']} JPEGs at quality {d['quality']}, {d['mean_bytes'] / 1e3:.0f} kB each"
            if d["source"] == "generated" else escape(f"{d['source']} {d.get('root') or d.get('ann')}"))
    out.print(f"atss bench data: {s['images']} images ({data}), resized to fit {s['scale'][0]}x{s['scale'][1]}")
    if r["stages"]:
        out.print("one process, one thread (a loader worker's rate), median of passes:")
        for row in r["stages"]:
            out.print(f"  {row['stage']:<9} {row['ms_per_image']:7.2f} ms/image  {row['images_per_s']:7.1f} images/s"
                      f"  (min..max {row['min_ms']:.2f}..{row['max_ms']:.2f} ms)  {escape(row['note'])}")
    for row in r["loaders"]:
        out.print(f"  DataLoader, {row['workers']} workers, batch {row['batch']}: {row['images_per_s']:.1f} images/s "
                  f"({row['images']} images in {row['window_s']:.2f} s; batch gap median {row['batch_s_median']:.3f} s, "
                  f"max {row['batch_s_max']:.3f} s)")
    if r["workers_needed"] is not None:
        out.print(f"a GPU at {s['target_ips']:g} images/s needs {r['workers_needed']} OpenCV workers "
                  f"({r['workers_needed_note']}); this machine has {env['affinity'] or env['cpu_count']} CPUs")
    g = r.get("gpu_decoder")
    if g:
        out.print(f"  {g['decoder']} on {g['device']}, batch {g['batch']}: {g['ms_per_image']:.3f} ms/image, "
                  f"{g['images_per_s']:.0f} images/s (min..max {g['min_ms']:.3f}..{g['max_ms']:.3f} ms)")
        for key, what in (("decode_vs_opencv", "decode vs OpenCV's"), ("resize_vs_opencv", "resize vs cv2.resize"),
                          ("decode_resize_vs_opencv", "decode + resize vs OpenCV's")):
            v = g[key]
            out.print(f"    {what}: max {v['max_abs']:.0f}, mean {v['mean_abs']:.3f} (0..255 units, "
                      f"{g['compared_images']} images)")
