"""bench/side_by_side.py: its errors, its own side on a tiny model, and (when MMDetection's venv
exists) one tiny run against MMDetection. Timings are never asserted, only the work done."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import ROOT, assert_one_line_error

SCRIPT = ROOT / "bench" / "side_by_side.py"
MMDET_PYTHON = Path(os.environ.get("MMDET_PYTHON", Path.home() / ".cache" / "mmdet-oracle" / "venv" / "bin" / "python"))
TINY = ["--depth", "18", "--size", "96x64", "--rounds", "1", "--repeats", "1", "--warmup", "0", "--gap", "0"]

sys.path.insert(0, str(ROOT / "bench"))
import side_by_side  # noqa: E402


def bench(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATSS_DEBUG"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _has_export() -> bool:
    proc = subprocess.run([sys.executable, "-m", "atss_cli", "export", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def test_missing_mmdet_python_is_one_line(tmp_path):
    proc = bench("--mmdet-python", tmp_path / "nowhere" / "python", "--out-dir", tmp_path / "out")
    assert_one_line_error(proc, "--mmdet-python", "no such file", code=2)
    assert not (tmp_path / "out").exists()   # nothing written before the check


def test_python_without_mmdet_is_one_line(tmp_path):
    # our own venv has torch but no mmdet
    proc = bench("--mmdet-python", sys.executable, "--out-dir", tmp_path / "out")
    assert_one_line_error(proc, "cannot import MMDetection", "mmdet", code=2)


@pytest.mark.parametrize("args, needle", [
    (["--size", "100x70"], "multiples of 32"),
    (["--size", "big"], "--size"),
    (["--sides", "atss,detectron"], "detectron"),
    (["--cases", "fly"], "fly"),
    (["--rounds", "0"], ">= 1"),
    (["--onnx", "/nonexistent/model.onnx"], "no such file"),
])
def test_bad_arguments_are_one_line(args, needle, tmp_path):
    proc = bench("--sides", "atss", *args, "--out-dir", tmp_path)
    assert_one_line_error(proc, needle, code=2)


def test_inputs_are_deterministic_and_boxes_inside():
    a, ta = side_by_side.make_inputs(2, (96, 64), 80)
    b, tb = side_by_side.make_inputs(2, (96, 64), 80)
    assert a.shape == (2, 3, 64, 96) and str(a.dtype) == "uint8"
    assert (a == b).all() and ta == tb
    for boxes, labels in zip(ta["boxes"], ta["labels"]):
        assert len(boxes) == len(labels) == 8
        for x1, y1, x2, y2 in boxes:
            assert 0 <= x1 < x2 <= 96 and 0 <= y1 < y2 <= 64
        assert all(0 <= v < 80 for v in labels)


def test_summary_statistics():
    s = side_by_side.summarise([3.0, 1.0, 2.0, 4.0, 5.0], [2.0] * 5, batch=2)
    assert s["median_s"] == 3.0 and s["min_s"] == 1.0 and s["max_s"] == 5.0
    assert s["q1_s"] == 2.0 and s["q3_s"] == 4.0 and s["iqr_pct"] == pytest.approx(200 / 3)
    assert s["s_per_image"] == 1.5 and s["n"] == 5


def test_paired_ratios_pair_the_calls_of_each_round():
    # round 1: the host is fast (1.0 vs 0.5), round 2 twice as slow (2.0 vs 1.0), round 3 (3.0 vs 1.0)
    ref = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    ours = [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    p = side_by_side.paired_ratios(ref, ours, repeats=2)
    assert p["ratios"] == [2.0, 2.0, 3.0]
    assert p["median"] == 2.0 and p["q1"] == 2.0 and p["q3"] == 2.5
    assert side_by_side.paired_ratios(ref, ours[:4], repeats=2)["ratios"] == [2.0, 2.0]
    assert side_by_side.paired_ratios([], [], repeats=1)["ratios"] == []


def test_own_side_runs_and_writes_report(tmp_path):
    proc = bench("--sides", "atss", *TINY, "--predict-batch", "1", "--out-dir", tmp_path, "--name", "t")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    assert [(r["case"], r["batch"], r["side"]) for r in report["rows"]] == [("train", 2, "atss"), ("predict", 1, "atss")]
    for r in report["rows"]:
        assert len(r["times"]) == r["n"] == 1 and r["median_s"] > 0
    # the fixture weights spread scores over the threshold: post-processing has work to do
    assert report["checks"]["atss"]["loss"] > 0 and min(report["checks"]["atss"]["dets"]) > 0
    assert report["rows"][1]["dets"] == report["checks"]["atss"]["dets"][:1]
    md = (tmp_path / "t.md").read_text()
    assert "| train 96x64 x2 | atss (PyTorch) |" in md and md in proc.stdout
    assert report["environment"]["versions"]["atss"]["torch"]


@pytest.mark.slow
def test_onnxruntime_side_exports_and_matches(tmp_path):
    if not _has_export():
        pytest.skip("`atss export` is not available")
    proc = bench("--sides", "atss,onnxruntime", *TINY, "--cases", "predict", "--predict-batch", "1",
                 "--out-dir", tmp_path, "--name", "t")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    checks = report["checks"]
    assert checks["onnxruntime"]["dets"] == checks["atss"]["dets"] and min(checks["atss"]["dets"]) > 0
    assert report["environment"]["onnxruntime_imported_torch"] is False
    assert report["environment"]["versions"]["onnxruntime"]["opset"] == 17
    ort = [r for r in report["rows"] if r["side"] == "onnxruntime"]
    assert len(ort) == 1 and ort[0]["dets"] == checks["atss"]["dets"][:1]


@pytest.mark.slow
@pytest.mark.skipif(not MMDET_PYTHON.exists(), reason=f"no MMDetection venv at {MMDET_PYTHON} "
                    "(bash ../shared/mmdet-oracle/setup.sh builds one)")
def test_against_mmdetection_tiny(tmp_path):
    try:
        side_by_side.check_mmdet_python(MMDET_PYTHON)
    except side_by_side.BenchError as exc:   # e.g. a venv still being built
        pytest.skip(str(exc))
    sides = "atss,mmdet" + (",onnxruntime" if _has_export() else "")
    proc = bench("--mmdet-python", MMDET_PYTHON, "--sides", sides, *TINY, "--predict-batch", "1",
                 "--out-dir", tmp_path, "--name", "t", timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    checks = report["checks"]
    # the same weights and inputs: the same losses and detections on every side
    assert checks["mmdet"]["loss"] == pytest.approx(checks["atss"]["loss"], rel=1e-4)
    for side in checks:
        assert checks[side]["dets"] == checks["atss"]["dets"], side
    assert report["environment"]["versions"]["mmdet"]["mmdet"] == "3.3.0"
    rows = {(r["case"], r["side"]) for r in report["rows"]}
    assert {("train", "atss"), ("train", "mmdet"), ("predict", "atss"), ("predict", "mmdet")} <= rows
    assert any(r["mmdet_over_this"] for r in report["rows"] if r["side"] == "atss")
    assert all(r["paired"]["median"] > 0 for r in report["rows"] if r["side"] != "mmdet")
