"""atss vs MMDetection (vs ONNX Runtime), measured in one run on one machine, interleaved.

    .venv/bin/python bench/side_by_side.py --mmdet-python ~/.cache/mmdet-oracle/venv/bin/python

Each side runs in its own process, started once and kept: our PyTorch model (`atss_driver.py
--side atss`), MMDetection's, in its own venv (`mmdet_driver.py`), and the exported ONNX file in
ONNX Runtime (`atss_driver.py --side onnxruntime`, no torch). They get the same inputs (generated
uint8 images at the network's size, the same GT boxes), the same weights (one state dict,
loaded strictly by both PyTorch sides; the ONNX file is exported from it) and the same thread
count (torch / ONNX Runtime intra-op threads and OMP/MKL variables). Only one side works at a
time: each round asks every side in turn for `--repeats` timed calls of each case, the order
rotating between rounds, so a change in the machine's load hits every side alike. Before the
rounds the sides compute their losses and detections once without timing, so the report shows
that they do the same work.

Writes `<out-dir>/<name>.json` (every timing, versions, load) and `<name>.md` (the table) and
prints the table. A missing or mmdet-less `--mmdet-python` is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from driver_common import PREFIX, cpu_model  # noqa: E402

SIDES = ("atss", "mmdet", "onnxruntime")
SIDE_NAMES = {"atss": "atss (PyTorch)", "mmdet": "MMDetection (PyTorch)", "onnxruntime": "atss ONNX in ONNX Runtime"}
DEFAULT_MMDET_PYTHON = Path(os.environ.get("MMVENV", Path.home() / ".cache" / "mmdet-oracle" / "venv")) / "bin" / "python"
WHAT = {
    ("train", "atss"): "normalise the uint8 batch, forward, losses, backward, SGD step",
    ("train", "mmdet"): "`model.train_step`: its preprocessor (BGR->RGB, normalise, pad), forward, losses, "
                        "backward, SGD step",
    ("predict", "atss"): "normalise the uint8 batch, forward, post-processing (`model.predict`)",
    ("predict", "mmdet"): "`model.test_step` under no_grad: its preprocessor, forward, post-processing",
    ("predict", "onnxruntime"): "one `session.run`: the graph normalises, runs the network and post-processes",
}


class BenchError(Exception):
    """A problem the user can fix: printed as one `error: ...` line, exit status 2."""


# ---- inputs ---------------------------------------------------------------------------------
def make_inputs(batch: int, size: tuple[int, int], num_classes: int, seed: int = 0, boxes_per_image: int = 8):
    """uint8 [B, 3, H, W] RGB pictures (a gradient, noise, filled rectangles) and the rectangles
    as GT boxes with random labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images, boxes, labels = [], [], []
    for _ in range(batch):
        c = rng.uniform(40, 200, 3)[:, None, None] + 40 * (xx / w)[None] - 30 * (yy / h)[None]
        img = c + rng.normal(0, 12, (3, h, w))
        bxs = []
        for _ in range(boxes_per_image):
            bw, bh = rng.uniform(0.08, 0.5) * w, rng.uniform(0.08, 0.5) * h
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            x2, y2 = x1 + bw, y1 + bh
            img[:, int(y1):int(y2), int(x1):int(x2)] = rng.uniform(0, 255, 3)[:, None, None]
            bxs.append([round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)])
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        boxes.append(bxs)
        labels.append([int(v) for v in rng.integers(0, num_classes, boxes_per_image)])
    return np.stack(images), {"boxes": boxes, "labels": labels}


def write_inputs(folder: Path, args) -> None:
    import numpy as np
    import torch

    from atss_cli.model import build_atss
    from atss_cli.model.fixture_weights import deterministic_state_dict

    images, targets = make_inputs(max(args.train_batch, max(args.predict_batch)), args.size, args.num_classes)
    np.save(folder / "images.npy", images)
    (folder / "targets.json").write_text(json.dumps(targets))
    torch.manual_seed(0)
    model = build_atss(num_classes=args.num_classes, depth=args.depth)
    state = deterministic_state_dict(model) if args.weights == "fixture" else model.state_dict()
    # `config` tells `atss export` the depth (it builds the model from the file alone)
    torch.save({"state_dict": state, "config": {"model": {"depth": args.depth}}}, folder / "weights.pth")


