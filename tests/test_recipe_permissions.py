"""Files the tool writes get the permissions the user's umask gives, as any other program's
(an atomic write through mkstemp alone would leave them 0600, readable by the owner only)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli_run import atss

ROOT = Path(__file__).resolve().parents[1]

WRITE_ALL = """
import sys, torch
from pathlib import Path
from atss_cli.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from atss_cli.training.checkpoint import atomic_save
out = Path(sys.argv[1])
atomic_write_text(out / "config.json", "{}")
atomic_write_json(out / "sub" / "detections.json", [])
atomic_write_bytes(out / "picture.jpg", b"\\xff\\xd8")
atomic_save({"x": torch.zeros(2)}, out / "latest.pth")
"""


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, umask):
    proc = subprocess.run([sys.executable, "-c", WRITE_ALL, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=lambda: os.umask(umask), timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in ("config.json", "sub/detections.json", "picture.jpg", "latest.pth"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o666 & ~umask, f"{name}: {oct(mode)} under umask {oct(umask)}"


def test_a_rewritten_file_keeps_its_own_mode(tmp_path):
    from atss_cli.atomic import atomic_write_text

    target = tmp_path / "metrics.jsonl"
    target.write_text("old\n")
    target.chmod(0o640)
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_generated_dataset_and_cache_folders_follow_the_umask(tmp_path, umask):
    # Both are filled in a temporary folder (mkdtemp: 0700) and renamed into place.
    root = tmp_path / "shapes"
    proc = atss("prepare", "--synthetic", root, "--num-train", 2, "--num-val", 1, "--size", 64,
                preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    assert any(".atss_cache" in p.parts for p in folders), folders
    for folder in folders:
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode == 0o777 & ~umask, f"{folder}: {oct(mode)} under umask {oct(umask)}"
