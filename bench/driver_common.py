"""What both sides of `bench/side_by_side.py` share: the input files, the timing loop and the
line protocol. It imports only the standard library, numpy and `atss_cli.benchmarks` (standard
library only; the repository root goes on sys.path, no install needed), because it runs in three
interpreters: ours (atss, PyTorch), ours without torch (ONNX Runtime) and MMDetection's venv.

Protocol: the orchestrator starts a driver, which sets itself up and prints one `@@sbs {...}`
line (versions, set-up seconds, sanity values); then it reads one JSON command per line on
stdin and answers each with one `@@sbs {...}` line. Other stdout lines (library chatter) are
ignored by the orchestrator. Commands:
    {"op": "run", "case": "train"|"predict", "batch": B, "repeats": N}
        -> {"times": [s, ...], "cpu": [s, ...], "dets": [per image, of the last call]}
    {"op": "check", "batch": B} -> {"losses": {...}, "dets": [...]}   (no timing; no weight update)
    {"op": "quit"}
An exception is answered with {"error": "Type: message"} and the driver goes on.

Input files (written by the orchestrator into one folder, read here):
    images.npy     uint8 [B, 3, H, W] RGB, the network's input size (no resize on either side)
    targets.json   {"boxes": [[[x1, y1, x2, y2], ...] per image], "labels": [[...] per image]}
    weights.pth    {"state_dict": ...}: the same tensors for both PyTorch sides
    model.onnx     the exported file (ONNX Runtime side)
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from atss_cli.benchmarks import cpu_name  # noqa: E402

cpu_model = cpu_name   # the drivers' CPU line: the same text `atss bench` prints

PREFIX = "@@sbs "


def reply(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def load_inputs(folder: str | os.PathLike):
    import numpy as np

    folder = Path(folder)
    images = np.load(folder / "images.npy")
    targets = json.loads((folder / "targets.json").read_text())
    return images, targets


def timed(fn, repeats: int) -> tuple[list[float], list[float], object]:
    """Wall and process-CPU seconds of `repeats` calls of `fn`; and the last call's result."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu, out


def serve(ready: dict, cases: dict, check) -> None:
    """Answer commands until "quit" or end of input.

    cases: {"train": make(batch) -> fn() returning per-image detections or None, "predict": ...};
    the callables are built once per (case, batch) and kept, so warm-up carries over rounds.
    """
    reply({"ready": True, **ready})
    built: dict = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            op = cmd.get("op")
            if op == "quit":
                reply({"bye": True})
                return
            if op == "check":
                reply(check(int(cmd["batch"])))
                continue
            if op != "run":
                raise ValueError(f"unknown op {op!r}")
            key = (cmd["case"], int(cmd["batch"]))
            if key not in built:
                if cmd["case"] not in cases:
                    raise ValueError(f"this side has no case {cmd['case']!r}")
                built[key] = cases[cmd["case"]](key[1])
            times, cpu, dets = timed(built[key], int(cmd["repeats"]))
            reply({"times": times, "cpu": cpu, "dets": dets})
        except Exception as exc:  # report and stay alive: the orchestrator decides
            traceback.print_exc(file=sys.stderr)
            reply({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]})


def thread_env(threads: int) -> None:
    """Thread counts that must be set before torch / onnxruntime load their pools."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
