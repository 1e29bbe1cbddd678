"""`atss bench data`: how many training images per second the input pipeline makes, per loader
worker and through the real DataLoader, and how many workers a GPU at a given rate needs.

The OpenCV path (`data.transforms`, MMDetection's bit for bit) is what training runs and stays
the default. Stages, each timed over the same COCO-size JPEGs in this process (one worker's
work, one thread):
    decode       transforms.read_image (cv2.imdecode, EXIF applied)
    resize       cv2.resize INTER_LINEAR to the recipe's keep-ratio size (the call the pipeline makes)
    uint8        decode + resize + flip, left uint8 (transforms.train_pixels' work: atss train
                 normalises and pads on the device)
    pipeline     transforms.train_input on the decoded image: resize, flip (every other image,
                 as flip_prob 0.5), normalise, pad to 32 (the float32 path evaluation and the
                 default TrainDataset keep)
    sample       TrainDataset[i] with uint8_images, as atss train loads: what a worker computes
                 per image (decode + resize + flip + targets)
    loader       build_train_loader at `workers` processes with uint8_images, as atss train,
                 collate included: images/s of batches
Workers needed for a GPU at `target` images/s = ceil(target / sample images/s), an upper bound
on scaling (it assumes a core per worker and no collate or transfer cost in the main process).

`--decoder torchvision-gpu` (CUDA only) measures the alternative: the files' bytes read on the
host, `torchvision.io.decode_jpeg(..., device="cuda")` on a batch, then resize (bilinear,
`F.interpolate`, no antialias, rounded to uint8 as cv2 does), flip, normalise and pad on the GPU,
synchronised per batch. Its distance from the OpenCV path on the same images is reported three
ways (max and mean absolute difference in 0..255 pixel units): the decoders alone (nvJPEG vs
libjpeg-turbo), the resizes alone (the OpenCV-decoded pixels resized both ways), and the whole
decode + resize.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

DECODERS = ("opencv", "torchvision-gpu")


def _per_image(fn, items, repeats: int) -> list[float]:
    """Seconds per image of `fn(item)` over `items`, one figure per pass (the best of passes is
    not taken: the median of passes is reported, with the spread)."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for item in items:
            fn(item)
        out.append((time.perf_counter() - t0) / len(items))
    return out


def _row(name: str, per_image: list[float], note: str = "") -> dict:
    med = statistics.median(per_image)
    return {"stage": name, "ms_per_image": 1e3 * med, "min_ms": 1e3 * min(per_image),
            "max_ms": 1e3 * max(per_image), "images_per_s": 1.0 / med if med > 0 else float("inf"),
            "passes": len(per_image), "note": note}


