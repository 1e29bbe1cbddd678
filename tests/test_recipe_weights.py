"""The recipe starts from torchvision's IMAGENET1K_V1 ResNet file, found by its exact name and
checked by content; a config that freezes stages or BatchNorm never silently starts from random
weights. No network: the files here are made by the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from atss_cli.config import TrainConfig, validate
from atss_cli.training.train import find_pretrained, pretrained_weights
from atss_cli.errors import AtssError
from atss_cli.model import build_atss_preset, load_backbone
from atss_cli.model.checkpoint import TORCHVISION_RESNET_FILES, check_imagenet_file, sha256_prefix
from cli_run import atss


def fake_resnet18(path: Path) -> Path:
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def genuine_name_for(path: Path, monkeypatch) -> Path:
    """Rename a made-up file to the V1 name its own sha256 would have, and make that the name
    the code expects for depth 18: the whole check (name, then content hash) runs unmocked."""
    name = f"resnet18-{sha256_prefix(path)}.pth"
    monkeypatch.setitem(TORCHVISION_RESNET_FILES, 18, name)
    return path.rename(path.with_name(name))


def test_exact_names_per_depth():
    assert TORCHVISION_RESNET_FILES == {18: "resnet18-f37072fd.pth", 34: "resnet34-b627a593.pth",
                                        50: "resnet50-0676ba61.pth", 101: "resnet101-63fe2227.pth"}


def test_right_name_wrong_content_is_refused(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    fake_resnet18(hub / "resnet18-f37072fd.pth")
    with pytest.raises(AtssError, match=r"sha256 starts [0-9a-f]{8}, not f37072fd.*download.pytorch.org"):
        find_pretrained(18, hub_dir=hub)
    with pytest.raises(AtssError, match="sha256"):
        find_pretrained(18, str(hub / "resnet18-f37072fd.pth"))


def test_the_genuine_file_is_found_checked_and_loaded(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    hub.mkdir()
    path = genuine_name_for(fake_resnet18(hub / "made.pth"), monkeypatch)
    assert find_pretrained(18, hub_dir=hub) == path
    assert find_pretrained(18, str(hub)) == path      # --pretrained FOLDER
    assert find_pretrained(18, str(path)) == path     # --pretrained FILE
    model = build_atss_preset("tiny", 3)
    load_backbone(model, path)
    assert torch.equal(model.backbone.conv1.weight, torch.load(path)["conv1.weight"])
    # One byte changed: the name still says the old hash, the content does not.
    data = bytearray(path.read_bytes())
    data[-100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(AtssError, match="damaged or replaced"):
        check_imagenet_file(path, 18)


def test_other_weights_of_the_family_name_the_file_wanted(tmp_path):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "resnet50-11ad3fa6.pth").write_bytes(b"torchvision's IMAGENET1K_V2")   # never opened
    with pytest.raises(AtssError, match="resnet50-11ad3fa6.pth is not the recipe's.*resnet50-0676ba61.pth"):
        find_pretrained(50, hub_dir=hub)
    with pytest.raises(AtssError, match="IMAGENET1K_V1 ResNet-50 weights, file resnet50-0676ba61.pth"):
        find_pretrained(50, str(hub / "resnet50-11ad3fa6.pth"))
    with pytest.raises(AtssError, match="no resnet50-0676ba61.pth in that folder"):
        find_pretrained(50, str(hub))


def test_a_frozen_config_never_starts_from_random_weights(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = TrainConfig()
    assert recipe.frozen_stages == 1 and recipe.norm_eval
    with pytest.raises(AtssError, match=r"put resnet50-0676ba61.pth .* in .*empty.*from_scratch"):
        pretrained_weights(recipe, hub_dir=empty)
    for frozen in (dict(frozen_stages=0, norm_eval=False), dict(frozen_stages=-1, norm_eval=True)):
        with pytest.raises(AtssError, match="from_scratch"):
            pretrained_weights(recipe.replace(**frozen), hub_dir=empty)
    assert pretrained_weights(recipe.replace(from_scratch=True), hub_dir=empty) is None
    # Nothing frozen (the demo's preset): random init is a choice, not a silent fallback.
    assert pretrained_weights(recipe.replace(frozen_stages=-1, norm_eval=False), hub_dir=empty) is None
    with pytest.raises(AtssError, match="contradict"):
        validate(recipe.replace(from_scratch=True, pretrained="x.pth"))


def test_the_demo_trains_from_scratch():
    from atss_cli.demo import demo_config

    cfg = demo_config(Path("d"), Path("w"), epochs=3, workers=0)
    assert cfg.from_scratch and not cfg.assumes_imagenet


def test_train_stops_with_one_line_saying_where_to_put_the_file(tmp_path):
    torch_home = tmp_path / "torch"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    proc = atss("train", "--coco", tmp_path, "--work-dir", tmp_path / "w", "--device", "cpu",
                env={"TORCH_HOME": str(torch_home)}, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: frozen_stages=1 norm_eval=True assume ImageNet weights: put "
                               "resnet50-0676ba61.pth"), lines[0]
    assert str(torch_home / "hub" / "checkpoints") in lines[0] and "--from-scratch" in lines[0]
