"""Preemption (issue 10, part 4): a stop signal to a multi-process run, through the CLI.

`atss train --nproc 2 --device cpu` (two gloo processes) on a tiny generated dataset. SIGUSR1
(SLURM's warning signal) or SIGTERM reaches one training process only (or the launcher, which
passes it on); both must stop after the same iteration and save one latest.pth there, as a
normal save would. Outside SLURM that ends
like Ctrl-C (exit 130, the same command resumes, with the per-iteration losses of a run that was
never stopped); with SLURM_JOB_ID set, rank 0 asks `scontrol requeue <job>` (a stand-in script
that records its arguments; the real SLURM test is test_train_slurm's) and the run exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cli_run import TINY, WORKER_MODULE, atss, start

TWO_PROCS = ["--device", "cpu", "--nproc", 2, "--batch-per-gpu", 1, "--lr", 0.01,
             "--eval-interval", 0, *TINY]


def synthetic(tmp_path_factory, num_train: int) -> Path:
    root = tmp_path_factory.mktemp(f"synthetic{num_train}")
    proc = atss("prepare", "--synthetic", root, "--num-train", num_train, "--num-val", 2, "--seed", 3,
                "--size", 128)
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """16 images: 8 iterations an epoch for 2 processes x 1 image, so a stop lands inside one."""
    return synthetic(tmp_path_factory, 16)


@pytest.fixture(scope="module")
def coco_one_step(tmp_path_factory):
    """4 images; with --accumulate 4 every iteration is an epoch (its 1-2 micro-steps per process
    accumulated), so a stop is honoured at an epoch's end."""
    return synthetic(tmp_path_factory, 4)


def train_records(work: Path) -> list[dict]:
    return [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def worker_ranks(parent: int) -> dict[int, int]:
    """{rank: pid} of the training processes torchrun started under `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != parent or WORKER_MODULE.encode() not in (entry / "cmdline").read_bytes():
                continue
            env = dict(item.split(b"=", 1) for item in (entry / "environ").read_bytes().split(b"\0") if b"=" in item)
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        found[int(env[b"RANK"])] = int(entry.name)
    return found


def signal_one_rank_mid_run(args: list, work: Path, rank: int | None, sig: int, env: dict | None = None,
                            after: int = 2) -> subprocess.CompletedProcess:
    """Start `atss train ARGS`, and once `after` iterations are logged send `sig` to training
    process `rank` alone (None: to `atss train` itself, torchrun's launcher, which passes it on);
    returns the finished run."""
    child = start("train", *args, "--work-dir", work, env=env)
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= after):
        if child.poll() is not None or time.time() > deadline:
            child.kill()
            out, err = child.communicate()
            pytest.fail(f"training ended before it could be signalled:\n{out}\n{err}")
        time.sleep(0.05)
    os.kill(child.pid if rank is None else worker_ranks(child.pid)[rank], sig)
    out, err = child.communicate(timeout=240)
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def test_sigusr1_to_one_rank_stops_both_at_one_iteration_and_the_rerun_continues_exactly(coco, tmp_path):
    args = ["--coco", coco, "--epochs", 1, "--accumulate", 1, *TWO_PROCS]
    straight = tmp_path / "straight"
    proc = atss("train", *args, "--work-dir", straight)
    assert proc.returncode == 0, proc.stderr
    expected = train_records(straight)

    work = tmp_path / "preempted"
    stopped = signal_one_rank_mid_run(args, work, rank=1, sig=signal.SIGUSR1)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr
    state = torch.load(work / "latest.pth", weights_only=False)
    done = train_records(work)
    # One checkpoint, inside the epoch, where rank 0 (not signalled) logged its last iteration ...
    assert state["iteration"] == done[-1]["iteration"] < expected[-1]["iteration"]
    assert (state["epoch"], state["step"]) == (0, done[-1]["step"]) and state["step"] > 0
    assert state["sampler"] == {"epoch": 0, "step": state["step"]}
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2  # saved by both ranks together
    assert not list(work.glob(".*.tmp"))
    # ... and both ranks say they stopped there, rank 1 because of its signal.
    # (searched in the whole of stderr: the two ranks write to it at once and their lines can meet)
    assert f"error: [rank 1] interrupted at iteration {state['iteration']} (SIGUSR1)" in stopped.stderr
    assert f"error: [rank 0] interrupted at iteration {state['iteration']} (" in stopped.stderr
    assert stopped.stderr.count("interrupted at iteration") == 2, stopped.stderr

    resumed = atss("train", *args, "--work-dir", work)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {work / 'latest.pth'}" in resumed.stdout
    got = train_records(work)
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    for a, b in zip(expected, got):
        assert (b["lr"], b["loss_cls"], b["loss_bbox"], b["loss_centerness"]) == pytest.approx(
            (a["lr"], a["loss_cls"], a["loss_bbox"], a["loss_centerness"]), rel=1e-6, abs=1e-7), a["iteration"]


@pytest.mark.parametrize("rank, sig", [(0, signal.SIGTERM), (None, signal.SIGUSR1)],
                         ids=["sigterm-to-rank-0", "sigusr1-to-the-launcher"])
def test_under_slurm_rank_0_requeues_the_job_and_the_run_exits_0(coco_one_step, tmp_path, rank, sig):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    fake = bin_dir / "scontrol"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    work = tmp_path / "run"
    proc = signal_one_rank_mid_run(["--coco", coco_one_step, "--epochs", 20, "--accumulate", 4, *TWO_PROCS], work,
                                   rank=rank, sig=sig, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert calls.read_text() == "requeue 4242\n"  # once: rank 0 only
    state = torch.load(work / "latest.pth", weights_only=False)
    assert state["iteration"] == train_records(work)[-1]["iteration"] < 20
    assert (state["epoch"], state["step"]) == (state["iteration"], 0)  # an epoch's end: 1 iteration each
    assert isinstance(state["rng"], list) and len(state["rng"]) == 2
    assert (work / f"epoch_{state['epoch']}.pth").is_file()  # the epoch end's save, as without a signal
    # Rank 0 names the signal when it got it itself; it always says where it stopped.
    name = sig.name if rank in (0, None) else "a stop signal to another process"
    assert f"preempted at iteration {state['iteration']} ({name})" in proc.stdout, proc.stdout
    assert "SLURM job 4242 requeued" in proc.stdout


def test_a_failed_requeue_is_one_line(tmp_path, monkeypatch):
    from atss_cli.training.preemption import request_requeue
    from atss_cli.errors import AtssError

    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'scontrol: error: Requeue of job 7 not allowed' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AtssError, match=r"`scontrol requeue 7` failed \(exit 1: scontrol: error: Requeue of job 7 "
                                        r"not allowed\); submit the same job again to resume from latest.pth"):
        request_requeue("7")
    fake.unlink()
    with pytest.raises(AtssError, match="no scontrol on PATH"):
        request_requeue("7")
