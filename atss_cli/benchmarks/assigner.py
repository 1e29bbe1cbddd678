"""The assigner benchmark: the kernels against the pure-PyTorch reference, as rows of numbers.

Scenes come from `atss_cli.ops.scenes` (the factory the tests use): batches of 1333 x 800
images with M random GTs each, from a seed. Each case reports the median time and its spread
(interquartile range, min, max), the peak memory allocated during one call (CPU: the
allocations torch's profiler records, outputs included; CUDA: the caching allocator's peak
above what was allocated before), and the speed-up over the reference on the same device.
The reference is skipped where one call would exceed a time or memory budget, and the row
says so. Nothing here prints: `atss bench assigner` renders the rows.

On CUDA the wall-clock times (synchronised around each call) are latencies, launch and
Python overhead included. Two GPU times are added: CUDA events around `gpu_calls` calls
issued back to back behind a sleep kernel (so the GPU never waits for the CPU to enqueue),
and the replay of a CUDA graph that captured `gpu_calls` calls (validate=False), per call.
The scene is a grid, so the extension gets `ops.GridGeometry` (its one-pass path) unless
told otherwise; `geometry="both"` times it with and without.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from atss_cli import ops
from atss_cli import environment as machine
from atss_cli.ops import scenes

DEFAULT_BATCHES = (2, 16)
DEFAULT_NUM_GTS = (8, 100, 1000, 3000)
QUICK_BATCHES = (2,)
QUICK_NUM_GTS = (8, 100)
IMAGE_HW = (800, 1333)
REFERENCE_BYTES_PER_PAIR = 40  # the reference's peak per anchor x GT of one image (measured ~37)
GEOMETRY_MODES = ("auto", "on", "off", "both")


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
    geometry: bool = False  # the call passed ops.GridGeometry
    # CUDA only: GPU microseconds per call (median and quartiles over samples of gpu_calls calls)
    event_us: float | None = None
    event_q1_us: float | None = None
    event_q3_us: float | None = None
    graph_us: float | None = None
    graph_q1_us: float | None = None
    graph_q3_us: float | None = None
    host_us: float | None = None  # CPU time to enqueue one call (Python, checks, dispatch)
    speedup_gpu: float | None = None  # reference event_us / this event_us


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
    geometry: str = "auto"  # auto/on: the extension gets GridGeometry; off: never; both: a row each
    gpu_calls: int = 50  # calls per CUDA-event sample and per captured graph
    gpu_samples: int = 15  # CUDA-event samples and graph replays per case
    cuda_graph: bool = True


def kernels_take_geometry() -> bool:
    """Whether the compiled op schema has the geometry arguments (else geometry is checked,
    then dropped before the kernels: an extension built before deliverable 4)."""
    if not ops.extension.available():
        return False
    return len(torch.ops.atss.atss_assign.default._schema.arguments) > 6


def environment(settings: Settings) -> dict:
    """The facts a reader needs to compare numbers: versions, devices, threads, load."""
    cuda = torch.cuda.is_available()
    known = machine.versions()
    env = {
        "torch": known["torch"],
        "torch_cuda": known["cuda"],
        "python": known["python"],
        "cpu": machine.cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": machine.load_average(2),
        "gpu": machine.device_name("cuda:0") if cuda else None,
        "extension": ops.extension.describe(),
        "extension_build": ops.extension.build_info(),
        "geometry_in_kernels": kernels_take_geometry(),
        "seed": settings.seed,
        "validate": settings.validate,
        "image_hw": list(IMAGE_HW),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_sms"] = props.multi_processor_count
        env["gpu_memory_gb"] = round(props.total_memory / 1e9, 1)
    return env


def grid_geometry(scene: scenes.Scene, device=None):
    """`ops.GridGeometry` of a scene from `scenes.make_scene` (grid anchors, rectangle valid
    flags), or (None, reason) where there is none: no GridGeometry in this build, or a scene
    whose flags are not the rectangles (holes). Checked on the CPU, once."""
    cls = getattr(ops, "GridGeometry", None)
    if cls is None:
        return None, "ops.GridGeometry not available"
    hw = (math.ceil(max(h for h, _ in scene.image_sizes) / 32) * 32,
          math.ceil(max(w for _, w in scene.image_sizes) / 32) * 32)
    shapes = tuple(tuple(s) for s in scenes.featmap_sizes(hw))
    if [h * w for h, w in shapes] != list(scene.level_sizes):
        return None, "the scene's level sizes are not its padded grid"
    extent = torch.tensor([[math.ceil(h / 32) * 32, math.ceil(w / 32) * 32] for h, w in scene.image_sizes],
                          dtype=torch.int64).reshape(-1, 2)
    geo = cls(level_shapes=shapes, strides=tuple(scenes.STRIDES[:len(shapes)]), extent=extent)
    try:
        from atss_cli.ops.geometry import check_geometry

        check_geometry(geo, scene.anchors.cpu(), scene.valid.cpu(), list(scene.level_sizes), True)
    except ImportError as exc:
        return None, f"atss_cli.ops.geometry: {exc}"
    except ValueError as exc:
        return None, f"not a grid scene: {exc}"
    if device is not None:
        geo = cls(level_shapes=shapes, strides=geo.strides, extent=extent.to(device))
    return geo, ""


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


def quartiles(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """(median, q1, q3); the quartiles need 4 values (None otherwise)."""
    vals = sorted(values)
    med = statistics.median(vals)
    if len(vals) < 4:
        return med, None, None
    q = statistics.quantiles(vals, n=4)
    return med, q[0], q[2]


# A sleep kernel ahead of the timed calls keeps the GPU busy while the CPU enqueues them, so
# the events measure GPU time, not the CPU's enqueue rate. Cycles per second: above any clock.
_SLEEP_CYCLES_PER_S = 3.0e9


def cuda_event_times_us(fn: Callable[[], object], device: torch.device, calls: int,
                        samples: int, prefill: bool = True) -> tuple[list[float], float]:
    """GPU microseconds per call, one value per sample of `calls` back-to-back calls timed by
    CUDA events, and the CPU microseconds to enqueue one call (median)."""
    stream = torch.cuda.current_stream(device)
    sleep = getattr(torch.cuda, "_sleep", None) if prefill else None
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize(device)
    per_call, hosts = [], [host]
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if sleep is not None:
            sleep(int(min(2.0 * host * calls + 1e-3, 0.5) * _SLEEP_CYCLES_PER_S))
        start.record(stream)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        hosts.append((time.perf_counter() - t0) / calls)
        end.record(stream)
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / calls)
    return per_call, statistics.median(hosts) * 1e6


def cuda_graph_times_us(fn: Callable[[], object], device: torch.device, calls: int,
                        samples: int) -> tuple[list[float], object]:
    """Captures `calls` calls of fn in one CUDA graph and times `samples` replays with CUDA
    events: GPU microseconds per call, and the last call's output from the graph (to compare
    with an eager call). Raises whatever the capture raises (a host sync in fn, say)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    out = None
    with torch.cuda.graph(graph):
        for _ in range(calls):
            out = fn()
    graph.replay()
    torch.cuda.synchronize(device)
    stream = torch.cuda.current_stream(device)
    per_call = []
    for _ in range(samples):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        graph.replay()
        end.record(stream)
        end.synchronize()
        per_call.append(start.elapsed_time(end) * 1e3 / calls)
    out = tuple(t.clone() for t in out)
    del graph
    return per_call, out


