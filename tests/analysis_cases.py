"""Shared helpers for the analysis tests: the real-data files, the system-test gate, the tidecv venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from locks import exclusive

DATA = Path(__file__).resolve().parent / "data" / "analysis"
REAL_GT = DATA / "instances_val2014_100.json"
REAL_DETS = DATA / "instances_val2014_fakebbox100_results.json"
TIDECV = "tidecv==1.0.1"
CACHE = Path(os.environ.get("ATSS_TEST_CACHE", Path.home() / ".cache" / "atss-tests"))


def system_tests_enabled() -> bool:
    return os.environ.get("CI") == "true" or os.environ.get("ATSS_SYSTEM_TESTS") == "1"


system = [pytest.mark.system,
          pytest.mark.skipif(not system_tests_enabled(),
                             reason="installs packages or system packages: set ATSS_SYSTEM_TESTS=1 (CI sets CI=true)")]


def tidecv_python() -> Path:
    """A venv with tidecv (and its opencv-python, seaborn, pandas) apart from ours, made once in
    the cache folder and reused; pytest.skip with the reason where pip cannot make it."""
    with exclusive("tidecv-venv"):  # two xdist workers would --clear each other's venv
        return _make_tidecv_venv(CACHE / "tidecv-1.0.1")


def _make_tidecv_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if (venv / ".ready").exists():
        return py
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(py), "-m", "pip", "install", "-q", TIDECV], check=True, capture_output=True,
                       text=True, timeout=900)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot install {TIDECV} into {venv}: {getattr(exc, 'stderr', '') or exc}"[-400:])
    (venv / ".ready").write_text("ok\n")
    return py


TIDE_SCRIPT = r'''
import json, sys
from tidecv import TIDE, datasets
tide = TIDE()
run = tide.evaluate(datasets.COCO(sys.argv[1]), datasets.COCOResult(sys.argv[2]), mode=TIDE.BOX)
errors = tide.get_all_errors()
name = list(errors["main"])[0]
print(json.dumps({"ap50": run.ap, "dap": errors["main"][name], "special_dap": errors["special"][name],
                  "counts": {k.short_name: v for k, v in run.count_errors().items()}}))
'''


def run_tidecv(gt_path: Path, dets_path: Path) -> dict:
    """tidecv's numbers on two files (always paths: without one it downloads COCO)."""
    py = tidecv_python()
    env = {**os.environ, "TIDE_PATH": str(CACHE / "tide-data"), "MPLBACKEND": "Agg"}
    out = subprocess.run([str(py), "-c", TIDE_SCRIPT, str(gt_path), str(dets_path)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
