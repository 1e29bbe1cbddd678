"""The assigner benchmark: the kernels against the pure-PyTorch reference, as rows of numbers.

Scenes come from `atss_cli.ops.scenes` (the factory the tests use): batches of 1333 x 800
images with M random GTs each, from a seed. Each case reports the median time and its spread
(interquartile range, min, max), the peak memory allocated during one call (CPU: the
allocations torch's profiler records, outputs included; CUDA: the caching allocator's peak
above what was allocated before), and the speed-up over the reference on the same device.
The reference is skipped where one call would exceed a time or memory budget, and the row
says so. Nothing here prints: `atss bench assigner` renders the rows.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import contextlib
import sys

import torch

from atss_cli import ops
from atss_cli.benchmarks import cpu_name
from atss_cli.ops import scenes

DEFAULT_BATCHES = (2, 16)
DEFAULT_NUM_GTS = (8, 100, 1000, 3000)
QUICK_BATCHES = (2,)
QUICK_NUM_GTS = (8, 100)
IMAGE_HW = (800, 1333)
REFERENCE_BYTES_PER_PAIR = 40  # the reference's peak per anchor x GT of one image (measured ~37)


@dataclass
class Row:
    device: str
    backend: str
    batch: int
    num_gt: int
    anchors: int
    runs: int = 0
    median_ms: float | None = None
    q1_ms: float | None = None
    q3_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    peak_mb: float | None = None
    speedup: float | None = None
    memory_ratio: float | None = None  # reference peak / this peak
    positives: int | None = None
    note: str = ""


@dataclass
class Settings:
    batches: Sequence[int] = DEFAULT_BATCHES
    num_gts: Sequence[int] = DEFAULT_NUM_GTS
    devices: Sequence[str] = ("cpu", "cuda")
    backends: Sequence[str] = ("reference", "extension")
    repeats: int = 20
    warmup: int = 2
    seed: int = 0
    validate: bool = True
    threads: int | None = None
    reference_seconds: float = 30.0  # skip a reference case whose single call would take longer
    reference_memory_gb: float = 4.0  # ... or need more memory than this
    case_seconds: float = 20.0  # fewer repeats (at least 3) where a case would take longer


def environment(settings: Settings) -> dict:
    """The facts a reader needs to compare numbers: versions, devices, threads, load."""
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "extension": ops.extension.describe(),
        "extension_build": ops.extension.build_info(),
        "seed": settings.seed,
        "validate": settings.validate,
        "image_hw": list(IMAGE_HW),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes allocated by torch's CPU allocator during fn(), from the profiler's
    memory events (allocations positive, frees negative, in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silences what the profiler's native code writes to fd 2 (start/stop lines)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def available_devices(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """The requested devices that can run, and a note for each that cannot."""
    run, notes = [], []
    for d in requested:
        if d == "cuda" and not torch.cuda.is_available():
            notes.append("cuda: no CUDA device, skipped")
        else:
            run.append(d)
    return run, notes


def run(settings: Settings, progress: Callable[[str], None] | None = None) -> dict:
    """Runs every case; returns {"environment": {...}, "rows": [Row as dict, ...], "notes": [...]}."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    devices, notes = available_devices(settings.devices)
    backends = list(settings.backends)
    if "extension" in backends and not ops.extension.available():
        notes.append(f"extension: {ops.extension.reason()}")
    rows: list[Row] = []
    for dev_name in devices:
        device = torch.device(dev_name)
        if dev_name == "cuda" and "extension" in backends and not ops.extension.has_cuda():
            notes.append("extension on cuda: built without CUDA kernels, skipped")
        for batch in settings.batches:
            ref_time: dict[int, float] = {}  # num_gt -> reference seconds per call (for estimates)
            for num_gt in settings.num_gts:
                scene = scenes.bench_scene(batch, num_gt, seed=settings.seed, hw=IMAGE_HW).to(device)
                args = scene.args()
                case_rows = {}
                for backend in backends:
                    row = Row(dev_name, backend, batch, num_gt, scene.anchors.shape[0])
                    case_rows[backend] = row
                    rows.append(row)
                    if backend == "extension" and not ops.extension.supports(device):
                        row.note = "extension not available on " + dev_name
                        continue
                    if backend == "reference":
                        need_gb = REFERENCE_BYTES_PER_PAIR * scene.anchors.shape[0] * num_gt / 1e9
                        if need_gb > settings.reference_memory_gb:
                            row.note = (f"skipped: needs ~{need_gb:.1f} GB > budget "
                                        f"{settings.reference_memory_gb:g} GB")
                            continue
                        if ref_time:
                            known = max(ref_time)
                            est = ref_time[known] * num_gt / max(known, 1)
                            if est > settings.reference_seconds:
                                row.note = (f"skipped: ~{est:.0f} s per call > budget "
                                            f"{settings.reference_seconds:g} s")
                                continue
                    if progress:
                        progress(f"{dev_name} {backend} batch={batch} M={num_gt}")

                    def call(backend=backend):
                        return ops.atss_assign(*args, validate=settings.validate, backend=backend)

                    # First call: warm-up and memory peak (the profiler slows it; it is not timed).
                    start = time.perf_counter()
                    if device.type == "cuda":
                        peak = _cuda_peak_bytes(call, device)
                    else:
                        peak = _cpu_peak_bytes(call)
                    row.peak_mb = peak / 2**20
                    if time.perf_counter() - start < settings.case_seconds / 10:
                        for _ in range(settings.warmup - 1):
                            call()
                    first = _time_once(call, device)
                    if backend == "reference":
                        ref_time[num_gt] = first
                    repeats = settings.repeats
                    if first * repeats > settings.case_seconds:
                        repeats = max(3 if first < settings.case_seconds / 3 else 1,
                                      int(settings.case_seconds / max(first, 1e-9)))
                        row.note = f"{repeats} run{'s' if repeats > 1 else ''} (time budget)"
                    times = [first] + [_time_once(call, device) for _ in range(repeats - 1)]
                    times_ms = sorted(t * 1e3 for t in times)
                    row.runs = len(times_ms)
                    row.median_ms = statistics.median(times_ms)
                    if len(times_ms) >= 4:
                        q = statistics.quantiles(times_ms, n=4)
                        row.q1_ms, row.q3_ms = q[0], q[2]
                    row.min_ms, row.max_ms = times_ms[0], times_ms[-1]
                    assigned, _ = call()
                    row.positives = int((assigned >= 0).sum())
                ref = case_rows.get("reference")
                for backend, row in case_rows.items():
                    if ref is not None and ref.median_ms and row.median_ms:
                        row.speedup = ref.median_ms / row.median_ms
                    if ref is not None and ref.peak_mb and row.peak_mb:
                        row.memory_ratio = ref.peak_mb / row.peak_mb
                if ref is not None and ref.positives is not None:
                    ext = case_rows.get("extension")
                    if ext is not None and ext.positives is not None and ext.positives != ref.positives:
                        ext.note = (ext.note + "; " if ext.note else "") + "positives differ from the reference!"
    return {"environment": environment(settings), "settings": _settings_dict(settings), "notes": notes,
            "rows": [asdict(r) for r in rows]}


