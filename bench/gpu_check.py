"""The bookkeeping of bench/gpu-check.sh: machine facts, step records, and the two summaries.

    python3 bench/gpu_check.py env    --work DIR              # facts -> DIR/env.json (torch probed, optional)
    python3 bench/gpu_check.py record --work DIR --out OUT --step NAME --status ok|failed|timeout|skipped
                                      [--seconds S] [--rc N] [--detail TEXT] [--log FILE] [--summary-dir D]
    python3 bench/gpu_check.py write  --work DIR --out OUT [--summary-dir D]

`record` appends one step to DIR/steps.jsonl, reads what the step's log says (pytest's counts,
compute-sanitizer's error summary or refusal) and rewrites OUT/gpu-check.json and
OUT/gpu-check.md, so that a check cut short still leaves a summary of what finished. Only the
standard library here (no torch import: `record` runs after every step), except `env`, which
asks torch for its versions in a child process that may fail.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TARGET_US = 50.0
TARGET_SPEEDUP = 100.0
TARGET_CASE = {"batch": 16, "num_gt": 100}
STEP_ORDER = ("env", "wheels", "build", "extension", "sanitize-cpu", "tests-train-cuda", "tests-cuda", "tests-harness", "memcheck",
              "racecheck", "synccheck", "initcheck", "train-bf16-b2-graphs", "train-bf16-b8-graphs", "train-bf16-b2",
              "train-bf16-b8", "data", "model-bf16-b2", "model-bf16-b8", "train-fp32-b2-graphs", "train-fp32-b2",
              "model-fp32-b2", "assigner")
# Issue 18's targets for `atss bench train` (R50-FPN, bf16 + channels_last, one process, H200):
# images/s at a batch, and the loader's wait as a share of the step.
TRAIN_TARGETS_IPS = {2: 80.0, 8: 200.0}
TRAIN_TARGET_LOADER_SHARE = 0.05


def _run(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout + out.stderr).strip() or None


_TORCH_PROBE = r"""
import json, torch
d = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
     "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    d.update(gpu=p.name, gpu_capability=f"{p.major}.{p.minor}", gpu_sms=p.multi_processor_count,
             gpu_memory_gb=round(p.total_memory / 1e9, 1), gpu_count=torch.cuda.device_count())
print(json.dumps(d))
"""


def collect_env() -> dict:
    """Machine facts; every probe may fail (missing tool, no GPU) and then reads None."""
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    env: dict = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "python": platform.python_version(), "python_executable": sys.executable,
                 "kernel": platform.release(), "cpu_count": os.cpu_count()}
    # Firecracker kernels here are named like 6.18.44-fc-...; gVisor reports 4.4.0.
    rel = platform.release()
    env["runtime"] = "firecracker" if "-fc-" in rel else ("gvisor" if rel.startswith("4.4.0") else "unknown")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        q = _run([smi, "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,"
                  "temperature.gpu,power.draw,pstate,persistence_mode,compute_mode",
                  "--format=csv,noheader"])
        env["nvidia_smi"] = q
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if os.path.exists(nvcc):
        out = _run([nvcc, "--version"]) or ""
        m = re.search(r"release [^\n]*", out)
        env["nvcc"] = m.group(0) if m else out[-200:]
    cs = os.path.join(cuda_home, "bin", "compute-sanitizer")
    if os.path.exists(cs):
        out = _run([cs, "--version"]) or ""
        env["compute_sanitizer"] = (out.splitlines() or [""])[-1]
    probe = _run([sys.executable, "-c", _TORCH_PROBE], timeout=120)
    try:
        env.update(json.loads((probe or "").splitlines()[-1]))
    except (ValueError, IndexError):
        env["torch_probe_error"] = (probe or "no output")[-300:]
    return env


# --- what a step's log says ---------------------------------------------------------------

def _tail(path: str | None, offset: int = 0, n: int = 400_000) -> str:
    """The end (at most n bytes) of a log from byte `offset` on: one step's part of a shared log."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(offset, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_PYTEST = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", re.M)


