"""`atss bench model`: images per second of the detector's forward pass, full training step
(forward, loss, backward, SGD) and predict (forward + post-processing), per device, image size,
AMP mode and memory format. Returns rows; the CLI prints them.

Each case is timed `repeats` times after `warmup` untimed runs (CUDA synchronised around each
run); a row gives the median seconds per call, the spread (min, max, and the interquartile range
relative to the median), seconds per image = median / batch and images/s = batch / median.

Backends: "torch" (the PyTorch model, every mode) and "onnxruntime" (predict only: the `atss
export` graph on ONNX Runtime's CPU provider, from `onnx=FILE` or exported on the fly from the
same model the torch rows time). Both predict rows time the same work: the padded batch in, final
detections out (the resize before it is outside both); the ONNX graph also normalises its uint8
input, which the PyTorch row gets already normalised.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence


MODES = ("forward", "train", "predict")
BACKENDS = ("torch", "onnxruntime")
DEFAULT_SIZES = ((1333, 800), (640, 480))  # (w, h) before padding


@dataclass
class ModelBenchRow:
    device: str
    mode: str              # forward | train | predict
    size: str              # "WxH" of the images before padding
    padded: str            # "WxH" of the batch tensor
    batch: int
    depth: int
    amp: str               # none | bf16 | fp16
    channels_last: bool
    threads: int
    repeats: int
    median_s: float        # seconds per call
    min_s: float
    max_s: float
    iqr_pct: float         # interquartile range / median, in percent
    images_per_s: float
    cpu_s: float = 0.0     # median process CPU seconds per call (all threads): cpu_s / threads close to
    #                        median_s means the CPU was not shared with other work
    detections: float | None = None  # mean detections per image (predict)
    peak_gb: float | None = None  # CUDA: the caching allocator's peak during the timed calls
    backend: str = "torch"  # torch | onnxruntime
    s_per_image: float = 0.0  # median_s / batch

    def as_dict(self) -> dict:
        return asdict(self)


def environment(devices: Sequence[str] = ()) -> dict:
    """Versions and devices, for the header of the report."""
    import torch

    from atss_cli import environment as machine

    known = machine.versions()
    env = {k: known[k] for k in ("torch", "torchvision", "cuda", "python")}
    env.update({"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "load_average": machine.load_average(),
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                "devices": {d: machine.device_name(d) for d in devices}})
    return env


def resolve_devices(device: str) -> list[str]:
    """"auto" -> cpu plus cuda when present; "cpu" / "cuda" as given (cuda must exist)."""
    import torch

    from atss_cli.errors import AtssError, param

    if device == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AtssError(f"{param('device')} cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise AtssError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return [device]


def parse_size(text: str) -> tuple[int, int]:
    """"1333x800" -> (1333, 800) as (w, h)."""
    from atss_cli.errors import AtssError, param

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise AtssError(f"image size must look like 1333x800 (width x height), got {text!r}") from None
    if w < 32 or h < 32:
        raise AtssError(f"image size must be at least 32x32, got {text!r}")
    return w, h


def synthetic_batch(batch: int, size: tuple[int, int], num_classes: int, *, boxes_per_image: int = 8,
                    seed: int = 0, device="cpu"):
    """Random normalised images zero-padded to a multiple of 32, and random GT boxes inside them:
    (images [B, 3, H_pad, W_pad], targets as `model.loss` takes them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w, h = size
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    images = torch.zeros(batch, 3, ph, pw)
    images[:, :, :h, :w] = torch.randn(batch, 3, h, w, generator=g)
    targets = []
    for _ in range(batch):
        wh = torch.rand(boxes_per_image, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5]) + 8
        xy = torch.rand(boxes_per_image, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1).to(device),
                        "labels": torch.randint(0, num_classes, (boxes_per_image,), generator=g).to(device),
                        "img_shape": (h, w)})
    return images.to(device), targets


def _timed(fn, repeats: int, warmup: int, sync) -> tuple[list[float], list[float]]:
    """Wall seconds and process CPU seconds of each timed call."""
    for _ in range(warmup):
        fn()
    sync()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


