"""`atss bench train`: the training loop's own iteration, fed by its own loader, timed.

What runs is what `atss train` runs: `training.setup.prepare_run` builds the run (model, the
real DataLoader over JPEG files with the recipe's resize and flip, SGD, GradScaler, batch plan)
from a TrainConfig, and each step is one `training.step.train_iteration` (`_one_step`, the one
place that calls into the training step). One process, `accumulate` 1, `batch` images per step:
the setting of issue 18's targets. The data are generated COCO-size JPEGs
(`benchmarks.images`) or a COCO folder / COCO-format JSON.

How it measures (the report's fields):
- step time: host wall time from one step's start to the next's; nothing synchronises inside
  the timed window (the GPU's queue is as the loop leaves it), the window is synchronised at
  both ends, and images/s = images in the window / its length.
- loader wait: time blocked in `next()` on the loader's iterator, over the window's length.
- host syncs per step (CUDA): extra steps after the window under
  `torch.cuda.set_sync_debug_mode("warn")`, the warnings captured and counted, with the Python
  line that caused each. On the CPU there is no device to wait for: n/a.
- FLOPs: one more real step under `torch.utils.flop_counter.FlopCounterMode` (forward, loss,
  backward; convolutions and matrix products, which are nearly all of it). Achieved FLOP/s =
  those FLOPs x steps per second; its fraction of the device's peak (`benchmarks.peaks`, or
  `peak_tflops`).
- peak memory: CUDA `max_memory_allocated` over the window; on the CPU this process's max RSS
  (loader workers are processes of their own and not in it).
- profile (optional): the top operators by self time over a few more steps (torch.profiler).
- CUDA graphs (`cuda_graphs`, `atss train --cuda-graphs`): how many timed steps were replays, and
  the captures (count, seconds) the warm-up made; the FLOPs are counted on an eager step (a
  replay dispatches no operator for FlopCounterMode to see).

The learning rate is the recipe's after its warm-up (`warmup_iters` 0): its value does not
change the step's cost, and a CUDA graph belongs to one lr (training/graphs.py).

Beside `atss bench model --mode train`: that one times the model's forward, loss, backward and
SGD on one fixed batch already on the device, so it is the ceiling this loop can reach; the
difference between the two is what the loader, the host-to-device copy and the loop's host work
(reading losses back, the learning-rate update) cost.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

# Steps run after the timed window, each for one purpose.
SYNC_STEPS = 3
FLOP_STEPS = 1
PROFILE_STEPS = 3


class _TimedBatches:
    """The loader's batches across epochs, with the time spent blocked in `next()` added up."""

    def __init__(self, run):
        self.run, self.epoch, self.waited = run, 0, 0.0
        self._it = self._start(0)

    def _start(self, epoch: int):
        self.run.sampler.load_state_dict({"epoch": epoch, "step": 0})
        return iter(self.run.loader)

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = self._start(self.epoch)
            batch = next(self._it)
        self.waited += time.perf_counter() - t0
        return batch

    def close(self) -> None:
        self._it = None


def _one_step(run, pos, batches, stop):
    """One training iteration exactly as `atss train` takes it; returns (next position, images,
    the iteration's result). The only call into `training.step`: adapt here if it changes."""
    from atss_cli.training.run import Position
    from atss_cli.training.step import train_iteration

    if pos.step >= run.plan.steps_per_epoch:
        pos = Position(epoch=pos.epoch + 1, step=0, iteration=pos.iteration)
    result = train_iteration(run, pos, batches, stop)
    return (Position(epoch=pos.epoch, step=pos.step + result.micro_steps, iteration=pos.iteration + 1),
            result.images, result)


def _read(run, result):
    """A queued iteration's losses on the host (float64 [3]), read as `atss train` reads them:
    once the next iteration is queued (training.step.read_iteration waits for that iteration's
    all_reduce only). None for a step that returned no result."""
    from atss_cli.training.step import read_iteration

    return None if result is None else read_iteration(result, run.latest).losses


