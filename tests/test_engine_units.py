"""Config overrides, the lr schedule and atomic checkpoint writes, against hand-computed values."""

import json
import os
import subprocess
import sys

import pytest
import torch

from atss_cli.config import TrainConfig, apply_overrides, from_dict, to_json, validate
from atss_cli.training.checkpoint import atomic_save
from atss_cli.training.schedule import accumulation_steps, learning_rate
from atss_cli.errors import AtssError


def test_overrides_parse_by_field_type():
    cfg = apply_overrides(TrainConfig(), ["lr=0.02", "norm_eval=false", "scale=640,480", "milestones=3,5",
                                          "depth=18", "amp=bf16"])
    assert cfg.lr == 0.02 and cfg.norm_eval is False and cfg.scale == (640, 480)
    assert cfg.milestones == (3, 5) and cfg.depth == 18 and cfg.amp == "bf16"
    validate(cfg)


@pytest.mark.parametrize("pair,needle", [
    ("learning_rate=1", "no such config field"),
    ("lr=fast", "not a valid float"),
    ("scale=640", "not a valid"),
    ("norm_eval=maybe", "not a valid bool"),
    ("lr", "key=value"),
])
def test_bad_overrides_name_the_problem(pair, needle):
    with pytest.raises(AtssError, match=needle):
        apply_overrides(TrainConfig(), [pair])


@pytest.mark.parametrize("change,needle", [
    ({"depth": 42}, "depth"), ({"amp": "fp8"}, "amp"), ({"flip_prob": 1.5}, "flip_prob"),
    ({"milestones": (11, 8)}, "milestones"), ({"epochs": 0}, "epochs"), ({"scale": (16, 16)}, "scale"),
])
def test_validate_rejects_impossible_values(change, needle):
    with pytest.raises(AtssError, match=needle):
        validate(TrainConfig().replace(**change))


def test_config_json_round_trip():
    cfg = TrainConfig().replace(scale=(320, 320), milestones=(2,), lr=0.5)
    assert from_dict(json.loads(to_json(cfg))) == cfg


def test_warmup_and_steps_match_the_1x_recipe():
    kw = dict(warmup_iters=500, warmup_ratio=0.001, milestones=(8, 11))
    assert learning_rate(0.01, iteration=0, epoch=0, **kw) == pytest.approx(1e-5)
    # MMEngine's LinearLR(end=500) rises over 499 steps: 1.0 from iteration 499 on.
    assert learning_rate(0.01, iteration=250, epoch=0, **kw) == pytest.approx(0.01 * (0.001 + 0.999 * 250 / 499))
    assert learning_rate(0.01, iteration=499, epoch=0, **kw) == 0.01
    assert learning_rate(0.01, iteration=500, epoch=0, **kw) == pytest.approx(0.01)
    assert learning_rate(0.01, iteration=60000, epoch=7, **kw) == pytest.approx(0.01)
    assert learning_rate(0.01, iteration=60001, epoch=8, **kw) == pytest.approx(0.001)
    assert learning_rate(0.01, iteration=85000, epoch=11, **kw) == pytest.approx(0.0001)


def test_accumulation_keeps_the_total_batch():
    assert accumulation_steps(0, base_batch=16, batch_per_gpu=2, world_size=8) == 1
    assert accumulation_steps(0, base_batch=16, batch_per_gpu=2, world_size=2) == 4
    assert accumulation_steps(0, base_batch=16, batch_per_gpu=2, world_size=1) == 8
    assert accumulation_steps(3, base_batch=16, batch_per_gpu=2, world_size=1) == 3


def test_atomic_save_never_leaves_a_torn_file(tmp_path):
    target = tmp_path / "latest.pth"
    atomic_save({"x": torch.arange(3)}, target)
    # A writer killed mid-write (simulated by a child that dies inside torch.save) leaves the old file.
    code = (
        "import os, torch\n"
        "from atss_cli.training import checkpoint as c\n"
        "class Boom:\n"
        "    def __reduce__(self):\n"
        "        os._exit(9)\n"
        f"c.atomic_save({{'x': torch.arange(5), 'boom': Boom()}}, {str(target)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == 9
    assert torch.load(target)["x"].tolist() == [0, 1, 2]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "latest.pth"]
    assert all(name.endswith(".tmp") for name in leftovers)  # a temp file at most, never the target torn