def export_onnx(folder: Path, log) -> None:
    cmd = [sys.executable, "-m", "atss_cli", "export", str(folder / "weights.pth"), "--out", str(folder / "model.onnx")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env(os.cpu_count() or 1))
    log.write(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0 or not (folder / "model.onnx").is_file():
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"`atss export` failed ({last}); pass --onnx FILE or leave onnxruntime out of --sides")


# ---- drivers --------------------------------------------------------------------------------
def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    env.pop("ATSS_DEBUG", None)
    return env


def check_mmdet_python(python: Path) -> dict:
    """MMDetection's versions from `python`, or a BenchError naming what is missing."""
    if not python.exists():
        raise BenchError(f"--mmdet-python {python}: no such file (build MMDetection's venv with "
                         "`bash ../shared/mmdet-oracle/setup.sh`, or leave mmdet out of --sides)")
    code = ("import json, mmdet, mmcv, mmengine, torch; print(json.dumps({'mmdet': mmdet.__version__, "
            "'mmcv': mmcv.__version__, 'mmengine': mmengine.__version__, 'torch': torch.__version__}))")
    try:
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    except OSError as exc:
        raise BenchError(f"--mmdet-python {python}: cannot run it ({exc.strerror or exc})") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["exit status %d" % proc.returncode])[-1]
        raise BenchError(f"--mmdet-python {python} cannot import MMDetection ({last})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Driver:
    """One side's process: send a command line, read its `@@sbs` answer."""

    def __init__(self, side: str, cmd: list[str], env: dict, log_path: Path):
        self.side = side
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        self.ready = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                msg = json.loads(line[len(PREFIX):])
                if "error" in msg:
                    raise BenchError(f"{SIDE_NAMES[self.side]} side: {msg['error']} (log: {self.log_path})")
                return msg
        self.proc.wait()
        self.log.flush()
        tail = [ln for ln in self.log_path.read_text().strip().splitlines() if ln.strip()]
        raise BenchError(f"{SIDE_NAMES[self.side]} side exited with status {self.proc.returncode}"
                         f" ({tail[-1] if tail else 'no output'}; log: {self.log_path})")

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_drivers(sides, folder: Path, args, logs: Path) -> dict:
    env = _env(args.threads)
    common = ["--inputs", str(folder), "--threads", str(args.threads)]
    model = ["--depth", str(args.depth), "--num-classes", str(args.num_classes)]
    cmds = {"atss": [sys.executable, str(BENCH / "atss_driver.py"), "--side", "atss", *common, *model],
            "onnxruntime": [sys.executable, str(BENCH / "atss_driver.py"), "--side", "onnxruntime", *common],
            "mmdet": [str(args.mmdet_python), str(BENCH / "mmdet_driver.py"), *common, *model]}
    drivers = {}
    try:
        for side in sides:
            drivers[side] = Driver(side, cmds[side], env, logs / f"{side}.log")
    except BaseException:
        for d in drivers.values():
            d.close()
        raise
    return drivers


# ---- measuring ------------------------------------------------------------------------------
def cases_of(args, sides) -> list[tuple[str, int, list[str]]]:
    cases = []
    if "train" in args.cases:
        cases.append(("train", args.train_batch, [s for s in sides if s != "onnxruntime"]))
    if "predict" in args.cases:
        cases += [("predict", b, list(sides)) for b in args.predict_batch]
    return [c for c in cases if c[2]]


def measure(drivers: dict, cases, args, progress) -> dict:
    """{(case, batch, side): {"times": [...], "cpu": [...], "dets": [...]}} over interleaved rounds."""
    results = {(c, b, s): {"times": [], "cpu": [], "dets": None} for c, b, ss in cases for s in ss}

    def run(case, batch, side, repeats, keep: bool):
        time.sleep(args.gap)   # let the previous side's thread pool go idle first
        ans = drivers[side].ask(op="run", case=case, batch=batch, repeats=repeats)
        if keep:
            r = results[(case, batch, side)]
            r["times"] += ans["times"]
            r["cpu"] += ans["cpu"]
            r["dets"] = ans["dets"]

    for case, batch, sides in cases:
        for side in sides:
            if args.warmup:
                progress(f"warm-up {case} x{batch} {side}")
                run(case, batch, side, args.warmup, keep=False)
    for r in range(args.rounds):
        for case, batch, sides in cases:
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            progress(f"round {r + 1}/{args.rounds}: {case} x{batch} ({', '.join(order)})")
            for side in order:
                run(case, batch, side, args.repeats, keep=True)
    return results


def summarise(times: list[float], cpu: list[float], batch: int) -> dict:
    med = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) >= 2 else (med, med, med)
    return {"n": len(times), "median_s": med, "min_s": min(times), "max_s": max(times), "q1_s": q1, "q3_s": q3,
            "iqr_pct": 100 * (q3 - q1) / med if med > 0 else 0.0, "s_per_image": med / batch,
            "cpu_s": statistics.median(cpu)}