def _settings_dict(settings: Settings) -> dict:
    d = asdict(settings)
    for k in ("batches", "num_gts", "devices", "backends"):
        d[k] = list(d[k])
    return d


def markdown_table(result: dict) -> str:
    """The rows as a short markdown table (bench/*.md)."""
    env = result["environment"]
    lines = [
        f"`atss bench assigner` on {env['gpu'] or env['cpu']} ({env['cpu_count']} CPUs, "
        f"{env['torch_threads']} torch threads, load average {env['load_average']}), torch {env['torch']}, "
        f"CUDA {env['torch_cuda']}, validate={env['validate']}, seed {env['seed']}, "
        f"images {env['image_hw'][1]}x{env['image_hw'][0]}, {env['date_utc']}.",
        "",
        "| device | backend | batch | M | median ms | IQR ms | min-max ms | peak MB | speed-up | memory ratio | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['device']} | {r['backend']} | {r['batch']} | {r['num_gt']} | {_f(r['median_ms'])} | "
            f"{_range(r['q1_ms'], r['q3_ms'])} | {_range(r['min_ms'], r['max_ms'])} | {_f(r['peak_mb'])} | "
            f"{_x(r['speedup'], r['backend'])} | {_x(r['memory_ratio'], r['backend'])} | {r['note']} |")
    for n in result["notes"]:
        lines.append(f"\n{n}")
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _range(a, b) -> str:
    return "-" if a is None or b is None else f"{_f(a)}-{_f(b)}"


def _x(v, backend) -> str:
    if backend == "reference" or v is None:
        return "-"
    return f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"
