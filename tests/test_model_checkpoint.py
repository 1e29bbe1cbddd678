"""Loading detector checkpoints (ours and MMDetection's) and torchvision ImageNet backbones."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision

from atss_cli.errors import AtssError
from atss_cli.model import build_atss_preset, load_backbone, load_checkpoint


def tiny(num_classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    return build_atss_preset("tiny", num_classes)


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> None:
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


class MetaObject:
    """Stands for mmengine's ConfigDict / HistoryBuffer in an MMDetection checkpoint's meta."""

    def __init__(self):
        self.history = np.arange(5.0)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/atss_checkpoint_was_executed",))


def test_state_dict_round_trip(tmp_path):
    src, dst = tiny(seed=0), tiny(seed=1)
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    report = load_checkpoint(dst, tmp_path / "plain.pth")
    assert_same_state(src, dst)
    assert report.loaded == len(src.state_dict()) and not report.unexpected and not report


def test_our_checkpoint_dict_with_extras(tmp_path):
    src, dst = tiny(seed=0), tiny(seed=1)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}  # as saved from DDP
    state["data_preprocessor.mean"] = torch.zeros(3)
    torch.save({"state_dict": state, "optimizer": {}, "meta": {"epoch": 3}}, tmp_path / "ours.pth")
    report = load_checkpoint(dst, tmp_path / "ours.pth")
    assert_same_state(src, dst)
    assert report.unexpected == ["data_preprocessor.mean"] and report
    assert "extra" in str(report)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_mmdetection_style_checkpoint_with_meta_objects(tmp_path, zipfile):
    """MMDetection's zoo files (2020) are in the legacy format; newer ones are zip files."""
    src, dst = tiny(seed=0), tiny(seed=1)
    ckpt = {"meta": {"mmdet_version": "3.3.0", "cfg": MetaObject(), "dataset_meta": {"classes": ("a", "b")},
                     "seed": np.int64(7), "hist": np.ones(3)},
            "state_dict": src.state_dict(), "message_hub": MetaObject(), "evil": Evil()}
    torch.save(ckpt, tmp_path / "mmdet.pth", _use_new_zipfile_serialization=zipfile)
    if os.path.exists("/tmp/atss_checkpoint_was_executed"):
        os.remove("/tmp/atss_checkpoint_was_executed")
    report = load_checkpoint(dst, tmp_path / "mmdet.pth")
    assert_same_state(src, dst)
    assert report.placeholder_meta  # weights_only=True refused the meta: restricted unpickler used
    assert not os.path.exists("/tmp/atss_checkpoint_was_executed"), "the file ran code"


def test_missing_key_is_a_clear_error(tmp_path):
    src, dst = tiny(seed=0), tiny(seed=1)
    state = src.state_dict()
    del state["bbox_head.atss_reg.weight"], state["neck.fpn_convs.4.conv.bias"]
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    with pytest.raises(AtssError, match=r"lacks 2 .*bbox_head.atss_reg.weight") as info:
        load_checkpoint(dst, tmp_path / "partial.pth")
    assert "\n" not in str(info.value)


def test_skip_mismatched_class_conv(tmp_path):
    src, dst = tiny(num_classes=80, seed=0), tiny(num_classes=3, seed=1)
    cls_before = dst.bbox_head.atss_cls.weight.clone()
    torch.save({"state_dict": src.state_dict()}, tmp_path / "coco.pth")
    with pytest.raises(AtssError, match="skip_mismatched"):
        load_checkpoint(dst, tmp_path / "coco.pth")
    report = load_checkpoint(dst, tmp_path / "coco.pth", skip_mismatched=True)
    assert [s.split(":")[0] for s in report.skipped] == ["bbox_head.atss_cls.weight", "bbox_head.atss_cls.bias"]
    assert "atss_cls" in str(report) and report
    assert torch.equal(dst.bbox_head.atss_cls.weight, cls_before)
    assert_same_state(src, dst, skip="bbox_head.atss_cls")


def test_other_shape_mismatch_is_an_error_even_when_skipping(tmp_path):
    src = build_atss_preset("tiny", 5, head_channels=64)
    torch.save(src.state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(AtssError, match="does not fit"):
        load_checkpoint(tiny(), tmp_path / "narrow.pth", skip_mismatched=True)


def test_load_torchvision_backbone(tmp_path):
    torch.manual_seed(3)
    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18-f37072fd.pth")
    model = tiny()
    report = load_backbone(model, tmp_path / "resnet18-f37072fd.pth")
    ref = resnet.state_dict()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert report.loaded == len(model.backbone.state_dict()) and not report.unexpected
    with pytest.raises(AtssError, match="backbone"):
        load_backbone(build_atss_preset("tiny", 5, depth=34), tmp_path / "resnet18-f37072fd.pth")


def test_unreadable_files(tmp_path):
    with pytest.raises(AtssError, match="not found"):
        load_checkpoint(tiny(), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"this is not a checkpoint")
    with pytest.raises(AtssError, match="cannot read"):
        load_checkpoint(tiny(), tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(AtssError, match="not a checkpoint dict"):
        load_checkpoint(tiny(), tmp_path / "list.pth")