def load_now() -> dict:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.path.exists(
        "/usr/bin/uptime") else ""
    return {"load_average": list(os.getloadavg()), "uptime": uptime}


# ---- report ---------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    env = report["environment"]
    v = env["versions"]
    lines = [f"# atss vs MMDetection, measured side by side ({report['date']})", "",
             f"- command: `{report['command']}`",
             f"- machine: {env['cpu']}, {env['cpu_count']} CPUs; {report['threads']} threads on every side "
             f"(torch.set_num_threads / ONNX Runtime intra-op threads, OMP/MKL variables)",
             f"- load average (1, 5, 15 min) before: {_load(env['load_before'])}; after: {_load(env['load_after'])}"
             + (" (other work shared the CPU: compare rows of this run only)"
                if env['load_before']['load_average'][0] > report['threads'] * 0.5 + 0.5 else ""),
             "- versions: " + "; ".join(f"{SIDE_NAMES[side]}: " + ", ".join(f"{k} {x}" for k, x in vs.items())
                                        for side, vs in v.items()),
             f"- model: ATSS R{report['depth']}-FPN, {report['num_classes']} classes; weights: {report['weights_text']}",
             f"- inputs: {report['inputs_text']}",
             f"- timing: {report['warmup']} warm-up calls per side and case, then {report['rounds']} rounds of "
             f"{report['repeats']} call(s) per side, sides taking turns (order rotating); median and spread over "
             "the timed calls; CPU s = process CPU seconds per call (all threads); MMDetection / this = ratio of the "
             "medians, and (paired) the median over rounds of the ratio within each round", ""]
    lines += ["| case | side | a timed call does | median s | min..max s | IQR | s / image | CPU s | dets / image "
              "| MMDetection / this |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        ratio = "" if row.get("mmdet_over_this") is None else (
            f"{row['mmdet_over_this']:.2f}x (paired {row['paired']['median']:.2f}x)")
        dets = "" if row["dets"] is None else "/".join(str(d) for d in row["dets"])
        lines.append(f"| {row['case']} {report['size']} x{row['batch']} | {SIDE_NAMES[row['side']]} | "
                     f"{WHAT[(row['case'], row['side'])]} | {row['median_s']:.3f} | {row['min_s']:.3f}..{row['max_s']:.3f}"
                     f" | {row['iqr_pct']:.0f}% | {row['s_per_image']:.3f} | {row['cpu_s']:.2f} | {dets} | {ratio} |")
    lines.append("")
    checks = report["checks"]
    if checks:
        parts = []
        for side, c in checks.items():
            loss = "" if c.get("loss") is None else f"loss {c['loss']:.6f}, "
            parts.append(f"{SIDE_NAMES[side]}: {loss}detections per image {c['dets']}")
        lines += ["Same work on every side (computed once before the rounds, untimed, on the training batch): "
                  + "; ".join(parts) + ".", ""]
    for text in report["summary"]:
        lines.append(f"- {text}")
    lines.append("")
    return "\n".join(lines)


def _load(item: dict) -> str:
    return ", ".join(f"{x:.2f}" for x in item["load_average"])


