"""The epoch's leftovers in training, as MMDetection's AspectRatioBatchSampler yields them.

16 photos of two aspect ratios (10 landscape, 6 portrait) at 4 images a batch: 2 + 2 images are
left over in the two aspect groups; they are joined into a fourth batch, so one epoch trains on
all 16 (the rule before trained on 12: `drop_last=true` keeps it). An epoch's short last batch
splits across processes by rank slices, so a process may get no image and still joins every
collective: 1 process x 4, 2 processes x 2 (gloo) and 1 process x 2 x accumulate 2 train the
same weights. A single-image batch trains with BatchNorm in train mode. A resume is exact, and a
latest.pth written before drop_last existed resumes under the old rule, saying so in one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_run import atss

TINY = dict(depth=18, fpn_channels=64, head_channels=64, stacked_convs=1, scale=(128, 96), workers=0,
            warmup_iters=2, eval_interval=0, val_split="", from_scratch=True, device="cpu",
            save_every_iters=0, log_interval=1, checkpoint_interval=0)
TINY_SET = ["--set", "depth=18", "--set", "fpn_channels=64", "--set", "head_channels=64",
            "--set", "stacked_convs=1", "--set", "scale=128,96", "--set", "workers=0",
            "--set", "warmup_iters=2", "--set", "val_split=", "--set", "save_every_iters=0",
            "--set", "checkpoint_interval=0", "--set", "flip_prob=0", "--from-scratch", "--device", "cpu",
            "--eval-interval", 0]


class Lines:
    def __init__(self):
        self.lines = []

    def info(self, message):
        self.lines.append(message)

    def start(self, **kwargs):
        pass

    def iteration(self, record):
        pass

    def evaluated(self, record):
        pass

    def close(self):
        pass


def photos(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """A COCO-layout folder of photos of the given (w, h), two boxes each, categories 1 and 2."""
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes, start=1):
        pixels = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
        for cat in (1, 2):
            bw, bh = int(rng.integers(w // 5, w // 2)), int(rng.integers(h // 5, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            pixels[y:y + bh, x:x + bw] = (220, 90, 30) if cat == 1 else (30, 170, 230)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, bw, bh],
                         "area": bw * bh, "iscrowd": 0})
        name = f"{i:012d}.jpg"
        Image.fromarray(pixels).save(root / "train2017" / name, quality=95)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
    cats = [{"id": 1, "name": "orange"}, {"id": 2, "name": "blue"}]
    (root / "annotations" / "instances_train2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def train_records(work: Path) -> list[dict]:
    lines = (work / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def sixteen(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("sixteen"), [(160, 120)] * 10 + [(120, 160)] * 6)


def test_one_epoch_of_16_photos_at_batch_4_trains_on_all_16(sixteen, tmp_path):
    from atss_cli.config import TrainConfig
    from atss_cli.data import build_train_loader, load_split
    from atss_cli.training.train import train

    cfg = TrainConfig(coco=str(sixteen), work_dir=str(tmp_path / "run"), batch_per_gpu=4, accumulate=1,
                      epochs=1, **TINY)
    summary = train(cfg, Lines())
    assert summary["iteration"] == 4 and summary["derived"]["iters_per_epoch"] == 4
    assert [r["step"] for r in train_records(tmp_path / "run")] == [1, 2, 3, 4]
    # What that loader gives the epoch: every photo once, the last batch the two groups' leftovers.
    loader, sampler = build_train_loader(load_split(sixteen, "train2017"), batch_per_rank=4, workers=0,
                                         scale=(128, 96), seed=cfg.seed)
    sampler.set_epoch(0)
    batches = [b["indices"] for b in loader]
    assert sorted(i for b in batches for i in b) == list(range(16)) and len(batches) == 4
    # drop_last=true keeps the rule before: 3 batches, 12 photos.
    old = train(cfg.replace(work_dir=str(tmp_path / "old"), drop_last=True), Lines())
    assert old["iteration"] == 3


@pytest.fixture(scope="module")
def five(tmp_path_factory) -> Path:
    """Five landscape photos: at a global batch of 4 the epoch is one batch of 4 and one of 1."""
    return photos(tmp_path_factory.mktemp("five"), [(160, 120)] * 5, seed=1)


def _weights(work: Path) -> dict:
    state = torch.load(work / "latest.pth", weights_only=False)
    return state["state_dict"], state["iteration"]


@pytest.fixture(scope="module")
def seven(tmp_path_factory) -> Path:
    """Seven landscape photos: at a global batch of 2 the epoch is 2, 2, 2, 1 images."""
    return photos(tmp_path_factory.mktemp("seven"), [(160, 120)] * 7, seed=2)


def test_a_process_with_no_image_joins_and_the_weights_equal_one_process(seven, tmp_path):
    """1 x 4 trains batches of 4 and 3; 1 x 2 x accumulate 2 the same images as micro-batches
    [2, 2], [2, 1]; 2 gloo processes x 1 x accumulate 2 too, where rank 1 has no image in the
    last micro-batch (it joins the normaliser, loss and gradient all_reduces with zeros)."""
    from atss_cli.config import TrainConfig
    from atss_cli.training.train import train

    cfg = TrainConfig(coco=str(seven), work_dir=str(tmp_path / "1x4"), batch_per_gpu=4, accumulate=1, epochs=1,
                      **{**TINY, "norm_eval": True, "frozen_stages": -1, "warmup_iters": 0, "flip_prob": 0.0})
    result = {"1 x 4": train(cfg, Lines())["work_dir"],
              "1 x 2 x accumulate 2": train(cfg.replace(work_dir=str(tmp_path / "acc"), batch_per_gpu=2,
                                                        accumulate=2), Lines())["work_dir"]}
    work = tmp_path / "gloo"
    proc = atss("train", "--coco", seven, "--work-dir", work, *TINY_SET, "--epochs", 1, "--set", "norm_eval=true",
                "--set", "frozen_stages=-1", "--set", "warmup_iters=0", "--batch-per-gpu", 1, "--accumulate", 2,
                "--nproc", 2, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result["2 gloo x 1 x accumulate 2"] = work
    weights = {name: _weights(Path(w)) for name, w in result.items()}
    ref, iters = weights.pop("1 x 4")
    assert iters == 2
    for name, (other, n) in weights.items():
        assert n == 2, name
        for key, value in ref.items():
            if value.is_floating_point():
                torch.testing.assert_close(other[key], value, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {key}: {m}")


def test_single_image_batch_trains_with_batchnorm_in_train_mode(five, tmp_path):
    from atss_cli.config import TrainConfig
    from atss_cli.training.train import train

    cfg = TrainConfig(coco=str(five), work_dir=str(tmp_path / "bn"), batch_per_gpu=4, accumulate=1, epochs=1,
                      **TINY, norm_eval=False, frozen_stages=-1)
    summary = train(cfg, Lines())
    records = train_records(tmp_path / "bn")
    assert summary["iteration"] == 2 and all(np.isfinite(r["loss"]) for r in records)


@pytest.fixture
def one_thread():
    """Bit-for-bit comparisons of two trainings run them on one thread: with two, a CPU
    reduction's order (the convolution biases' gradients) varies from run to run, so even two
    uninterrupted runs differ in the last bit about one time in four."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_exact_across_the_short_batch_and_an_old_latest_keeps_its_rule(five, tmp_path, one_thread):
    from atss_cli.config import TrainConfig
    from atss_cli.training.train import train

    cfg = TrainConfig(coco=str(five), work_dir=str(tmp_path / "full"), batch_per_gpu=4, accumulate=1, epochs=2,
                      **TINY)
    train(cfg, Lines())
    full, n = _weights(tmp_path / "full")
    assert n == 4
    # Stopped before the first epoch's short batch, then resumed: the same weights bit for bit.
    part = cfg.replace(work_dir=str(tmp_path / "part"))
    train(part.replace(max_iters=1), Lines())
    train(part, Lines())
    resumed, n = _weights(tmp_path / "part")
    assert n == 4
    for key, value in full.items():
        assert torch.equal(resumed[key], value), key

    # A latest.pth from before drop_last existed (no such entry), written at the end of epoch 1
    # (one batch of 4, the fifth photo dropped): the resume keeps that rule for epoch 2 (2 iterations
    # in all, not 1 + 2) and says so in one line.
    old = cfg.replace(work_dir=str(tmp_path / "old"), drop_last=True)
    train(old.replace(max_iters=1), Lines())
    latest = tmp_path / "old" / "latest.pth"
    state = torch.load(latest, weights_only=False)
    del state["drop_last"]
    state["config"].pop("drop_last")
    torch.save(state, latest)
    lines = Lines()
    summary = train(old.replace(drop_last=False), lines)
    notes = [line for line in lines.lines if "drop_last" in line]
    assert len(notes) == 1 and "before the drop_last setting existed" in notes[0], lines.lines
    assert "resuming under its rule, drop_last=true" in notes[0]
    assert summary["iteration"] == 2 and summary["derived"]["drop_last"] is True
    assert [r["step"] for r in train_records(tmp_path / "old")] == [1, 1]


def test_an_empty_share_gives_each_parameter_its_own_zero_gradient():
    """The zero loss of a process with no image reaches every trained parameter with a zero
    gradient of its own: DDP copies each reduced bucket back into .grad, so two parameters whose
    .grad shares storage (the 0-dim Scale parameters under p.sum() * 0) end up with one value."""
    from atss_cli.model import build_atss
    from atss_cli.training.step import LOSS_KEYS, empty_share_losses

    model = build_atss(num_classes=3, depth=18, fpn_channels=32, head_channels=64, stacked_convs=1)
    losses = empty_share_losses(model)
    assert sorted(losses) == sorted(LOSS_KEYS)
    sum(losses.values()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and not p.grad.any() for p in trained)
    assert len({p.grad.data_ptr() for p in trained}) == len(trained)
