"""`atss train` end to end through the CLI, on a tiny generated dataset and a tiny model.

These are the user's paths: a short run writes checkpoints and logs; a run killed with SIGKILL
and resumed logs the same per-iteration losses as an uninterrupted run; two gloo processes give
the loss of one process with the same total batch; bad flags and files give one-line errors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from cli_run import TINY, atss, start
from multinode_util import common as two_process_flags


@pytest.fixture(scope="module")
def coco(small_coco):
    return small_coco


def train_records(work: Path) -> list[dict]:
    lines = (work / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_short_run_writes_checkpoints_logs_and_curves(coco, tmp_path):
    work = tmp_path / "run"
    proc = atss("train", "--coco", coco, "--work-dir", work, "--device", "cpu", "--epochs", 2,
                "--batch-per-gpu", 2, "--accumulate", 1, "--lr", 0.01, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "total batch 2, not the recipe's 16: lr 0.01 as given" in proc.stdout + proc.stderr
    for name in ("latest.pth", "epoch_1.pth", "epoch_2.pth", "config.json", "metrics.jsonl", "curves.png"):
        assert (work / name).is_file(), name
    config = json.loads((work / "config.json").read_text())
    assert config["depth"] == 18 and config["derived"]["total_batch"] == 2
    per_epoch = config["derived"]["iters_per_epoch"]
    assert 2 <= per_epoch <= 4  # 8 images in batches of 2, grouped by aspect ratio
    records = train_records(work)
    assert [r["iteration"] for r in records] == list(range(1, 2 * per_epoch + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    val = [r for r in map(json.loads, (work / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2] and "mAP" in val[0]
    latest = torch.load(work / "latest.pth", weights_only=False)
    assert latest["iteration"] == 2 * per_epoch and latest["epoch"] == 2
    assert "bbox_head.atss_cls.weight" in latest["state_dict"]
    # The epoch file is what users (and MMDetection) load: the model under state_dict.
    from atss_cli.model import build_atss, load_checkpoint

    model = build_atss(num_classes=config["derived"]["num_classes"], depth=18, fpn_channels=32,
                       head_channels=64, stacked_convs=1)
    load_checkpoint(model, work / "epoch_2.pth")
    # A second run of the same command finds the finished run and does not train again; an
    # evaluation that a kill cut short (its record missing) is run then.
    lines = (work / "metrics.jsonl").read_text().splitlines()
    (work / "metrics.jsonl").write_text("".join(
        line + "\n" for line in lines if not (json.loads(line)["kind"] == "val" and json.loads(line)["epoch"] == 2)))
    again = atss("train", "--coco", coco, "--work-dir", work, "--device", "cpu", "--epochs", 2,
                 "--batch-per-gpu", 2, "--accumulate", 1, "--lr", 0.01, *TINY)
    assert again.returncode == 0, again.stderr
    assert len(train_records(work)) == 2 * per_epoch
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "val"] == [1, 2]


def test_resume_refuses_another_model_and_no_resume_keeps_the_old_run(coco, tmp_path):
    work = tmp_path / "run"
    common = ["--device", "cpu", "--batch-per-gpu", 2, "--accumulate", 1, "--eval-interval", 0, *TINY]
    first = atss("train", "--coco", coco, "--work-dir", work, "--epochs", 1, *common)
    assert first.returncode == 0, first.stderr
    other = atss("train", "--coco", coco, "--work-dir", work, "--epochs", 2, *common, "--set", "stacked_convs=2")
    assert other.returncode == 2
    assert "stacked_convs=1" in other.stderr and "--no-resume" in other.stderr, other.stderr
    fresh = atss("train", "--coco", coco, "--work-dir", work, "--epochs", 1, "--no-resume", *common,
                 "--set", "stacked_convs=2")
    assert fresh.returncode == 0, fresh.stderr
    archives = list(work.glob("previous_run_*"))
    assert len(archives) == 1
    kept = archives[0]
    assert (kept / "latest.pth").is_file() and (kept / "epoch_1.pth").is_file() and (kept / "metrics.jsonl").is_file()
    assert torch.load(kept / "latest.pth", weights_only=False)["config"]["stacked_convs"] == 1
    assert torch.load(work / "latest.pth", weights_only=False)["config"]["stacked_convs"] == 2
    per_epoch = json.loads((work / "config.json").read_text())["derived"]["iters_per_epoch"]
    assert [r["iteration"] for r in train_records(work)] == list(range(1, per_epoch + 1))


def test_sigkill_then_resume_gives_the_same_losses(coco, tmp_path):
    common = ["--device", "cpu", "--epochs", 3, "--batch-per-gpu", 2, "--accumulate", 1, "--lr", 0.01,
              "--eval-interval", 0, *TINY, "--set", "save_every_iters=1"]
    # The uninterrupted run goes on beside the killed one (each process on one thread).
    straight = tmp_path / "straight"
    uninterrupted = start("train", "--coco", coco, "--work-dir", straight, *common)
    try:
        killed = tmp_path / "killed"
        child = start("train", "--coco", coco, "--work-dir", killed, *common, stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        metrics = killed / "metrics.jsonl"
        while time.time() < deadline:
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 4:  # into epoch 2
                break
            if child.poll() is not None:
                pytest.fail("training finished before it could be killed")
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert len(metrics.read_text().splitlines()) < 9
        _, err = uninterrupted.communicate(timeout=300)
        assert uninterrupted.returncode == 0, err
    finally:
        if uninterrupted.poll() is None:
            uninterrupted.kill()
            uninterrupted.communicate()

    resumed = atss("train", "--coco", coco, "--work-dir", killed, *common)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    a, b = train_records(straight), train_records(killed)
    per_epoch = json.loads((straight / "config.json").read_text())["derived"]["iters_per_epoch"]
    assert [r["iteration"] for r in b] == [r["iteration"] for r in a] == list(range(1, 3 * per_epoch + 1))
    for ra, rb in zip(a, b):
        assert rb["lr"] == pytest.approx(ra["lr"], rel=1e-12)
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5, abs=1e-6), ra["iteration"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_saves_the_position_and_the_same_command_resumes(coco, tmp_path, sig):
    common = ["--device", "cpu", "--epochs", 3, "--batch-per-gpu", 2, "--accumulate", 1, "--lr", 0.01,
              "--eval-interval", 0, *TINY, "--set", "save_every_iters=0"]
    work = tmp_path / "interrupted"
    # A background job (as CI may run us) inherits SIGINT ignored; a user's terminal does not.
    child = start("train", "--coco", coco, "--work-dir", work, *common,
                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = work / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        if child.poll() is not None:
            pytest.fail("training finished before it could be interrupted")
        time.sleep(0.05)
    child.send_signal(sig)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted at iteration"), err
    assert "Traceback" not in err
    state = torch.load(work / "latest.pth", weights_only=False)
    assert state["iteration"] == train_records(work)[-1]["iteration"]  # saved exactly where it stopped
    resumed = atss("train", "--coco", coco, "--work-dir", work, *common)
    assert resumed.returncode == 0, resumed.stderr
    per_epoch = json.loads((work / "config.json").read_text())["derived"]["iters_per_epoch"]
    assert [r["iteration"] for r in train_records(work)] == list(range(1, 3 * per_epoch + 1))


def test_two_gloo_processes_match_one_process(coco, two_process_reference, tmp_path):
    # BatchNorm frozen (norm_eval) so that per-process batch statistics do not differ. The two
    # processes (batch 1 each) are the first epoch of the session's reference run (conftest.py),
    # which has these flags with --epochs 2; the lr steps at epochs 8 and 11 leave epoch 1 alone.
    one = tmp_path / "one"
    p1 = atss("train", *two_process_flags(coco, epochs=1), "--work-dir", one, "--batch-per-gpu", 2, "--nproc", 1)
    assert p1.returncode == 0, p1.stderr
    per_epoch = json.loads((two_process_reference / "config.json").read_text())["derived"]["iters_per_epoch"]
    a = train_records(one)
    b = [r for r in train_records(two_process_reference) if r["iteration"] <= per_epoch]
    assert len(a) == len(b) >= 2
    for ra, rb in zip(a, b):
        for key in ("loss_cls", "loss_bbox", "loss_centerness"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), (ra["iteration"], key)


def test_two_gloo_processes_stopped_before_the_short_batch_resume_exactly(coco, two_process_reference, tmp_path):
    """7 usable images at a global batch of 2: iteration 4 is the epoch's short batch, where rank 1
    has no image. Stopped after iteration 3 and resumed, that batch is the new processes' first
    step; the losses after it equal the uninterrupted run's. (Rank 1's zero gradient once gave the
    five 0-dim Scale parameters one shared .grad, so after DDP's copy-back they all held one
    value and rank 1's weights left rank 0's, seen only at iteration 5.)"""
    from multinode_util import assert_same_losses, losses

    work = tmp_path / "cut"
    flags = [*two_process_flags(coco, epochs=2), "--work-dir", work, "--batch-per-gpu", 1, "--nproc", 2]
    first = atss("train", *flags, "--set", "max_iters=3")
    assert first.returncode == 0, first.stderr
    rest = atss("train", *flags, "--set", "max_iters=5")
    assert rest.returncode == 0, rest.stderr
    assert "resumed from" in rest.stdout + rest.stderr
    per_epoch = json.loads((work / "config.json").read_text())["derived"]["iters_per_epoch"]
    assert per_epoch == 4 and [i for i, _ in losses(work)] == [1, 2, 3, 4, 5]
    assert_same_losses(losses(two_process_reference)[:5], losses(work))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(coco, tmp_path):
    work = tmp_path / "nan"
    proc = atss("train", "--coco", coco, "--work-dir", work, "--device", "cpu", "--epochs", 2,
                "--batch-per-gpu", 2, "--accumulate", 1, "--lr", 1e30, "--eval-interval", 0, *TINY,
                "--set", "save_every_iters=1", "--set", "warmup_iters=0")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: non-finite loss at iteration"), proc.stderr
    assert "Traceback" not in proc.stderr
    state = torch.load(work / "latest.pth", weights_only=False)
    logged = train_records(work)
    # The checkpoint is the last iteration whose loss was finite; nothing after it was written.
    assert logged and state["iteration"] == logged[-1]["iteration"]
    assert all(r["loss"] == r["loss"] and abs(r["loss"]) < float("inf") for r in logged)


@pytest.mark.parametrize("args,needle", [
    (["--gpus", "1"], "CUDA device"),
    (["--gpus", "1", "--device", "cpu"], "--gpus needs CUDA"),
    (["--set", "bogus=1"], "no such config field"),
    (["--set", "lr=abc"], "not a valid float"),
    (["--amp", "fp8"], "--amp"),
    (["--epochs", "0"], "--epochs"),
    (["--load-from", "/no/such/ckpt.pth"], "does not exist"),
])
def test_bad_flags_are_one_line_errors(coco, tmp_path, args, needle):
    proc = atss("train", "--coco", coco, "--work-dir", tmp_path / "w", *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr


def test_missing_dataset_and_corrupt_checkpoint_are_one_line_errors(coco, tmp_path):
    proc = atss("train", "--coco", tmp_path, "--work-dir", tmp_path / "w", "--device", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    work = tmp_path / "corrupt"
    work.mkdir()
    (work / "latest.pth").write_bytes(b"not a checkpoint")
    proc = atss("train", "--coco", coco, "--work-dir", work, "--device", "cpu", *TINY)
    assert proc.returncode == 2
    assert "cannot read checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_runs_end_to_end_on_a_few_images(tmp_path):
    out = tmp_path / "demo"
    proc = atss("demo", "--out", out, "--num-train", 16, "--num-val", 4, "--epochs", 1, "--no-bench")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("demo: mAP@[.5:.95]=") and "(4 images," in last, proc.stdout
    assert (out / "train" / "epoch_1.pth").is_file()
    assert (out / "predictions" / "detections.json").is_file()
    assert len(list((out / "predictions").glob("*.jpg"))) == 4