def read_log(step: str, text: str) -> dict:
    """Facts a step's log holds: pytest's counts, compute-sanitizer's summary or refusal."""
    facts: dict = {}
    found = _PYTEST.findall(text)
    if found:
        counts: dict[str, int] = {}
        for summary in found:  # several pytest runs in one log: add them up
            for n, word in re.findall(r"(\d+) (\w+)", summary):
                word = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[word] = counts.get(word, 0) + int(n)
        facts["pytest"] = counts
    if "compute-sanitizer" in text or "=========" in text:
        if "Device not supported" in text:
            facts["refused"] = "compute-sanitizer: Device not supported"
        m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        if m:
            facts["sanitizer_errors"] = int(m[-1])
        m = re.findall(r"RACECHECK SUMMARY: (\d+) hazard", text)
        if m:
            facts["racecheck_hazards"] = int(m[-1])
    m = re.findall(r"sanitize_scene: (\d+) calls on (\S+), (\d+) mismatches", text)
    if m:
        facts["scene_calls"], facts["scene_mismatches"] = int(m[-1][0]), int(m[-1][2])
    m = re.findall(r"^extension: .*$", text, re.M)
    if m and step == "extension":
        facts["extension"] = m[-1]
    m = re.findall(r"^imported .*$", text, re.M)
    if m:
        facts["imported"] = m[-1][len("imported "):]
    if step == "build":
        errors = re.findall(r"^.*(?:error:|Error:|FAILED:).*$", text, re.M)
        if errors:
            facts["first_error"] = errors[0].strip()[:300]
    return facts


def record(work: Path, step: str, status: str, seconds: float | None, rc: int | None, detail: str,
           log: str | None, log_offset: int = 0) -> dict:
    facts = read_log(step, _tail(log, log_offset))
    if facts.get("refused") and status != "ok":
        status, detail = "skipped", facts["refused"] + (f"; {detail}" if detail else "")
    entry = {"step": step, "status": status, "seconds": None if seconds is None else round(seconds, 1),
             "rc": rc, "detail": detail, "facts": facts, "log": os.path.basename(log) if log else None}
    with open(work / "steps.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")
    return entry


# --- the summaries ---------------------------------------------------------------------------

def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _steps(work: Path) -> list[dict]:
    """The steps in order, the last record of each (a step recorded twice: its final state)."""
    out: dict[str, dict] = {}
    try:
        lines = (work / "steps.jsonl").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        out.pop(e["step"], None)
        out[e["step"]] = e
    order = {name: i for i, name in enumerate(STEP_ORDER)}
    return sorted(out.values(), key=lambda e: order.get(e["step"], len(order)))


def assigner_summary(result: dict | None) -> dict | None:
    """The target case (batch 16, M = 100) of the run against the targets; where the run has no
    such case (a rehearsal), its largest batch at the M nearest 100, saying so."""
    if not result or not result.get("rows"):
        return None
    measured = [r for r in result["rows"] if r.get("median_ms") is not None]
    case = dict(TARGET_CASE)
    if not any(r["batch"] == case["batch"] and r["num_gt"] == case["num_gt"] for r in measured) and measured:
        b = max(r["batch"] for r in measured)
        m = min({r["num_gt"] for r in measured if r["batch"] == b}, key=lambda v: abs(v - TARGET_CASE["num_gt"]))
        case = {"batch": b, "num_gt": m, "instead_of": dict(TARGET_CASE)}
    rows = [r for r in measured if r["batch"] == case["batch"] and r["num_gt"] == case["num_gt"]]
    ext = sorted((r for r in rows if r["backend"] == "extension"), key=lambda r: not r.get("geometry"))
    ref = next((r for r in rows if r["backend"] == "reference"), None)
    if not ext:
        return {"case": case, "measured": False}
    e = ext[0]
    best_gpu = min((v for v in (e.get("event_us"), e.get("graph_us")) if v is not None), default=None)
    s = {"case": case, "measured": True, "device": e["device"], "geometry": e.get("geometry", False),
         "validate": result["environment"].get("validate"),
         "gpu": result["environment"].get("gpu"), "wall_ms": e["median_ms"],
         "event_us": e.get("event_us"), "graph_us": e.get("graph_us"), "host_enqueue_us": e.get("host_us"),
         "reference_wall_ms": ref["median_ms"] if ref else None,
         "reference_event_us": ref.get("event_us") if ref else None,
         "speedup_wall": e.get("speedup"), "speedup_gpu": e.get("speedup_gpu"), "note": e.get("note", "")}
    if len(ext) > 1:
        s["without_geometry_wall_ms"] = ext[1]["median_ms"]
        s["without_geometry_event_us"] = ext[1].get("event_us")
        s["without_geometry_graph_us"] = ext[1].get("graph_us")
    if best_gpu is not None:
        s["target_us"] = TARGET_US
        s["meets_us_target"] = best_gpu < TARGET_US
    sp = e.get("speedup_gpu") or e.get("speedup")
    if sp is not None:
        s["target_speedup"] = TARGET_SPEEDUP
        s["meets_speedup_target"] = sp >= TARGET_SPEEDUP
    return s