def available_devices(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """The requested devices that can run, and a note for each that cannot."""
    run, notes = [], []
    for d in requested:
        if d == "cuda" and not torch.cuda.is_available():
            notes.append("cuda: no CUDA device, skipped")
        else:
            run.append(d)
    return run, notes


def _variants(settings: Settings, backends: Sequence[str], geo) -> list[tuple[str, bool]]:
    """(backend, with geometry) pairs to time for one case."""
    out = []
    for backend in backends:
        if backend != "extension" or settings.geometry == "off" or geo is None:
            out.append((backend, False))
        elif settings.geometry == "both":
            out += [(backend, True), (backend, False)]
        else:
            out.append((backend, True))
    return out


def _add_note(row: Row, note: str) -> None:
    row.note = (row.note + "; " if row.note else "") + note


def run(settings: Settings, progress: Callable[[str], None] | None = None,
        checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Runs every case; returns {"environment": {...}, "rows": [Row as dict, ...], "notes": [...]}.

    `checkpoint`, when given, receives the result so far after every case (to write it out,
    so that a run cut short still leaves its finished cases)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if settings.geometry not in GEOMETRY_MODES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRY_MODES)}, got {settings.geometry!r}")
    devices, notes = available_devices(settings.devices)
    backends = list(settings.backends)
    if "extension" in backends and not ops.extension.available():
        notes.append(f"extension: {ops.extension.reason()}")
    if settings.geometry != "off" and "extension" in backends and ops.extension.available() \
            and not kernels_take_geometry():
        notes.append("geometry: this build's kernels do not take it (checked, then dropped before the kernels)")
    rows: list[Row] = []
    env = environment(settings)

    def result() -> dict:
        return {"environment": env, "settings": _settings_dict(settings), "notes": notes,
                "rows": [asdict(r) for r in rows]}

    geo_notes: set[str] = set()
    for dev_name in devices:
        device = torch.device(dev_name)
        if dev_name == "cuda" and "extension" in backends and not ops.extension.has_cuda():
            notes.append("extension on cuda: built without CUDA kernels, skipped")
        for batch in settings.batches:
            ref_time: dict[int, float] = {}  # num_gt -> reference seconds per call (for estimates)
            for num_gt in settings.num_gts:
                cpu_scene = scenes.bench_scene(batch, num_gt, seed=settings.seed, hw=IMAGE_HW)
                geo, why = (None, "off") if settings.geometry == "off" else grid_geometry(cpu_scene, device)
                if geo is None and settings.geometry != "off" and why not in geo_notes:
                    geo_notes.add(why)
                    notes.append(f"geometry: {why}; the extension runs without it")
                scene = cpu_scene.to(device)
                args = scene.args()
                case_rows: dict[tuple[str, bool], Row] = {}
                outputs: dict[tuple[str, bool], tuple] = {}
                for backend, with_geo in _variants(settings, backends, geo):
                    row = Row(dev_name, backend, batch, num_gt, scene.anchors.shape[0], geometry=with_geo)
                    case_rows[(backend, with_geo)] = row
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
                        progress(f"{dev_name} {backend}{' +geometry' if with_geo else ''} batch={batch} M={num_gt}")
                    kwargs = {"geometry": geo} if with_geo else {}

                    def call(backend=backend, kwargs=kwargs, validate=settings.validate):
                        return ops.atss_assign(*args, validate=validate, backend=backend, **kwargs)

                    _time_case(row, call, device, settings, backend, ref_time)
                    outputs[(backend, with_geo)] = call()
                    row.positives = int((outputs[(backend, with_geo)][0] >= 0).sum())
                    if device.type == "cuda":
                        _time_gpu(row, call, device, settings, backend, kwargs, args, outputs[(backend, with_geo)])
                _compare_case(case_rows, outputs)
                if checkpoint is not None:
                    checkpoint(result())
    return result()


