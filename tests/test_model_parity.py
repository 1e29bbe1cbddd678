"""Parity with MMDetection 3.3.0's ATSS R50-FPN (the yardstick of issue 3).

`tests/data/expected.pt` holds what MMDetection computed for its model with deterministic weights
(formula in ../shared/reference/mmdet_atss/README.md, reproduced by `deterministic_state_dict`)
on a fixed batch of two images: raw head outputs, assignments, losses and predictions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from atss_cli.model import build_atss
from atss_cli.model.fixture_weights import deterministic_state_dict

DATA = Path(__file__).parent / "data"
REL_TOL = 1e-4
SCORE_TIE = 1e-5
BOX_TOL = 1e-3


@pytest.fixture(scope="module")
def fixture():
    return torch.load(DATA / "expected.pt", weights_only=True)


@pytest.fixture(scope="module")
def model():
    m = build_atss(num_classes=80, depth=50)
    m.load_state_dict(deterministic_state_dict(m))
    return m.train()  # as the fixture: train mode, backbone BatchNorm kept in eval mode


@pytest.fixture(scope="module")
def outputs(model, fixture):
    with torch.no_grad():
        return model(fixture["images"])


def targets_of(fixture, with_gt: bool = True) -> list[dict]:
    out = []
    for boxes, labels, shape in zip(fixture["gt_boxes"], fixture["gt_labels"], fixture["img_shapes"]):
        if not with_gt:
            boxes, labels = boxes[:0], labels[:0]
        out.append({"boxes": boxes, "labels": labels, "img_shape": shape})
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12))


def assert_same_detections(ours: dict, ref: dict, *, cut_ties: bool = False) -> None:
    """Labels equal, boxes within 1e-3 px, scores within 1e-5, compared as sets among scores tied
    within 1e-5. With `cut_ties`, a reference detection may be missing when its score ties
    (within 1e-5) with the last kept one: which of the tied candidates makes the cut is arbitrary."""
    n_ref, n_ours = len(ref["scores"]), len(ours["scores"])
    assert n_ours == n_ref, f"{n_ours} detections, MMDetection has {n_ref}"
    ref_s, our_s = ref["scores"].double(), ours["scores"].double()
    assert torch.all(our_s[:-1] >= our_s[1:]), "scores not in descending order"
    used = torch.zeros(n_ours, dtype=torch.bool)
    unmatched = []
    for i in range(n_ref):
        close = ((our_s - ref_s[i]).abs() <= SCORE_TIE) & (ours["labels"] == ref["labels"][i]) & ~used
        box_err = (ours["boxes"].double() - ref["boxes"][i].double()).abs().amax(1)
        hit = torch.nonzero(close & (box_err <= BOX_TOL)).flatten()
        if hit.numel():
            used[hit[0]] = True
        else:
            unmatched.append(i)
    if cut_ties:
        last = min(float(ref_s[-1]), float(our_s[-1]))
        unmatched = [i for i in unmatched if float(ref_s[i]) - last > SCORE_TIE]
    assert not unmatched, (f"{len(unmatched)} MMDetection detections not reproduced, e.g. "
                           f"{ref['boxes'][unmatched[0]].tolist()} label {int(ref['labels'][unmatched[0]])} "
                           f"score {float(ref_s[unmatched[0]])}")


def test_state_dict_matches_mmdetection_keys():
    rows = [line.split("\t") for line in (DATA / "mmdet_atss_keys.tsv").read_text().splitlines()[1:]]
    state = build_atss().state_dict()
    assert list(state) == [r[0] for r in rows]
    for name, shape, dtype in rows:
        assert str(list(state[name].shape)) == shape, name
        assert str(state[name].dtype).removeprefix("torch.") == dtype, name


def test_head_outputs_match(outputs, fixture):
    for i, key in enumerate(("cls_scores", "bbox_preds", "centernesses")):
        assert len(outputs[i]) == 5
        for level, (ours, ref) in enumerate(zip(outputs[i], fixture[key])):
            assert ours.shape == ref.shape, (key, level)
            assert rel_err(ours, ref) <= REL_TOL, (key, level, rel_err(ours, ref))


def test_anchors_and_valid_flags_match(model, fixture):
    sizes = [tuple(x.shape[-2:]) for x in fixture["cls_scores"]]
    assert [h * w for h, w in sizes] == list(fixture["level_sizes"])
    assert torch.equal(model.anchor_generator.anchors(sizes, "cpu"), fixture["anchors"])
    assert torch.equal(model.anchor_generator.valid_flags(sizes, fixture["img_shapes"], "cpu"), fixture["valid"])


def _backends():
    from atss_cli.ops import extension

    return ["reference"] + (["extension"] if extension.available() else [])


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("with_gt", [True, False], ids=["gt", "no_gt"])
def test_assignment_matches(model, fixture, with_gt, backend):
    sizes = [tuple(x.shape[-2:]) for x in fixture["cls_scores"]]
    model.assign_backend = backend
    try:
        _, assigned, _, _ = model.assign(sizes, targets_of(fixture, with_gt), "cpu")
    finally:
        model.assign_backend = "auto"
    expected = fixture["assigned" if with_gt else "assigned_no_gt"]
    assert torch.equal(assigned, expected), f"{int((assigned != expected).sum())} anchors differ"


@pytest.mark.parametrize("with_gt", [True, False], ids=["gt", "no_gt"])
def test_losses_match(model, fixture, outputs, with_gt):
    expected = fixture["losses" if with_gt else "losses_no_gt"]
    targets = targets_of(fixture, with_gt)
    from_fixture = model.loss_from_outputs(fixture["cls_scores"], fixture["bbox_preds"],
                                           fixture["centernesses"], targets)
    from_ours = model.loss_from_outputs(*outputs, targets)
    for losses in (from_fixture, from_ours):
        assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
        for key, value in losses.items():
            assert math.isfinite(value.item())
            assert abs(value.item() - expected[key]) <= REL_TOL * max(abs(expected[key]), 1e-6), \
                (key, value.item(), expected[key])
        total = sum(v.item() for v in losses.values())
        assert abs(total - expected["loss"]) <= REL_TOL * max(abs(expected["loss"]), 1e-6)


def test_postprocess_matches_fixture_predictions(model, fixture):
    dets = model.postprocess(fixture["cls_scores"], fixture["bbox_preds"], fixture["centernesses"],
                             fixture["img_shapes"], fixture["scale_factors"])
    assert len(dets) == len(fixture["predictions"])
    for ours, ref in zip(dets, fixture["predictions"]):
        assert_same_detections(ours, ref)


def test_predict_end_to_end_matches(model, fixture):
    model.eval()
    try:
        dets = model.predict(fixture["images"], fixture["img_shapes"], fixture["scale_factors"])
    finally:
        model.train()
    for ours, ref in zip(dets, fixture["predictions"]):
        assert_same_detections(ours, ref, cut_ties=True)


def test_loss_backward_from_images(model, fixture):
    """model.loss on the fixture's images gives the fixture's losses and finite gradients."""
    model.zero_grad(set_to_none=True)
    losses = model.loss(fixture["images"], targets_of(fixture))
    for key, value in losses.items():
        assert abs(value.item() - fixture["losses"][key]) <= REL_TOL * abs(fixture["losses"][key])
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
