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
    assert "--dry-run" in out and "compute-sanitizer" in out and "train-bf16-b8" in out and "sanitizers" in out


def _train_result(batch, ips, wait, amp="bf16", device="cuda"):
    return {"setting": {"device": device, "device_name": "NVIDIA H200", "batch": batch, "depth": 50, "amp": amp,
                        "channels_last": amp == "bf16", "workers": 2, "data": {"source": "generated", "size": "640x480"}},
            "images_per_s": ips, "step_s": {"median": batch / ips, "iqr_pct": 3.0}, "loader_wait_share": wait,
            "host_syncs_per_step": 4.0, "achieved_tflops": 50.0, "peak_fraction": 0.05, "peak_memory_gb": 9.0,
            "profile": [{"name": "aten::convolution_backward"}]}


def test_train_and_data_sections(gc, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "mode").write_text("gpu\n")
    (work / "train-bf16-b2.json").write_text(json.dumps(_train_result(2, 85.0, 0.01)))
    (work / "train-bf16-b8.json").write_text(json.dumps(_train_result(8, 150.0, 0.2)))
    (work / "train-fp32-b2.json").write_text(json.dumps(_train_result(2, 40.0, 0.01, amp="none")))
    (work / "data.json").write_text(json.dumps({
        "setting": {"target_ips": 200, "data": {"size": "640x480"}}, "environment": {"affinity": 16},
        "stages": [{"stage": "sample", "ms_per_image": 16.0, "images_per_s": 62.5, "note": "TrainDataset"}],
        "loaders": [{"workers": 4, "batch": 8, "images_per_s": 190.0}], "workers_needed": 4,
        "gpu_decoder": {"decoder": "torchvision-gpu", "device": "NVIDIA H200", "batch": 16, "images_per_s": 2000.0,
                        "decode_vs_opencv": {"max_abs": 3.0, "mean_abs": 0.4},
                        "resize_vs_opencv": {"max_abs": 1.0, "mean_abs": 0.1},
                        "decode_resize_vs_opencv": {"max_abs": 3.0, "mean_abs": 0.45}}}))
    gc.main(["write", "--work", str(work), "--out", str(out)])
    s = json.loads((out / "gpu-check.json").read_text())
    rows = {r["run"]: r for r in s["train"]}
    assert rows["train-bf16-b2"]["meets_ips_target"] is True and rows["train-bf16-b2"]["meets_loader_target"] is True
    assert rows["train-bf16-b8"]["target_ips"] == 200 and rows["train-bf16-b8"]["meets_ips_target"] is False
    assert rows["train-bf16-b8"]["meets_loader_target"] is False
    assert "target_ips" not in rows["train-fp32-b2"]  # fp32 is no target case
    assert s["data"]["workers_needed"] == 4 and s["train_runs"]["train-bf16-b8"]["images_per_s"] == 150.0
    md = (out / "gpu-check.md").read_text()
    assert "| train-bf16-b2 | NVIDIA H200 | 2 | R50 bf16 NHWC | 2 | 85 |" in md
    assert "80 images/s: met; loader < 5%: met" in md and "200 images/s: not met; loader < 5%: not met" in md
    assert "needs 4 OpenCV workers" in md and "resize max 1 / mean 0.100" in md
    assert "NCCL and eight loaders, not measured" in md
    # A rehearsal's rows are never held against the GPU targets.
    (work / "mode").write_text("rehearsal\n")
    gc.main(["write", "--work", str(work), "--out", str(out)])
    s = json.loads((out / "gpu-check.json").read_text())
    assert all("target_ips" not in r for r in s["train"])


def test_script_steps_and_skip_alias():
    text = (ROOT / "bench" / "gpu-check.sh").read_text()
    timed = text[text.index("# ---- timings"):]
    gpu = timed[:timed.index("else")]
    order = [gpu.index(f"serial_step {name} ") for name in
             ("train-bf16-b2", "train-bf16-b8", "data", "model-bf16-b2", "model-bf16-b8", "train-fp32-b2",
              "model-fp32-b2", "assigner")]
    assert order == sorted(order)
    # `--skip sanitizers` expands to the four tools (run the expansion line alone).
    line = next(ln for ln in text.splitlines() if ln.startswith('[[ $SKIP == *",sanitizers,"* ]]'))
    got = subprocess.run(["bash", "-c", f'SKIP=",sanitizers,assigner,"; {line}; echo "$SKIP"'],
                         capture_output=True, text=True, check=True).stdout
    for name in ("memcheck", "racecheck", "synccheck", "initcheck", "assigner"):
        assert f",{name}," in got
    assert '--detail="$5"' in text  # a detail such as "--skip" is the option's value, not an option
    budget = int(next(ln for ln in text.splitlines() if ln.startswith("BUDGET=")).split(":-")[1].rstrip("}"))
    assert budget <= 480  # one device call of at most 8 minutes