def _time_case(row: Row, call, device, settings: Settings, backend: str, ref_time: dict) -> None:
    """Wall-clock median and spread of `call` (synchronised around each call on CUDA)."""
    # First call: warm-up and memory peak (the profiler slows it; it is not timed).
    start = time.perf_counter()
    peak = _cuda_peak_bytes(call, device) if device.type == "cuda" else _cpu_peak_bytes(call)
    row.peak_mb = peak / 2**20
    if time.perf_counter() - start < settings.case_seconds / 10:
        for _ in range(settings.warmup - 1):
            call()
    first = _time_once(call, device)
    if backend == "reference":
        ref_time[row.num_gt] = first
    repeats = settings.repeats
    if first * repeats > settings.case_seconds:
        repeats = max(3 if first < settings.case_seconds / 3 else 1,
                      int(settings.case_seconds / max(first, 1e-9)))
        _add_note(row, f"{repeats} run{'s' if repeats > 1 else ''} (time budget)")
    times = [first] + [_time_once(call, device) for _ in range(repeats - 1)]
    times_ms = sorted(t * 1e3 for t in times)
    row.runs = len(times_ms)
    row.median_ms, row.q1_ms, row.q3_ms = quartiles(times_ms)
    row.min_ms, row.max_ms = times_ms[0], times_ms[-1]