def build_rows(results: dict, args) -> tuple[list[dict], list[str]]:
    rows, summary = [], []
    for (case, batch, side), r in results.items():
        if not r["times"]:
            continue
        rows.append({"case": case, "batch": batch, "side": side, **summarise(r["times"], r["cpu"], batch),
                     "dets": r["dets"], "times": r["times"], "cpu": r["cpu"]})
    by_key = {(r["case"], r["batch"], r["side"]): r for r in rows}
    for r in rows:
        ref = by_key.get((r["case"], r["batch"], "mmdet"))
        r["mmdet_over_this"] = ref["median_s"] / r["median_s"] if ref and r["side"] != "mmdet" else None
        r["paired"] = paired_ratios(ref["times"], r["times"], args.repeats) if ref and r["side"] != "mmdet" else None
        if r["mmdet_over_this"] is not None:
            summary.append(f"{r['case']} {args.size_text} batch {r['batch']}: {SIDE_NAMES[r['side']]} "
                           f"{r['median_s']:.3f} s vs MMDetection {ref['median_s']:.3f} s per call: "
                           f"{r['mmdet_over_this']:.2f}x as fast")
    for r in rows:
        ours = by_key.get((r["case"], r["batch"], "atss"))
        if r["side"] == "onnxruntime" and ours:
            summary.append(f"{r['case']} {args.size_text} batch {r['batch']}: ONNX Runtime {r['median_s']:.3f} s vs "
                           f"atss PyTorch {ours['median_s']:.3f} s per call: "
                           f"{ours['median_s'] / r['median_s']:.2f}x as fast")
    target = by_key.get(("predict", 1, "onnxruntime")), by_key.get(("predict", 1, "mmdet"))
    if all(target):
        ratio = target[1]["s_per_image"] / target[0]["s_per_image"]
        paired = target[0]["paired"]["median"]
        verdict = ("met" if min(ratio, paired) >= 1.3 else "NOT met" if max(ratio, paired) < 1.3
                   else "borderline: one estimate above 1.3, one below")
        summary.append(f"issue 9 target (ONNX Runtime >= 1.3x as fast per image as MMDetection's PyTorch "
                       f"predict, {args.size_text}, batch 1): {ratio:.2f}x by the medians, {paired:.2f}x by the "
                       f"rounds' paired ratios (middle half {target[0]['paired']['q1']:.2f}..."
                       f"{target[0]['paired']['q3']:.2f}x): {verdict}")
    return rows, summary


def paired_ratios(ref_times: list[float], times: list[float], repeats: int) -> dict:
    """MMDetection / this, one ratio per round from the two sides' calls of that round.

    The host's speed drifts by tens of percent within minutes (a shared virtual machine); two sides
    measured a few seconds apart in one round see nearly the same host, so the ratio within a round
    is steadier than a ratio of medians taken over the whole run."""
    n = min(len(ref_times), len(times)) // repeats
    ratios = [statistics.fmean(ref_times[i * repeats:(i + 1) * repeats])
              / statistics.fmean(times[i * repeats:(i + 1) * repeats]) for i in range(n)]
    if not ratios:
        return {"median": float("nan"), "q1": float("nan"), "q3": float("nan"), "ratios": []}
    q1, med, q3 = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) >= 2
                   else (ratios[0], ratios[0], ratios[0]))
    return {"median": statistics.median(ratios), "q1": q1, "q3": q3, "ratios": ratios}


# ---- main -----------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="atss vs MMDetection vs ONNX Runtime, interleaved in one run "
                                             "(see bench/README.md)")
    ap.add_argument("--mmdet-python", type=Path, default=Path(os.environ.get("MMDET_PYTHON", DEFAULT_MMDET_PYTHON)),
                    help="MMDetection's python (default: $MMDET_PYTHON or ~/.cache/mmdet-oracle/venv/bin/python)")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated: atss, mmdet, onnxruntime")
    ap.add_argument("--cases", default="train,predict", help="comma-separated: train, predict")
    ap.add_argument("--size", default="640x480", help="the network's input size WxH (no resize on any side)")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--predict-batch", type=int, action="append", help="repeatable (default: 1 and 2)")
    ap.add_argument("--depth", type=int, default=50, choices=(18, 34, 50, 101))
    ap.add_argument("--num-classes", type=int, default=80)
    ap.add_argument("--weights", choices=("fixture", "init"), default="fixture",
                    help="fixture: the parity fixture's formula (scores spread like a trained model's); "
                         "init: our random initialisation (almost no detections)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per side and case in each round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--gap", type=float, default=0.2, help="seconds of idle before each side's turn")
    ap.add_argument("--onnx", type=Path, help="time this exported file instead of exporting the weights")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "results")
    ap.add_argument("--name", help="file name stem (default: side_by_side_<date>)")
    args = ap.parse_args(argv)
    args.command = shlex.join([".venv/bin/python", "bench/side_by_side.py", *(sys.argv[1:] if argv is None else argv)])
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [s for s in args.sides if s not in SIDES] or [c for c in args.cases if c not in ("train", "predict")]
    if bad:
        raise BenchError(f"unknown side or case {bad[0]!r}; sides: {', '.join(SIDES)}; cases: train, predict")
    if not args.sides or not args.cases:
        raise BenchError("--sides and --cases need at least one entry each")
    args.predict_batch = args.predict_batch or [1, 2]
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
    except ValueError:
        raise BenchError(f"--size must look like 640x480, got {args.size!r}") from None
    if w < 32 or h < 32 or w % 32 or h % 32:
        raise BenchError(f"--size {args.size}: width and height must be multiples of 32 (no padding, "
                         "so every side sees the same tensor)")
    if min([args.train_batch, args.rounds, args.repeats, args.threads, *args.predict_batch]) < 1 or args.warmup < 0:
        raise BenchError("batches, --rounds, --repeats and --threads must be >= 1, --warmup >= 0")
    if args.onnx is not None and not args.onnx.is_file():
        raise BenchError(f"--onnx {args.onnx}: no such file")
    args.size, args.size_text = (w, h), f"{w}x{h}"
    return args