def model_summary(results: list[tuple[str, dict]]) -> list[dict]:
    """Train-step and predict rows with images/s. No peer's figure stands beside them: a comparison
    is only made side by side, on one machine in one run (bench/side_by_side.py)."""
    out = []
    for name, res in results:
        for r in res.get("rows", []):
            row = {"run": name, "device": r["device"], "mode": r["mode"], "size": r["size"], "batch": r["batch"],
                   "depth": r["depth"], "amp": r["amp"], "channels_last": r["channels_last"],
                   "median_s": r["median_s"], "iqr_pct": r["iqr_pct"], "images_per_s": r["images_per_s"],
                   "peak_gb": r.get("peak_gb")}
            out.append(row)
    return out


def train_summary(results: list[tuple[str, dict]], mode: str) -> list[dict]:
    """One row per `atss bench train` run, with issue 18's targets where the run is their case
    (R50, bf16, channels_last, on a GPU; a rehearsal's rows say "not a target case")."""
    out = []
    for name, r in results:
        s = r.get("setting", {})
        row = {"run": name, "device": s.get("device_name") or s.get("device"), "batch": s.get("batch"),
               "depth": s.get("depth"), "amp": s.get("amp"), "channels_last": s.get("channels_last"),
               "workers": s.get("workers"), "data": (s.get("data") or {}).get("size") or (s.get("data") or {}).get("source"),
               "images_per_s": r.get("images_per_s"), "step_median_s": (r.get("step_s") or {}).get("median"),
               "step_iqr_pct": (r.get("step_s") or {}).get("iqr_pct"), "loader_wait_share": r.get("loader_wait_share"),
               "host_syncs_per_step": r.get("host_syncs_per_step"), "achieved_tflops": r.get("achieved_tflops"),
               "peak_fraction": r.get("peak_fraction"), "peak_memory_gb": r.get("peak_memory_gb"),
               "top_ops": [p["name"] for p in (r.get("profile") or [])[:5]],
               "cuda_graphs": r.get("cuda_graphs")}
        target = TRAIN_TARGETS_IPS.get(row["batch"])
        if (mode == "gpu" and target and row["depth"] == 50 and row["amp"] == "bf16" and row["channels_last"]
                and str(s.get("device", "")).startswith("cuda")):
            row["target_ips"] = target
            row["meets_ips_target"] = (row["images_per_s"] or 0) >= target
            row["meets_loader_target"] = (row["loader_wait_share"] or 0) < TRAIN_TARGET_LOADER_SHARE
        out.append(row)
    return out


def data_summary(result: dict | None) -> dict | None:
    if not result:
        return None
    return {"stages": result.get("stages", []), "loaders": result.get("loaders", []),
            "workers_needed": result.get("workers_needed"), "target_ips": result.get("setting", {}).get("target_ips"),
            "gpu_decoder": result.get("gpu_decoder"), "cpus": result.get("environment", {}).get("affinity"),
            "data": result.get("setting", {}).get("data")}