def _time_gpu(row: Row, call, device, settings: Settings, backend: str, kwargs: dict, args: tuple,
              eager: tuple) -> None:
    """CUDA events over back-to-back calls, and a captured graph's replay (extension only:
    the reference synchronises inside, which a capture forbids)."""
    per_call = (row.median_ms or 0) / 1e3
    budget = settings.case_seconds / 4
    calls = max(1, min(settings.gpu_calls, int(budget / max(per_call * settings.gpu_samples, 1e-9))))
    samples = settings.gpu_samples if per_call * calls * settings.gpu_samples < budget else 3
    # Only a call free of host syncs can run ahead of the GPU: the others get no sleep kernel.
    prefill = backend == "extension" and not settings.validate
    times, host = cuda_event_times_us(call, device, calls, samples, prefill=prefill)
    row.event_us, row.event_q1_us, row.event_q3_us = quartiles(times)
    row.host_us = host
    if backend != "extension" or not settings.cuda_graph:
        return

    def capturable(kwargs=kwargs):
        return ops.atss_assign(*args, validate=False, backend="extension", **kwargs)

    try:
        times, out = cuda_graph_times_us(capturable, device, settings.gpu_calls, settings.gpu_samples)
    except Exception as exc:  # noqa: BLE001 - a failed capture is a finding, not a crash
        _add_note(row, f"graph capture failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        torch.cuda.synchronize(device)
        return
    row.graph_us, row.graph_q1_us, row.graph_q3_us = quartiles(times)
    if not all(torch.equal(a, b) for a, b in zip(out, eager)):
        _add_note(row, "graph replay differs from the eager call!")


def _compare_case(case_rows: dict, outputs: dict) -> None:
    """Speed-ups over the reference, and a loud note where results disagree: the extension
    with geometry against the extension without it, and each extension row against the
    reference (all bit for bit, as the tests require)."""
    ref = case_rows.get(("reference", False))
    for row in case_rows.values():
        if ref is not None and ref.median_ms and row.median_ms:
            row.speedup = ref.median_ms / row.median_ms
        if ref is not None and ref.peak_mb and row.peak_mb:
            row.memory_ratio = ref.peak_mb / row.peak_mb
        if ref is not None and ref.event_us and row.event_us:
            row.speedup_gpu = ref.event_us / row.event_us

    def same(a: tuple, b: tuple) -> bool:
        return torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])

    plain, geo, ref_out = (outputs.get(("extension", False)), outputs.get(("extension", True)),
                           outputs.get(("reference", False)))
    if plain is not None and geo is not None and not same(plain, geo):
        _add_note(case_rows[("extension", True)], "result differs from the extension without geometry!")
    for key, out in ((("extension", False), plain), (("extension", True), geo)):
        if out is not None and ref_out is not None and not same(out, ref_out):
            _add_note(case_rows[key], "result differs from the reference!")


def _settings_dict(settings: Settings) -> dict:
    d = asdict(settings)
    for k in ("batches", "num_gts", "devices", "backends"):
        d[k] = list(d[k])
    return d


def _has_gpu_times(result: dict) -> bool:
    return any(r.get("event_us") is not None for r in result["rows"])


def markdown_table(result: dict) -> str:
    """The rows as a short markdown table (bench/*.md)."""
    env = result["environment"]
    gpu = _has_gpu_times(result)
    head = (f"`atss bench assigner` on {env['gpu'] or env['cpu']} ({env['cpu_count']} CPUs, "
            f"{env['torch_threads']} torch threads, load average {env['load_average']}), torch {env['torch']}, "
            f"CUDA {env['torch_cuda']}, validate={env['validate']}, seed {env['seed']}, "
            f"images {env['image_hw'][1]}x{env['image_hw'][0]}, {env['date_utc']}.")
    cols = "| device | backend | batch | M | median ms | IQR ms | min-max ms | peak MB | speed-up | memory ratio |"
    align = "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if gpu:
        head += (" GPU us: per call, CUDA events over back-to-back calls (median, IQR) and a captured "
                 "graph's replay (validate=False); GPU speed-up: reference events / these events.")
        cols += " GPU us (events) | GPU us (graph) | GPU speed-up | CPU us to enqueue |"
        align += " ---: | ---: | ---: | ---: |"
    lines = [head, "", cols + " note |", align + " --- |"]
    for r in result["rows"]:
        backend = r["backend"] + (" +geometry" if r.get("geometry") else "")
        line = (f"| {r['device']} | {backend} | {r['batch']} | {r['num_gt']} | {_f(r['median_ms'])} | "
                f"{_range(r['q1_ms'], r['q3_ms'])} | {_range(r['min_ms'], r['max_ms'])} | {_f(r['peak_mb'])} | "
                f"{_x(r['speedup'], r['backend'])} | {_x(r['memory_ratio'], r['backend'])} |")
        if gpu:
            line += (f" {_spread(r.get('event_us'), r.get('event_q1_us'), r.get('event_q3_us'))} | "
                     f"{_spread(r.get('graph_us'), r.get('graph_q1_us'), r.get('graph_q3_us'))} | "
                     f"{_x(r.get('speedup_gpu'), r['backend'])} | {_f(r.get('host_us'))} |")
        lines.append(line + f" {r['note']} |")
    for n in result["notes"]:
        lines.append(f"\n{n}")
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _range(a, b) -> str:
    return "-" if a is None or b is None else f"{_f(a)}-{_f(b)}"


def _spread(med, a, b) -> str:
    if med is None:
        return "-"
    return _f(med) + ("" if a is None or b is None else f" ({_range(a, b)})")


def _x(v, backend) -> str:
    if backend == "reference" or v is None:
        return "-"
    return f"{v:.0f}x" if v >= 10 else f"{v:.1f}x"
