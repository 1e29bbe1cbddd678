"""bench/gpu-check.sh's bookkeeping (bench/gpu_check.py): log parsing, step records, summaries."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_read_log_pytest_counts_add_up(gc):
    text = ("....s\n13 passed, 2 skipped, 279 deselected in 14.31s\n"
            "===== 5 passed, 1 error in 3.00s =====\n")
    assert gc.read_log("tests-cuda", text)["pytest"] == {"passed": 18, "skipped": 2, "deselected": 279, "errors": 1}


def test_read_log_sanitizer(gc):
    ok = "========= COMPUTE-SANITIZER\nsanitize_scene: 43 calls on cuda, 0 mismatches\n========= ERROR SUMMARY: 0 errors\n"
    facts = gc.read_log("memcheck", ok)
    assert facts["sanitizer_errors"] == 0 and facts["scene_calls"] == 43 and facts["scene_mismatches"] == 0
    race = "========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)\n"
    assert gc.read_log("racecheck", race)["racecheck_hazards"] == 2
    refused = "========= COMPUTE-SANITIZER\n========= Error: Device not supported\n"
    assert gc.read_log("initcheck", refused)["refused"].endswith("Device not supported")


def _assigner_result():
    def row(backend, geometry, median_ms, event_us, graph_us=None, speedup_gpu=None):
        return {"device": "cuda", "backend": backend, "batch": 16, "num_gt": 100, "anchors": 22400, "runs": 20,
                "median_ms": median_ms, "q1_ms": None, "q3_ms": None, "min_ms": median_ms, "max_ms": median_ms,
                "peak_mb": 4.0, "speedup": 1.0, "memory_ratio": 1.0, "positives": 5795, "note": "",
                "geometry": geometry, "event_us": event_us, "event_q1_us": None, "event_q3_us": None,
                "graph_us": graph_us, "graph_q1_us": None, "graph_q3_us": None, "host_us": 20.0,
                "speedup_gpu": speedup_gpu}

    return {"environment": {"gpu": "NVIDIA H200", "validate": False},
            "rows": [row("reference", False, 9.0, 8000.0), row("extension", True, 0.1, 42.0, 35.0, 190.0),
                     row("extension", False, 0.12, 60.0, 50.0, 133.0)]}


def test_record_and_write_summaries(gc, tmp_path):
    work, out, extra = tmp_path / "work", tmp_path / "out", tmp_path / "bench"
    work.mkdir()
    (work / "mode").write_text("gpu\n")
    (work / "env.json").write_text(json.dumps({"gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}))
    log = work / "memcheck.log"
    log.write_text("========= COMPUTE-SANITIZER\n========= Device not supported\n")
    gc.main(["record", "--work", str(work), "--out", str(out), "--step", "memcheck", "--status", "failed",
             "--seconds", "3", "--rc", "1", "--log", str(log)])
    out.mkdir(exist_ok=True)
    (out / "assigner_cuda.json").write_text(json.dumps(_assigner_result()))
    (work / "model-bf16-b2.json").write_text(json.dumps({"rows": [
        {"device": "cuda (NVIDIA H200)", "mode": "train", "size": "1333x800", "batch": 2, "depth": 50, "amp": "bf16",
         "channels_last": True, "median_s": 0.1, "iqr_pct": 2.0, "images_per_s": 20.0, "peak_gb": 5.0}]}))
    gc.main(["record", "--work", str(work), "--out", str(out), "--step", "env", "--status", "ok", "--seconds", "1",
             "--rc", "0", "--summary-dir", str(extra)])
    s = json.loads((out / "gpu-check.json").read_text())
    assert [st["step"] for st in s["steps"]] == ["env", "memcheck"]  # the pipeline's order
    assert s["steps"][1]["status"] == "skipped" and "Device not supported" in s["steps"][1]["detail"]
    t = s["assigner_target"]
    assert t["geometry"] is True and t["event_us"] == 42.0 and t["graph_us"] == 35.0
    assert t["meets_us_target"] is True and t["meets_speedup_target"] is True
    assert t["without_geometry_event_us"] == 60.0
    assert "vs_mmdet_v100" not in s["model"][0] and "mmdet_reference" not in s  # no figure from elsewhere
    md = (out / "gpu-check.md").read_text()
    assert "35 us by a captured CUDA graph" in md and "| 20.0 |" in md and "V100" not in md
    assert (extra / "gpu-check.md").read_text() == md


def test_target_misses_are_reported(gc):
    res = _assigner_result()
    res["rows"][1].update(event_us=80.0, graph_us=60.0, speedup_gpu=90.0)
    t = gc.assigner_summary(res)
    assert t["meets_us_target"] is False and t["meets_speedup_target"] is False


def test_script_parses_and_has_help():
    script = ROOT / "bench" / "gpu-check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--dry-run" in out and "compute-sanitizer" in out