def bench_model(*, devices: Sequence[str] = ("cpu",), sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                modes: Sequence[str] = MODES, batch: int = 2, depth: int = 50, preset: str | None = None,
                amp: str | None = None, channels_last: bool = False, repeats: int = 5, warmup: int = 1,
                threads: int | None = None, num_classes: int = 80, checkpoint: str | None = None,
                dense_scores: bool = False, progress=None, backends: Sequence[str] = ("torch",),
                onnx: str | None = None) -> list[ModelBenchRow]:
    """Time the detector; one row per (device, size, mode).

    Args:
        devices: e.g. ["cpu", "cuda"].
        sizes: (w, h) image sizes before padding to 32.
        modes: any of "forward" (train-mode forward, no grad), "train" (forward, loss, backward,
            SGD step), "predict" (eval-mode forward + post-processing).
        batch: images per call.
        depth / preset: the model (`build_atss(depth=...)`, or a named preset).
        amp: None, "bf16" or "fp16" (torch.autocast; fp16 training uses a GradScaler on CUDA).
        channels_last: model and images in channels_last memory format.
        repeats, warmup: timed and untimed runs per case.
        threads: torch CPU threads (None: leave as is).
        checkpoint: load these weights (predict then sees real scores); default random init.
        dense_scores: set the class bias so every (anchor, class) pair passes the 0.05 score
            threshold: post-processing at its worst (1000 candidates per level, NMS over 5000).
        progress: called with a message before each case.
        backends: "torch" and/or "onnxruntime" (predict rows only; on the CPU).
        onnx: an `atss export` file for the onnxruntime rows (default: the model above, exported
            in memory).
    """
    import torch

    from atss_cli import precision
    from atss_cli.errors import AtssError, param
    from atss_cli.model import build_atss, build_atss_preset, load_checkpoint

    bad = [m for m in modes if m not in MODES]
    if bad:
        raise AtssError(f"unknown bench mode {bad[0]!r}; choose from {', '.join(MODES)}")
    if amp not in (None, "none", "bf16", "fp16"):
        raise AtssError(f"{param('amp')} must be none, bf16 or fp16, got {amp!r}")
    amp = None if amp == "none" else amp
    if batch < 1 or repeats < 1 or warmup < 0:
        raise AtssError(f"batch and repeats must be >= 1 and warmup >= 0, got {batch}, {repeats}, {warmup}")
    bad = [b for b in backends if b not in BACKENDS]
    if bad:
        raise AtssError(f"unknown backend {bad[0]!r}; choose from {', '.join(BACKENDS)}")
    if "onnxruntime" in backends and "predict" not in modes:
        raise AtssError(f"{param('backend')} onnxruntime times predict only; add {param('mode')} predict")
    if onnx is not None and "onnxruntime" not in backends:
        raise AtssError(f"{param('onnx')} is for {param('backend')} onnxruntime")
    if threads is not None:
        torch.set_num_threads(threads)
    rows: list[ModelBenchRow] = []
    if "onnxruntime" in backends:
        rows += bench_onnxruntime(sizes=sizes, batch=batch, depth=depth, preset=preset, repeats=repeats,
                                  warmup=warmup, threads=threads or torch.get_num_threads(),
                                  num_classes=num_classes, checkpoint=checkpoint, dense_scores=dense_scores,
                                  onnx=onnx, progress=progress)
    if "torch" not in backends:
        return rows
    for device in devices:
        dev = torch.device(device)
        torch.manual_seed(0)
        model = (build_atss_preset(preset, num_classes) if preset
                 else build_atss(num_classes=num_classes, depth=depth))
        if checkpoint:
            load_checkpoint(model, checkpoint, skip_mismatched=True)
        if dense_scores:
            with torch.no_grad():
                model.bbox_head.atss_cls.bias.fill_(2.0)  # sigmoid ~ 0.88 before the image's features
        model.to(dev)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model.to(memory_format=torch.channels_last)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        autocast = (lambda: precision.autocast(dev, amp))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9, weight_decay=1e-4)
        scaler = torch.amp.GradScaler(dev.type, enabled=(amp == "fp16" and dev.type == "cuda"))
        for size in sizes:
            images, targets = synthetic_batch(batch, size, num_classes, device=dev)
            images = images.contiguous(memory_format=memory_format)
            img_shapes = [t["img_shape"] for t in targets]
            scale_factors = [(1.0, 1.0)] * batch
            detections: list[int] = []

            def forward():
                with torch.no_grad(), autocast():
                    model(images)

            def train_step():
                with autocast():
                    losses = model.loss(images, targets)
                    loss = sum(losses.values())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            def predict():
                with torch.inference_mode(), autocast():
                    dets = model.predict(images, img_shapes, scale_factors)
                detections.extend(len(d["scores"]) for d in dets)

            for mode in modes:
                if progress is not None:
                    progress(f"{device} {mode} {size[0]}x{size[1]} x{batch}")
                model.train(mode != "predict")
                fn = {"forward": forward, "train": train_step, "predict": predict}[mode]
                detections.clear()
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                times, cpu = _timed(fn, repeats, warmup, sync)
                med = statistics.median(times)
                q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
                rows.append(ModelBenchRow(
                    device=device if dev.type == "cpu" else f"{device} ({torch.cuda.get_device_name(dev)})",
                    mode=mode, size=f"{size[0]}x{size[1]}",
                    padded=f"{images.shape[-1]}x{images.shape[-2]}", batch=batch,
                    depth=model.backbone.depth, amp=amp or "none", channels_last=channels_last,
                    threads=torch.get_num_threads(), repeats=repeats, median_s=med, min_s=min(times),
                    max_s=max(times), iqr_pct=100 * (q[2] - q[0]) / med if med > 0 else 0.0,
                    images_per_s=batch / med if med > 0 else float("inf"), cpu_s=statistics.median(cpu),
                    s_per_image=med / batch,
                    detections=(sum(detections) / len(detections)) if detections else None,
                    peak_gb=torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None))
        del model, optimizer
    return rows