def opencv_stages(cache, paths: list[str], scale: tuple[int, int], repeats: int) -> list[dict]:
    import cv2
    import numpy as np

    from atss_cli.data.dataset import TrainDataset
    from atss_cli.data.transforms import read_image, rescale_size, train_input

    cv2.setNumThreads(1)  # as in a worker (transforms._cv2)
    decoded = [read_image(p) for p in paths]
    boxes = [cache.boxes(i) for i in range(len(paths))]
    sizes = [rescale_size(img.shape[1], img.shape[0], scale)[:2] for img in decoded]
    def uint8_path(i):
        img = cv2.resize(read_image(paths[i]), sizes[i], interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(img[:, ::-1]) if i % 2 else img

    rows = [_row("decode", _per_image(read_image, paths, repeats), "cv2.imdecode"),
            _row("resize", _per_image(lambda i: cv2.resize(decoded[i], sizes[i], interpolation=cv2.INTER_LINEAR),
                                      range(len(paths)), repeats),
                 f"cv2.resize INTER_LINEAR to {sizes[0][0]}x{sizes[0][1]}"),
            _row("uint8", _per_image(uint8_path, range(len(paths)), repeats),
                 "decode, resize, flip, left uint8 (train_pixels' work; atss train normalises and pads on the device)"),
            _row("pipeline", _per_image(lambda i: train_input(decoded[i], boxes[i], i % 2 == 1, scale),
                                        range(len(paths)), repeats), "resize, flip, normalise, pad (train_input)")]
    # uint8_images as `atss train` loads (training/setup.py): the worker leaves normalising and
    # padding to the training step on the device.
    dataset = TrainDataset(cache, scale=scale, flip_prob=0.5, uint8_images=True)
    rows.append(_row("sample", _per_image(lambda i: dataset[(i, i)], range(len(dataset)), repeats),
                     "TrainDataset[i] as atss train loads it (uint8): decode + resize + flip + targets, "
                     "one worker's work"))
    return rows


def loader_rate(cache, *, workers: int, batch: int, scale: tuple[int, int], batches: int, warmup: int,
                pin_memory: bool) -> dict:
    """Images/s of the training DataLoader at `workers` processes, after `warmup` batches."""
    from atss_cli.data import build_train_loader
    from atss_cli.errors import AtssError, param

    loader, sampler = build_train_loader(cache, batch_per_rank=batch, workers=workers, scale=scale,
                                         pin_memory=pin_memory, uint8_images=True)  # as atss train
    if len(sampler) < warmup + batches:
        raise AtssError(f"{param('loader_batches')} {batches} at {param('batch')} {batch} and {workers} workers "
                        f"needs {batch * (warmup + batches)} training images in one epoch, the data has "
                        f"{len(sampler) * batch}")
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    images, marks = 0, [time.perf_counter()]
    for _ in range(batches):
        b = next(it)
        images += b["images"].shape[0]
        marks.append(time.perf_counter())
    del it, loader
    window = marks[-1] - marks[0]
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return {"workers": workers, "batch": batch, "batches": batches, "images": images, "window_s": window,
            "images_per_s": images / window if window > 0 else float("inf"),
            "batch_s_median": statistics.median(gaps), "batch_s_max": max(gaps), "pin_memory": pin_memory}


def gpu_decoder(paths: list[str], scale: tuple[int, int], *, batch: int, repeats: int, device="cuda") -> dict:
    """The torchvision decode + resize on `device` (the command allows only CUDA; the tests run it
    on the CPU, where torchvision decodes with libjpeg-turbo), timed per batch, and its distance
    from the OpenCV path."""
    import warnings

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated on every call (in favour of
        # TorchCodec); decode_jpeg is still there, and it is what issue 18 asks to measure.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _gpu_decoder(paths, scale, batch=batch, repeats=repeats, device=device)


def _gpu_decoder(paths: list[str], scale: tuple[int, int], *, batch: int, repeats: int, device) -> dict:
    import numpy as np
    import torch
    import torchvision
    from torch.nn import functional as F

    from atss_cli.data.transforms import MEAN, STD, SIZE_DIVISOR, read_image, rescale_size
    import cv2

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    mean = torch.tensor(MEAN, device=dev).view(3, 1, 1)
    std = torch.tensor(STD, device=dev).view(3, 1, 1)

    def resize(img: torch.Tensor, w: int, h: int) -> torch.Tensor:
        out = F.interpolate(img[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)
        return out[0].round_().clamp_(0, 255)

    def decode_batch(chunk: list[str]):
        data = [torchvision.io.read_file(p) for p in chunk]
        return torchvision.io.decode_jpeg(data, device=dev)

    def run(chunk: list[str]) -> torch.Tensor:
        images = decode_batch(chunk)
        sized = []
        for i, img in enumerate(images):
            w, h, _ = rescale_size(img.shape[-1], img.shape[-2], scale)
            x = resize(img, w, h)
            sized.append(x.flip(-1) if i % 2 else x)
        ph = -(-max(x.shape[-2] for x in sized) // SIZE_DIVISOR) * SIZE_DIVISOR
        pw = -(-max(x.shape[-1] for x in sized) // SIZE_DIVISOR) * SIZE_DIVISOR
        out = torch.zeros(len(sized), 3, ph, pw, device=dev)
        for i, x in enumerate(sized):
            out[i, :, :x.shape[-2], :x.shape[-1]] = (x - mean) / std
        return out

    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    chunks = [c for c in chunks if len(c) == batch] or chunks[:1]
    run(chunks[0])  # warm-up: nvJPEG handles, kernels
    sync()
    per_image = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for c in chunks:
            run(c)
            n += len(c)
        sync()
        per_image.append((time.perf_counter() - t0) / n)

    # Distance from the OpenCV path on the same files (RGB, 0..255).
    cv2.setNumThreads(1)
    dec_max = dec_sum = rs_max = rs_sum = all_max = all_sum = 0.0
    count_dec = count_rs = 0
    for p in paths[:min(len(paths), 16)]:
        ref = read_image(p)                                            # BGR uint8 [h, w, 3]
        w, h, _ = rescale_size(ref.shape[1], ref.shape[0], scale)
        ref_rs = cv2.resize(ref, (w, h), interpolation=cv2.INTER_LINEAR)
        ref_t = torch.from_numpy(np.ascontiguousarray(ref[:, :, ::-1].transpose(2, 0, 1))).to(dev)
        ref_rs_t = torch.from_numpy(np.ascontiguousarray(ref_rs[:, :, ::-1].transpose(2, 0, 1))).to(dev).float()
        gpu = decode_batch([p])[0]
        d = (gpu.float() - ref_t.float()).abs()
        dec_max, dec_sum, count_dec = max(dec_max, float(d.max())), dec_sum + float(d.sum()), count_dec + d.numel()
        d = (resize(ref_t, w, h) - ref_rs_t).abs()
        rs_max, rs_sum, count_rs = max(rs_max, float(d.max())), rs_sum + float(d.sum()), count_rs + d.numel()
        d = (resize(gpu, w, h) - ref_rs_t).abs()
        all_max, all_sum = max(all_max, float(d.max())), all_sum + float(d.sum())
    med = statistics.median(per_image)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"decoder": "torchvision-gpu" if dev.type == "cuda" else f"torchvision-{dev.type}",
            "device": name, "batch": batch, "ms_per_image": 1e3 * med, "min_ms": 1e3 * min(per_image),
            "max_ms": 1e3 * max(per_image), "images_per_s": 1.0 / med if med > 0 else float("inf"),
            "passes": len(per_image), "compared_images": min(len(paths), 16),
            "decode_vs_opencv": {"max_abs": dec_max, "mean_abs": dec_sum / max(count_dec, 1)},
            "resize_vs_opencv": {"max_abs": rs_max, "mean_abs": rs_sum / max(count_rs, 1)},
            "decode_resize_vs_opencv": {"max_abs": all_max, "mean_abs": all_sum / max(count_rs, 1)},
            "note": "file bytes read on the host; decode, resize (bilinear, rounded), flip, normalise, pad on "
                    "the device; synchronised after each pass"}


def _loader_warmup(workers: int) -> int:
    """Untimed batches before a loader's timing: the workers' start and their first prefetch."""
    return max(2, workers)


def bench_data(*, images: int = 64, image_size: tuple[int, int] = (640, 480), quality: int = 90,
               scale: tuple[int, int] = (1333, 800), workers: list[int] | None = None, batch: int = 2,
               loader_batches: int = 16, repeats: int = 3, target_ips: float = 200.0,
               decoders: tuple[str, ...] = ("opencv",), gpu_batch: int = 16, images_dir=None,
               coco=None, train_ann=None, train_images=None, seed: int = 0, progress=None) -> dict:
    """The report: per-stage rows, loader rows per worker count, workers needed, GPU decoder row."""
    import os

    import torch

    from atss_cli.benchmarks.images import coco_size_images, default_folder
    from atss_cli.benchmarks.model import environment
    from atss_cli.data.cache import load_ann
    from atss_cli.data import load_split
    from atss_cli.errors import AtssError, param

    bad = [d for d in decoders if d not in DECODERS]
    if bad:
        raise AtssError(f"{param('decoder')} {bad[0]!r}: choose from {', '.join(DECODERS)}")
    if "torchvision-gpu" in decoders and not torch.cuda.is_available():
        raise AtssError(f"{param('decoder')} torchvision-gpu needs CUDA; no CUDA device is available "
                        "(torch.cuda.is_available() is False)")
    if images < 2 or repeats < 1 or batch < 1 or loader_batches < 1 or not target_ips > 0:
        raise AtssError(f"{param('images')} must be >= 2, {param('repeats')}, {param('batch')} and "
                        f"{param('loader_batches')} >= 1, {param('target_ips')} > 0")
    if train_ann and not train_images:
        raise AtssError(f"{param('train_ann')} needs {param('train_images')} DIR")
    say = progress or (lambda message: None)
    workers = list(workers or [])
    if coco:
        cache, data = load_split(Path(coco), "train2017"), {"source": "coco", "root": str(coco)}
    elif train_ann:
        cache, data = load_ann(Path(train_ann), Path(train_images)), {"source": "train_ann", "ann": str(train_ann)}
    else:
        need = max(images, batch * (loader_batches + _loader_warmup(max(workers, default=0)) + 1))
        made = coco_size_images(Path(images_dir) if images_dir else default_folder(image_size, quality), need,
                                size=image_size, quality=quality, seed=seed)
        cache, data = load_ann(Path(made["ann"]), Path(made["images"])), {"source": "generated", **made}
    paths = [str(cache.image_path(i)) for i in range(min(images, cache.num_images))]
    rows = []
    if "opencv" in decoders:
        say("OpenCV stages, one process")
        rows = opencv_stages(cache, paths, scale, repeats)
    loaders = []
    for n in workers:
        say(f"DataLoader at {n} workers")
        loaders.append(loader_rate(cache, workers=n, batch=batch, scale=scale, batches=loader_batches,
                                   warmup=_loader_warmup(n), pin_memory=torch.cuda.is_available()))
    sample = next((r for r in rows if r["stage"] == "sample"), None)
    need = math.ceil(target_ips / sample["images_per_s"]) if sample else None
    gpu = None
    if "torchvision-gpu" in decoders:
        say("torchvision decode_jpeg on the GPU")
        gpu = gpu_decoder(paths, scale, batch=gpu_batch, repeats=repeats)
    return {"environment": {**environment(["cuda"] if torch.cuda.is_available() else []),
                            "cpu_count": os.cpu_count(),
                            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
            "setting": {"data": data, "images": len(paths), "scale": list(scale), "batch": batch,
                        "repeats": repeats, "target_ips": target_ips},
            "stages": rows, "loaders": loaders,
            "workers_needed": need,
            "workers_needed_note": (f"ceil({target_ips:g} / {sample['images_per_s']:.1f}) OpenCV workers, a core "
                                    "each, for a GPU at that rate" if sample else None),
            "gpu_decoder": gpu}