def build(work: Path, out: Path) -> dict:
    env = _load(work / "env.json") or {}
    atss_env = _load(work / "atss_env.json")
    assigner_files = sorted(glob.glob(str(out / "assigner_*.json")))
    assigner = _load(Path(assigner_files[0])) if assigner_files else None
    models = [(Path(p).stem, r) for p in sorted(glob.glob(str(work / "model-*.json"))) if (r := _load(Path(p)))]
    trains = [(Path(p).stem, r) for p in sorted(glob.glob(str(work / "train-*.json"))) if (r := _load(Path(p)))]
    mode = (work / "mode").read_text().strip() if (work / "mode").exists() else "unknown"
    steps = _steps(work)
    return {"what": "bench/gpu-check.sh (issue 11, deliverable 6)", "mode": mode,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "environment": env, "atss_env": atss_env, "steps": steps,
            "assigner_target": assigner_summary(assigner),
            "model": model_summary(models),
            "train": train_summary(trains, mode),
            "data": data_summary(_load(work / "data.json")),
            "train_runs": dict(trains),
            "assigner": assigner}


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v)


def markdown(s: dict, out: Path) -> str:
    env = s["environment"]
    lines = [f"# GPU check ({s['mode']}), {s['date_utc']}", ""]
    if s["mode"] != "gpu":
        lines += ["**Rehearsal without a GPU**: the GPU steps ran CPU stand-ins or were skipped; no GPU figure "
                  "below.", ""]
    lines += [f"- GPU: {env.get('gpu') or 'none'} (capability {env.get('gpu_capability', '-')}, "
              f"{env.get('gpu_sms', '-')} SMs, {env.get('gpu_memory_gb', '-')} GB); nvidia-smi: "
              f"{env.get('nvidia_smi') or '-'}",
              f"- torch {env.get('torch')} (CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), "
              f"python {env.get('python')}, nvcc {env.get('nvcc') or '-'}, "
              f"compute-sanitizer {env.get('compute_sanitizer') or '-'}",
              f"- machine: {env.get('cpu', '-')}, {env.get('cpu_count')} CPUs, kernel {env.get('kernel')} "
              f"(runtime: {env.get('runtime')})"]
    if s.get("atss_env"):
        a = s["atss_env"]
        lines.append(f"- extension: loaded={a.get('extension_loaded')}, CUDA {a.get('extension_cuda_version')} "
                     f"for archs {a.get('extension_cuda_archs')}, compiler {a.get('extension_compiler')}, "
                     f"built against torch {a.get('extension_torch')}")
    lines += ["", "## Steps", "", "| step | status | seconds | detail |", "| --- | --- | ---: | --- |"]
    for st in s["steps"]:
        facts = st.get("facts") or {}
        detail = [st.get("detail") or ""]
        if "pytest" in facts:
            detail.append(", ".join(f"{n} {w}" for w, n in facts["pytest"].items()))
        if "sanitizer_errors" in facts:
            detail.append(f"{facts['sanitizer_errors']} sanitizer errors")
        if "racecheck_hazards" in facts:
            detail.append(f"{facts['racecheck_hazards']} racecheck hazards")
        for key in ("extension", "imported", "first_error"):
            if key in facts:
                detail.append(f"{key}: {facts[key]}" if key != "extension" else facts[key])
        if "scene_mismatches" in facts:
            detail.append(f"{facts['scene_calls']} calls, {facts['scene_mismatches']} mismatches")
        text = "; ".join(d for d in detail if d).replace("|", "/").replace("\n", " ")
        lines.append(f"| {st['step']} | {st['status']} | {_fmt(st.get('seconds'))} | {text} |")
    t = s.get("assigner_target")
    lines += ["", "## Assigner: batch 16 x 1333x800, M = 100", ""]
    if not t or not t.get("measured"):
        lines.append("Not measured.")
    else:
        if t["case"].get("instead_of"):
            lines += [f"Not measured; the nearest case run instead: batch {t['case']['batch']}, "
                      f"M = {t['case']['num_gt']}.", ""]
        lines += [f"On {t['device']}{' (' + t['gpu'] + ')' if t.get('gpu') else ''}, validate={t['validate']}, "
                  f"geometry={t['geometry']}:", "",
                  f"- GPU time per call: {_fmt(t.get('event_us'))} us by CUDA events over back-to-back calls, "
                  f"{_fmt(t.get('graph_us'))} us by a captured CUDA graph's replay (target: under "
                  f"{TARGET_US:g} us: {'met' if t.get('meets_us_target') else 'not met'})"
                  if t.get("event_us") is not None else
                  f"- wall time per call: {_fmt(t['wall_ms'])} ms (no GPU times: not a CUDA run)",
                  f"- latency (synchronised wall clock): {_fmt(t['wall_ms'])} ms; CPU time to enqueue one call: "
                  f"{_fmt(t.get('host_enqueue_us'))} us",
                  f"- reference on the same device: {_fmt(t.get('reference_event_us'))} us GPU / "
                  f"{_fmt(t.get('reference_wall_ms'))} ms wall; speed-up {_fmt(t.get('speedup_gpu'))}x by GPU time, "
                  f"{_fmt(t.get('speedup_wall'))}x by wall time (target: at least {TARGET_SPEEDUP:g}x: "
                  f"{'met' if t.get('meets_speedup_target') else 'not met'})"]
        if t.get("without_geometry_wall_ms") is not None:
            lines.append(f"- without geometry: {_fmt(t.get('without_geometry_event_us'))} us events, "
                         f"{_fmt(t.get('without_geometry_graph_us'))} us graph, "
                         f"{_fmt(t['without_geometry_wall_ms'])} ms wall")
        if t.get("note"):
            lines.append(f"- note: {t['note']}")
    md_files = sorted(glob.glob(str(out / "assigner_*.md")))
    if md_files:
        lines += ["", "### All cases", "", Path(md_files[0]).read_text().strip()]
    lines += ["", "## Model: R50-FPN ATSS", ""]
    if s["model"]:
        lines += ["| run | device | mode | size | batch | model | median s | IQR | images/s | peak GB |",
                  "| --- | --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in s["model"]:
            model = f"R{r['depth']} {'fp32' if r['amp'] == 'none' else r['amp']}" + (" NHWC" if r["channels_last"] else "")
            lines.append(f"| {r['run']} | {r['device']} | {r['mode']} | {r['size']} | {r['batch']} | {model} | "
                         f"{r['median_s']:.4f} | {r['iqr_pct']:.0f}% | {r['images_per_s']:.1f} | "
                         f"{_fmt(r.get('peak_gb'))} |")
    else:
        lines.append("Not measured.")
    lines += ["", "## Training step with the real loader (`atss bench train`)", ""]
    if s.get("train"):
        lines += ["One process, accumulate 1; step = host time between step starts (nothing synchronised inside the "
                  "window); loader = time blocked in next() / window; syncs counted in sync debug mode \"warn\".", "",
                  "| run | device | batch | model | workers | images/s | step s (IQR) | loader wait | syncs/step | "
                  "TFLOP/s (of peak) | peak GB | target |",
                  "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in s["train"]:
            model = f"R{r['depth']} {'fp32' if r['amp'] == 'none' else r['amp']}" + (" NHWC" if r["channels_last"] else "")
            g = r.get("cuda_graphs")
            if g:
                model += (f", graphs ({g['timed_steps_replayed']}/{g['timed_steps']} replayed, "
                          f"{g['captures']} captured in {g['capture_s']:.1f} s)")
            frac = f" ({100 * r['peak_fraction']:.1f}%)" if r.get("peak_fraction") is not None else ""
            target = "not a target case"
            if r.get("target_ips"):
                target = (f"{r['target_ips']:g} images/s: {'met' if r['meets_ips_target'] else 'not met'}; loader "
                          f"< {100 * TRAIN_TARGET_LOADER_SHARE:g}%: {'met' if r['meets_loader_target'] else 'not met'}")
            syncs = "n/a" if r.get("host_syncs_per_step") is None else f"{r['host_syncs_per_step']:.1f}"
            lines.append(f"| {r['run']} | {r['device']} | {r['batch']} | {model} | {r['workers']} | "
                         f"{_fmt(r['images_per_s'])} | {_fmt(r['step_median_s'])} ({_fmt(r['step_iqr_pct'], 2)}%) | "
                         f"{100 * (r['loader_wait_share'] or 0):.1f}% | {syncs} | {_fmt(r['achieved_tflops'])}{frac} | "
                         f"{_fmt(r['peak_memory_gb'])} | {target} |")
        for r in s["train"]:
            if r.get("top_ops"):
                lines.append(f"- {r['run']} top operators by self time: {', '.join(r['top_ops'])}")
        lines.append("- images/s on one GPU; 8 GPUs add NCCL and eight loaders, not measured here.")
    else:
        lines.append("Not measured.")
    lines += ["", "## Input pipeline (`atss bench data`)", ""]
    d = s.get("data")
    if d:
        for st in d["stages"]:
            lines.append(f"- {st['stage']}: {st['ms_per_image']:.2f} ms/image, {st['images_per_s']:.0f} images/s "
                         f"per worker ({st['note']})")
        for ld in d["loaders"]:
            lines.append(f"- DataLoader at {ld['workers']} workers, batch {ld['batch']}: {ld['images_per_s']:.0f} images/s")
        if d.get("workers_needed") is not None:
            lines.append(f"- a GPU at {d['target_ips']:g} images/s needs {d['workers_needed']} OpenCV workers "
                         f"(this machine: {d.get('cpus')} CPUs)")
        g = d.get("gpu_decoder")
        if g:
            lines.append(f"- {g['decoder']} on {g['device']}, batch {g['batch']}: {g['images_per_s']:.0f} images/s; "
                         f"vs OpenCV: decode max {g['decode_vs_opencv']['max_abs']:.0f} / mean "
                         f"{g['decode_vs_opencv']['mean_abs']:.3f}, resize max {g['resize_vs_opencv']['max_abs']:.0f} / "
                         f"mean {g['resize_vs_opencv']['mean_abs']:.3f}, both max "
                         f"{g['decode_resize_vs_opencv']['max_abs']:.0f} / mean "
                         f"{g['decode_resize_vs_opencv']['mean_abs']:.3f} (0..255)")
    else:
        lines.append("Not measured.")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write(work: Path, out: Path, summary_dir: Path | None) -> dict:
    s = build(work, out)
    text_json, text_md = json.dumps(s, indent=2) + "\n", markdown(s, out)
    for d in (out, summary_dir):
        if d is not None:
            d.mkdir(parents=True, exist_ok=True)
            _write(d / "gpu-check.json", text_json)
            _write(d / "gpu-check.md", text_md)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("env", "record", "write"))
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--summary-dir", type=Path)
    ap.add_argument("--step")
    ap.add_argument("--status", choices=("ok", "failed", "timeout", "skipped"))
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--rc", type=int)
    ap.add_argument("--detail", default="")
    ap.add_argument("--log")
    ap.add_argument("--log-offset", type=int, default=0)
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    if a.command == "env":
        env = collect_env()
        (a.work / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        print(json.dumps(env, indent=2))
        return 0
    if a.out is None:
        ap.error("--out is required")
    if a.command == "record":
        if not a.step or not a.status:
            ap.error("record needs --step and --status")
        entry = record(a.work, a.step, a.status, a.seconds, a.rc, a.detail, a.log, a.log_offset)
        facts = entry["facts"]
        extra = "".join(f" {k}={v}" for k, v in facts.items())
        print(f"[gpu-check] step {entry['step']}: {entry['status']}"
              f"{' in %.1f s' % entry['seconds'] if entry['seconds'] is not None else ''}"
              f"{' - ' + entry['detail'] if entry['detail'] else ''}{extra}", flush=True)
    write(a.work, a.out, a.summary_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