def _build_model(depth: int, preset: str | None, num_classes: int, checkpoint: str | None, dense_scores: bool):
    import torch

    from atss_cli.model import build_atss, build_atss_preset, load_checkpoint

    torch.manual_seed(0)
    model = build_atss_preset(preset, num_classes) if preset else build_atss(num_classes=num_classes, depth=depth)
    if checkpoint:
        load_checkpoint(model, checkpoint, skip_mismatched=True)
    if dense_scores:
        with torch.no_grad():
            model.bbox_head.atss_cls.bias.fill_(2.0)
    return model.eval()


def onnx_session(path_or_bytes, threads: int):
    """An ONNX Runtime CPU session as `atss predict --onnx` makes one (atss_cli.inference.onnx_runtime),
    with `threads` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(path_or_bytes) if not isinstance(path_or_bytes, bytes) else path_or_bytes
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def bench_onnxruntime(*, sizes, batch: int, depth: int, preset: str | None, repeats: int, warmup: int,
                      threads: int, num_classes: int = 80, checkpoint: str | None = None,
                      dense_scores: bool = False, onnx: str | None = None, progress=None) -> list[ModelBenchRow]:
    """Predict rows on ONNX Runtime (CPU): the `atss export` graph on a uint8 padded batch."""
    import numpy as np

    from atss_cli.errors import AtssError, param
    from atss_cli.inference.onnx_runtime import read_metadata

    if onnx is not None:
        try:
            session = onnx_session(onnx, threads)
        except Exception as exc:  # noqa: BLE001 - ORT's own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise AtssError(f"{param('onnx')} {onnx}: ONNX Runtime cannot load it: {first}") from None
        meta = read_metadata(session)
        model_depth = int((meta.get("model") or {}).get("depth", 50))
    else:
        from atss_cli.export.onnx_export import build_onnx, export_metadata

        model = _build_model(depth, preset, num_classes, checkpoint, dense_scores)
        names = [f"class {i}" for i in range(num_classes)]
        meta = export_metadata(model, categories=[{"id": i, "name": n} for i, n in enumerate(names)],
                               scale=(1333, 800), source="bench", model_fields={"depth": model.backbone.depth})
        if progress is not None:
            progress(f"exporting R{model.backbone.depth} to ONNX")
        session = onnx_session(build_onnx(model, metadata=meta).SerializeToString(), threads)
        model_depth = model.backbone.depth
        del model
    rows = []
    rng = np.random.default_rng(0)
    for w, h in sizes:
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        images = np.zeros((batch, 3, ph, pw), dtype=np.uint8)
        images[:, :, :h, :w] = rng.integers(0, 256, (batch, 3, h, w), dtype=np.uint8)
        feeds = {"images": images, "img_shape": np.tile(np.asarray([[h, w]], np.int64), (batch, 1)),
                 "scale_factor": np.ones((batch, 2), np.float32)}
        detections: list[int] = []

        def predict():
            num = session.run(["num_detections"], feeds)[0]
            detections.extend(int(n) for n in num)

        if progress is not None:
            progress(f"onnxruntime predict {w}x{h} x{batch}")
        times, cpu = _timed(predict, repeats, warmup, lambda: None)
        med = statistics.median(times)
        q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
        rows.append(ModelBenchRow(
            device="cpu", mode="predict", size=f"{w}x{h}", padded=f"{pw}x{ph}", batch=batch, depth=model_depth,
            amp="none", channels_last=False, threads=threads, repeats=repeats, median_s=med, min_s=min(times),
            max_s=max(times), iqr_pct=100 * (q[2] - q[0]) / med if med > 0 else 0.0,
            images_per_s=batch / med if med > 0 else float("inf"), cpu_s=statistics.median(cpu),
            detections=(sum(detections) / len(detections)) if detections else None,
            backend="onnxruntime", s_per_image=med / batch))
    return rows