def _config(*, data: dict, device: str, batch: int, amp: str, channels_last: bool, workers: int | None,
            scale: tuple[int, int], model: dict, work: Path, seed: int, cuda_graphs: bool = False):
    from atss_cli.config import TrainConfig, validate

    cfg = TrainConfig(**data, device=device, batch_per_gpu=batch, accumulate=1, amp=amp,
                      channels_last=channels_last, scale=tuple(scale), work_dir=str(work), seed=seed,
                      eval_interval=0, save_every_iters=0, from_scratch=True, warmup_iters=0,
                      cuda_graphs=cuda_graphs, **model)
    if workers is not None:
        cfg = cfg.replace(workers=workers)
    validate(cfg)
    return cfg


def model_fields(depth: int, preset: str | None) -> dict:
    """The TrainConfig model fields of `--depth` or `--preset` (the recipe's frozen stem and
    BatchNorm for a depth alone, as `atss train` has them)."""
    from atss_cli.errors import AtssError, param
    from atss_cli.model import PRESETS

    if preset is None:
        return {"depth": depth}
    if preset not in PRESETS:
        raise AtssError(f"{param('preset')} {preset!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


def _stats(times: list[float]) -> dict:
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    return {"median": med, "q1": q[0], "q3": q[2], "iqr_pct": 100 * (q[2] - q[0]) / med if med > 0 else 0.0,
            "min": min(times), "max": max(times), "mean": statistics.fmean(times)}


def _where(w: warnings.WarningMessage) -> str:
    path = w.filename
    return f"{os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{w.lineno}"


def _count_syncs(run, pos, batches, stop, steps: int):
    """(position, syncs per step, [(python line, count)]) over `steps` steps in sync debug mode
    "warn"; the mode is off again before the caller synchronises."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            previous = None
            for _ in range(steps):
                pos, _, result = _one_step(run, pos, batches, stop)
                _read(run, previous)  # one iteration late, as the training loop reads
                previous = result
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites = Counter(_where(w) for w in caught if "synchroniz" in str(w.message))
    return pos, sum(sites.values()) / steps, sites.most_common(10)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _count_flops(run, pos, batches, stop):
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    graphs, run.graphs = run.graphs, None   # an eager step: a replay dispatches no operator to count
    try:
        with counter:
            pos, images, _ = _one_step(run, pos, batches, stop)
    finally:
        run.graphs = graphs
    return pos, counter.get_total_flops(), images


def _profile(run, pos, batches, stop, steps: int, sync, top: int = 15):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if run.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            pos, _, _ = _one_step(run, pos, batches, stop)
        sync()
    events = prof.key_averages()
    on_gpu = run.device.type == "cuda"

    def device_us(e):
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0

    key = device_us if on_gpu else (lambda e: e.self_cpu_time_total)
    rows = []
    for e in sorted(events, key=key, reverse=True)[:top]:
        rows.append({"name": e.key, "calls_per_step": e.count / steps,
                     "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                     "self_device_ms_per_step": device_us(e) / 1e3 / steps if on_gpu else None})
    return pos, rows


def _data_source(*, coco, train_ann, train_images, images_dir, image_size, quality, count: int, seed: int):
    """(TrainConfig data fields, what the report says about the data)."""
    from atss_cli.benchmarks.images import coco_size_images, default_folder

    if coco:
        return {"coco": str(coco)}, {"source": "coco", "root": str(coco)}
    if train_ann:
        return ({"train_ann": str(train_ann), "train_images": str(train_images or "")},
                {"source": "train_ann", "ann": str(train_ann)})
    folder = Path(images_dir) if images_dir else default_folder(image_size, quality)
    made = coco_size_images(folder, count, size=image_size, quality=quality, seed=seed)
    return ({"train_ann": made["ann"], "train_images": made["images"]},
            {"source": "generated", **made})


def bench_train(*, device: str = "cpu", batch: int = 2, amp: str = "none", channels_last: bool = False,
                steps: int = 20, warmup: int = 3, depth: int = 50, preset: str | None = None,
                workers: int | None = None, scale: tuple[int, int] = (1333, 800),
                image_size: tuple[int, int] = (640, 480), quality: int = 90, images_dir=None,
                coco=None, train_ann=None, train_images=None, peak_tflops: float | None = None,
                profile: bool = False, count_syncs: bool = True, threads: int | None = None, seed: int = 0,
                cuda_graphs: bool = False, progress=None) -> dict:
    """Time `steps` training iterations after `warmup` untimed ones; returns the report (a dict,
    the fields the module docstring lists)."""
    from atss_cli.errors import AtssError, param

    if steps < 1 or warmup < 0 or batch < 1:
        raise AtssError(f"{param('steps')} and {param('batch')} must be >= 1 and {param('warmup')} >= 0, "
                        f"got {steps}, {batch}, {warmup}")
    if train_ann and not train_images:
        raise AtssError(f"{param('train_ann')} needs {param('train_images')} DIR")
    if train_images and not train_ann:
        raise AtssError(f"{param('train_images')} needs {param('train_ann')} FILE")
    if coco and train_ann:
        raise AtssError(f"give {param('coco')} or {param('train_ann')}, not both")
    if peak_tflops is not None and not peak_tflops > 0:
        raise AtssError(f"{param('peak_tflops')} must be positive, got {peak_tflops}")
    import resource

    import torch

    from atss_cli.benchmarks.model import environment
    from atss_cli.benchmarks.peaks import peak_tflops as table_peak
    from atss_cli.device import resolve_device
    from atss_cli.distributed.group import DistInfo
    from atss_cli.training.preemption import StopRequest
    from atss_cli.training.setup import prepare_run
    from atss_cli.training.train import SilentReporter

    dev = resolve_device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    extra = (SYNC_STEPS if count_syncs and dev.type == "cuda" else 0) + FLOP_STEPS + (PROFILE_STEPS if profile else 0)
    say = progress or (lambda message: None)
    data, data_report = _data_source(coco=coco, train_ann=train_ann, train_images=train_images,
                                     images_dir=images_dir, image_size=image_size, quality=quality,
                                     count=batch * (warmup + steps + extra), seed=seed)
    work = Path(tempfile.mkdtemp(prefix="atss-bench-train-"))
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    try:
        cfg = _config(data=data, device=device, batch=batch, amp=amp, channels_last=channels_last, workers=workers,
                      scale=scale, model=model_fields(depth, preset), work=work, seed=seed, cuda_graphs=cuda_graphs)
        say("building the run (model, loader)")
        run = prepare_run(cfg, SilentReporter(), DistInfo(), resume=False)
        run.model.train()
        stop = StopRequest()
        batches = _TimedBatches(run)
        from atss_cli.training.run import Position

        pos = Position()
        say(f"{warmup} warm-up steps")
        previous = None
        for _ in range(warmup):
            pos, _, result = _one_step(run, pos, batches, stop)
            _read(run, previous)
            previous = result
        _read(run, previous)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        say(f"{steps} timed steps")
        waited0, images, marks, losses, replayed = batches.waited, 0, [], [], 0
        t_start = time.perf_counter()
        previous = None
        for _ in range(steps):
            marks.append(time.perf_counter())
            pos, n, result = _one_step(run, pos, batches, stop)
            images += n
            replayed += result.graphed
            if previous is not None:
                # As `atss train` reads: iteration i once i + 1 is queued (an event wait, no sync).
                losses.append(_read(run, previous))
            previous = result
        losses.append(_read(run, previous))
        sync()
        t_end = time.perf_counter()
        marks.append(t_end)
        window = t_end - t_start
        waited = batches.waited - waited0
        peak_mem = (torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda"
                    else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
        step_times = [b - a for a, b in zip(marks, marks[1:])]
        graph_report = (None if run.graphs is None else
                        {**run.graphs.summary(), "timed_steps_replayed": replayed, "timed_steps": steps})

        # The figures above are measured; what follows only adds diagnostics. A device call has
        # one try, so a diagnostic that fails (a profiler without CUPTI, say) is reported in the
        # report's `diagnostic_errors` instead of losing the measurement.
        errors: dict[str, str] = {}
        syncs, sync_sites, sync_note = None, [], "n/a (CPU)"
        if dev.type == "cuda" and count_syncs:
            say(f"{SYNC_STEPS} steps in sync debug mode")
            try:
                pos, syncs, sync_sites = _count_syncs(run, pos, batches, stop, SYNC_STEPS)
                sync_note = (f"torch.cuda.set_sync_debug_mode('warn') over {SYNC_STEPS} steps after the window, "
                             "its warnings counted")
            except Exception as exc:  # noqa: BLE001 - a diagnostic, see above
                errors["host_syncs"], sync_note = _first_line(exc), "not counted (failed)"
        elif dev.type == "cuda":
            sync_note = "not counted"
        say("one step under FlopCounterMode")
        flops, flop_images = 0, 0
        try:
            pos, flops, flop_images = _count_flops(run, pos, batches, stop)
            sync()
        except Exception as exc:  # noqa: BLE001
            errors["flops"] = _first_line(exc)
        top_ops = None
        if profile:
            say(f"{PROFILE_STEPS} steps under torch.profiler")
            try:
                pos, top_ops = _profile(run, pos, batches, stop, PROFILE_STEPS, sync)
            except Exception as exc:  # noqa: BLE001
                errors["profile"] = _first_line(exc)
        batches.close()

        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
        tf32 = bool(torch.backends.cudnn.allow_tf32)
        if peak_tflops is not None:
            peak, basis = float(peak_tflops), "--peak-tflops"
        elif name is not None:
            peak, basis = table_peak(name, None if amp == "none" else amp, tf32)
        else:
            peak, basis = None, "n/a (CPU: give --peak-tflops for a fraction)"
        steps_per_s = steps / window if window > 0 else float("inf")
        # FLOPs of one step of the counted batch; scaled to images where batch shapes differ.
        flops_per_image = flops / flop_images if flop_images else 0.0
        achieved = flops_per_image * images / window / 1e12 if window > 0 and flops else None
        read = [torch.as_tensor(v, dtype=torch.float64).cpu() for v in losses if v is not None]
        mean_losses = torch.stack(read).mean(0).tolist() if read else None
        return {
            "environment": environment([str(dev)]),
            "setting": {"device": str(dev), "device_name": name,
                        "processes": 1, "accumulate": 1, "batch": batch, "amp": amp, "channels_last": channels_last,
                        "model": model_fields(depth, preset), "depth": run.model.backbone.depth,
                        "workers": cfg.workers, "scale": list(cfg.scale), "threads": torch.get_num_threads(),
                        "steps": steps, "warmup": warmup, "data": data_report, "cuda_graphs": cuda_graphs,
                        "train_images": len(run.train_set.train_indices()), "tf32": tf32},
            "step_s": _stats(step_times),
            "window_s": window,
            "images": images,
            "images_per_s": images / window if window > 0 else float("inf"),
            "steps_per_s": steps_per_s,
            "loader_wait_s": waited,
            "loader_wait_share": waited / window if window > 0 else 0.0,
            "host_syncs_per_step": syncs,
            "host_sync_note": sync_note,
            "host_sync_sites": [{"where": w, "count": c} for w, c in sync_sites],
            "flops_per_step": flops,
            "flops_per_image": flops_per_image,
            "achieved_tflops": achieved,
            "peak_tflops": peak,
            "peak_basis": basis,
            "peak_fraction": achieved / peak if (achieved is not None and peak) else None,
            "peak_memory_gb": peak_mem,
            "peak_memory_kind": ("torch.cuda.max_memory_allocated over the timed steps" if dev.type == "cuda"
                                 else "max RSS of this process (loader workers not included)"),
            "mean_losses": mean_losses,
            "cuda_graphs": graph_report,
            "profile": top_ops,
            "diagnostic_errors": errors,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