def run(args, progress=print) -> dict:
    if "mmdet" in args.sides:
        check_mmdet_python(args.mmdet_python)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or f"side_by_side_{dt.date.today().isoformat()}"
    started = dt.datetime.now(dt.timezone.utc)
    load_before = load_now()
    with tempfile.TemporaryDirectory(prefix="atss-sbs-") as tmp:
        folder = Path(tmp)
        write_inputs(folder, args)
        if "onnxruntime" in args.sides:
            if args.onnx is not None:
                (folder / "model.onnx").write_bytes(args.onnx.read_bytes())
            else:
                progress("exporting the weights with `atss export`")
                with open(folder / "export.log", "w") as log:
                    export_onnx(folder, log)
        progress("starting " + ", ".join(args.sides))
        drivers = start_drivers(args.sides, folder, args, folder)
        try:
            checks = {}
            for side, d in drivers.items():
                c = d.ask(op="check", batch=args.train_batch)
                checks[side] = {"loss": sum(c["losses"].values()) if c.get("losses") else None,
                                "losses": c.get("losses"), "dets": c["dets"]}
            results = measure(drivers, cases_of(args, args.sides), args, progress)
        except BenchError:
            for side in drivers:
                log = folder / f"{side}.log"
                if log.exists():
                    sys.stderr.write(f"--- {side} log (last lines) ---\n"
                                     + "\n".join(log.read_text().splitlines()[-15:]) + "\n")
            raise
        finally:
            for d in drivers.values():
                d.close()
        versions = {side: d.ready["versions"] for side, d in drivers.items()}
    rows, summary = build_rows(results, args)
    ort_ready = drivers.get("onnxruntime")
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"), "command": args.command,
        "threads": args.threads, "size": args.size_text, "depth": args.depth, "num_classes": args.num_classes,
        "weights": args.weights, "rounds": args.rounds, "repeats": args.repeats, "warmup": args.warmup,
        "weights_text": ("the parity fixture's formula (../shared/reference/mmdet_atss/README.md), one state dict "
                         "loaded strictly by both PyTorch sides" if args.weights == "fixture" else
                         "our random initialisation (seed 0), one state dict loaded by both PyTorch sides")
                        + ("; the ONNX file exported from it with `atss export`" if "onnxruntime" in args.sides
                           and args.onnx is None else (f"; ONNX file {args.onnx}" if args.onnx else "")),
        "inputs_text": f"generated uint8 RGB images of {args.size_text} (gradient, noise, 8 filled rectangles that are "
                       f"the GT boxes), already the network's size: no resize on any side, no padding, "
                       f"scale factor 1; training batch {args.train_batch}",
        "environment": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                        "versions": versions, "load_before": load_before, "load_after": load_now(),
                        "setup_s": {s: d.ready.get("setup_s") for s, d in drivers.items()},
                        "onnxruntime_imported_torch": ort_ready.ready["versions"].get("torch_imported")
                        if ort_ready else None},
        "checks": checks, "rows": rows, "summary": summary,
    }
    text = markdown(report)
    from atss_cli.atomic import atomic_open

    with atomic_open(args.out_dir / f"{name}.json", "w") as f:
        json.dump(report, f, indent=2)
    with atomic_open(args.out_dir / f"{name}.md", "w") as f:
        f.write(text)
    report["paths"] = [str(args.out_dir / f"{name}.json"), str(args.out_dir / f"{name}.md")]
    return report


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        report = run(args, progress=lambda m: print(f"[side_by_side] {m}", file=sys.stderr, flush=True))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(markdown(report))
    print("wrote " + " and ".join(report["paths"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
