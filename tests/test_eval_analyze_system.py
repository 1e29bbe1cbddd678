"""The analysis against the outside world: TIDE numbers equal to the tidecv package's (installed
in a venv of its own, with the opencv-python, seaborn and pandas it needs), and report.html
rendered in headless Chromium (Debian's package) with every picture loaded and no console
message. Both change the system, so they run with CI=true or ATSS_SYSTEM_TESTS=1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from locks import exclusive
from analysis_cases import REAL_DETS, REAL_GT, run_tidecv, system
from atss_cli.evaluation.analysis import analyze
from atss_cli.evaluation.analysis.inputs import load_detections, load_ground_truth
from atss_cli.evaluation.analysis.synthetic import error_case
from atss_cli.evaluation.analysis.tide import tide_breakdown

pytestmark = system


def _assert_same_as_tidecv(gt_path: Path, dets_path: Path) -> None:
    gt = load_ground_truth(gt_path)
    ours = tide_breakdown(gt, load_detections(dets_path, gt)).as_dict()
    ref = run_tidecv(gt_path, dets_path)
    assert abs(ours["ap50"] - ref["ap50"]) < 0.1
    for key in ("dap", "special_dap"):
        for name, value in ref[key].items():
            assert abs(ours[key][name] - value) < 0.1, (key, name, ours[key][name], value)
    assert ours["counts"] == ref["counts"]


def test_tide_equals_tidecv_on_real_case():
    _assert_same_as_tidecv(REAL_GT, REAL_DETS)


def test_tide_equals_tidecv_on_generated_case(tmp_path):
    case = error_case(tmp_path)
    _assert_same_as_tidecv(case["gt"], case["dets"])


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and apt-get as root is not available")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        with exclusive("apt-get"):  # dpkg takes one installer at a time (test_slurm's may run beside)
            for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
                if shutil.which("chromium"):
                    break
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
                if proc.returncode:
                    pytest.skip(f"{' '.join(cmd)} failed: {proc.stderr[-300:]}")
        exe = shutil.which("chromium")
    return exe


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]


def test_report_renders_in_chromium_with_every_picture_and_no_console_message(tmp_path):
    exe = _chromium()
    case = error_case(tmp_path / "case")
    out = tmp_path / "analysis"
    analyze(case["gt"], case["dets"], out, images_dir=case["images"])
    url = (out / "report.html").as_uri()
    dom = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile1'}", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    total = int(re.search(r'data-images-total="(\d+)"', body).group(1))
    assert total >= 5 + 1   # five charts and the gallery
    assert f'data-images-loaded="{total}"' in body and 'data-images-failed="0"' in body, body
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    shot_dir = Path(os.environ.get("ATSS_SCREENSHOT_DIR", tmp_path))
    shot_dir.mkdir(parents=True, exist_ok=True)
    shot = shot_dir / "report.png"
    proc = subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--hide-scrollbars",
                           "--window-size=1280,4000", f"--screenshot={shot}", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and shot.stat().st_size > 10_000, proc.stderr[-2000:]
