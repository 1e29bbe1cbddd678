"""`atss export`: the ONNX graph, its parity with `atss predict`'s PyTorch model, and its bad input.

Parity (issue 9): on generated pictures of several sizes, ONNX Runtime's detections equal the
PyTorch predict's: the same count per image, boxes within 0.01 px, scores within 1e-4, the same
labels. A detection present on one side only is accepted only when `explain_mismatch` finds the
reason among the PyTorch model's own candidates: a score within 1e-4 of a cut (the score
threshold, a level's top-1000, the 100 per image) or an IoU within 1e-5 of the NMS threshold
(directly, or through the box that suppressed it).

The model is a small ATSS (ResNet-18, narrow FPN and head) trained for a few SGD steps on
generated coloured boxes (`trained_model` below): its scores are spread, not the near-ties of a
random classifier, and every test image gives 100 detections.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_run import assert_one_line_error, atss

TINY_FIELDS = {"depth": 18, "fpn_channels": 32, "head_channels": 64, "stacked_convs": 1}
CLASS_NAMES = ["red", "green", "blue"]
CATEGORIES = [{"id": 3, "name": "red"}, {"id": 5, "name": "green"}, {"id": 9, "name": "blue"}]
COLORS = [(230, 40, 40), (40, 230, 40), (40, 40, 230)]  # RGB, one per class
SIZES = [(96, 96), (75, 310), (250, 180), (333, 500)]      # (h, w) of the parity pictures
SCALE = (320, 256)
BOX_TOL, SCORE_TOL, CUT_TOL, IOU_TOL = 0.01, 1e-4, 1e-4, 1e-5


def scene(rng: np.random.Generator, h: int, w: int, n: int = 6):
    """uint8 [h, w, 3] RGB noise with n filled boxes of the three class colours; (image, boxes, labels)."""
    img = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    boxes, labels = [], []
    for _ in range(n):
        bw, bh = int(rng.integers(12, max(13, w // 2))), int(rng.integers(12, max(13, h // 2)))
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        c = int(rng.integers(0, 3))
        img[y:y + bh, x:x + bw] = COLORS[c]
        boxes.append([x, y, x + bw, y + bh])
        labels.append(c)
    return img, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def train_tiny(path: Path, iters: int = 15) -> Path:
    """A few SGD steps of the small ATSS on 96 px scenes, saved as our checkpoint format."""
    from atss_cli.data.transforms import normalize
    from atss_cli.model import build_atss

    torch.manual_seed(0)
    model = build_atss(num_classes=3, frozen_stages=-1, norm_eval=False, **TINY_FIELDS)
    with torch.no_grad():
        model.bbox_head.atss_cls.bias.fill_(-1.0)  # start above the 0.05 threshold, as a short run needs
    rng = np.random.default_rng(0)
    data = [scene(rng, 96, 96) for _ in range(8)]
    images = torch.stack([normalize(torch.from_numpy(d[0]).permute(2, 0, 1)) for d in data])
    targets = [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(lab), "img_shape": (96, 96)}
               for _, b, lab in data]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for it in range(iters):
        i = (it % 2) * 4
        loss = sum(model.loss(images[i:i + 4], targets[i:i + 4]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    config = {**TINY_FIELDS, "scale": list(SCALE), "categories": CATEGORIES}
    torch.save({"state_dict": model.state_dict(), "config": config}, path)
    return path


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, exported ONNX file); made once per session (reused through the base temp dir)."""
    from atss_cli.export.onnx_export import export_onnx

    root = tmp_path_factory.getbasetemp() / "onnx_trained"
    ckpt, onnx_path = root / "tiny.pth", root / "tiny.onnx"
    if not onnx_path.is_file():
        root.mkdir(exist_ok=True)
        train_tiny(ckpt)
        export_onnx(ckpt, onnx_path)
    return ckpt, onnx_path


def tie_order(scores: np.ndarray, labels: np.ndarray, boxes: np.ndarray, exp: dict) -> np.ndarray:
    """The ONNX rows in PyTorch's order: row j of PyTorch is the ONNX row at its place, or, where
    two detections' scores tie (within SCORE_TOL, so float rounding may sort them either way),
    the tied ONNX row of the same label with the nearest box. Only tied rows move."""
    exp_scores, exp_labels, exp_boxes = exp["scores"].numpy(), exp["labels"].numpy(), exp["boxes"].numpy()
    order, free = [], set(range(len(scores)))
    for j in range(len(exp_scores)):
        tied = [k for k in sorted(free) if abs(float(scores[k]) - float(exp_scores[j])) <= SCORE_TOL
                and labels[k] == exp_labels[j]]
        k = j if j in free and (not tied or j in tied) and np.abs(boxes[j] - exp_boxes[j]).max() <= BOX_TOL else (
            min(tied, key=lambda k: float(np.abs(boxes[k] - exp_boxes[j]).max())) if tied else j)
        order.append(k)
        free.discard(k)
    return np.asarray(order)


# ---- the mismatch explainer ----------------------------------------------------------------------

def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box a [4] with boxes b [N, 4], in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / union


def candidates(model, image_rgb: np.ndarray, scale) -> dict:
    """Every (anchor, class) pair of the PyTorch model scoring above score_thr - CUT_TOL, decoded
    as the post-processing decodes them, with a flag for the pairs within CUT_TOL of a cut
    (the score threshold, or the level's nms_pre-th score when more pairs pass it)."""
    from atss_cli.data.transforms import test_input
    from atss_cli.model.anchors import decode

    x, img_shape, (sx, sy) = test_input(np.ascontiguousarray(image_rgb[:, :, ::-1]), scale)
    with torch.no_grad():
        cls_scores, bbox_preds, centernesses = model(x[None])
    sizes = [tuple(c.shape[-2:]) for c in cls_scores]
    anchors = torch.split(model.anchor_generator.anchors(sizes, "cpu"), [h * w for h, w in sizes])
    thr = model.score_thr
    out = {"boxes": [], "scores": [], "labels": [], "near_cut": []}
    for cls, box, ctr, level_anchors in zip(cls_scores, bbox_preds, centernesses, anchors):
        probs = cls[0].permute(1, 2, 0).reshape(-1, model.num_classes).sigmoid()
        flat = probs.reshape(-1)
        near = (flat - thr).abs() <= CUT_TOL
        if int((flat > thr).sum()) > model.nms_pre:
            kth = flat.topk(model.nms_pre).values[-1]
            near |= (flat - kth).abs() <= CUT_TOL
        keep = torch.nonzero(flat > thr - CUT_TOL).squeeze(1)
        idx, labels = keep // model.num_classes, keep % model.num_classes
        deltas = box[0].permute(1, 2, 0).reshape(-1, 4)[idx]
        boxes = decode(level_anchors[idx], deltas, max_shape=img_shape) / torch.tensor([sx, sy, sx, sy])
        out["boxes"].append(boxes)
        out["scores"].append(flat[keep] * ctr[0].reshape(-1)[idx].sigmoid())
        out["labels"].append(labels)
        out["near_cut"].append(near[keep])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def explain_mismatch(det: tuple, cands: dict, kept_scores: np.ndarray, *, nms_iou: float = 0.6,
                     max_per_img: int = 100) -> str | None:
    """Why detection det = (box, score, label), found on one side only, may differ; None if
    nothing explains it. kept_scores: the scores of the side that has max_per_img detections."""
    box, score, label = det
    same = cands["labels"] == label
    boxes, scores, near = cands["boxes"][same], cands["scores"][same], cands["near_cut"][same]
    own = np.abs(boxes - box).max(axis=1) <= BOX_TOL
    if (own & near).any():
        return "its score is within 1e-4 of the score threshold or a level's top-1000 cut"
    if len(kept_scores) >= max_per_img and abs(score - float(np.min(kept_scores))) <= CUT_TOL:
        return "its score is within 1e-4 of the 100th detection's"
    overlaps = iou(np.asarray(box), boxes) if len(boxes) else np.zeros(0)
    if (np.abs(overlaps - nms_iou) <= IOU_TOL).any():
        return "an IoU with a box of its class is within 1e-5 of the NMS threshold"
    # Through a suppressor: a box that overlaps it enough to suppress it was itself at a cut.
    for j in np.flatnonzero((overlaps > nms_iou - IOU_TOL) & (scores >= score - SCORE_TOL)):
        if near[j] or (np.abs(iou(boxes[j], boxes) - nms_iou) <= IOU_TOL).any():
            return "a box that suppresses it lies at a cut itself"
    return None


def compare(torch_det, onnx_det, cands: dict | None) -> tuple[int, list[str]]:
    """Match detections one to one (same label, boxes within 0.01 px, scores within 1e-4);
    returns (matched count, the unexplained leftovers as text)."""
    left = list(range(len(onnx_det.scores)))
    unmatched_t = []
    for i in range(len(torch_det.scores)):
        hit = next((j for j in left if onnx_det.labels[j] == torch_det.labels[i]
                    and np.abs(onnx_det.boxes[j] - torch_det.boxes[i]).max() <= BOX_TOL
                    and abs(float(onnx_det.scores[j]) - float(torch_det.scores[i])) <= SCORE_TOL), None)
        if hit is None:
            unmatched_t.append(i)
        else:
            left.remove(hit)
    problems = []
    for side, result, rows, other in (("torch", torch_det, unmatched_t, onnx_det),
                                      ("onnx", onnx_det, left, torch_det)):
        for i in rows:
            det = (result.boxes[i], float(result.scores[i]), int(result.labels[i]))
            reason = None if cands is None else explain_mismatch(det, cands, result.scores)
            if reason is None:
                problems.append(f"{side} only: label {det[2]} score {det[1]:.6f} box {np.round(det[0], 3).tolist()}")
    return len(torch_det.scores) - len(unmatched_t), problems


# ---- tests -------------------------------------------------------------------------------------------

def test_graph_is_valid_opset17_with_dynamic_inputs_and_metadata(trained_model):
    import onnx

    _, onnx_path = trained_model
    proto = onnx.load(str(onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == 17
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert inputs == {"images": ["batch", 3, "height", "width"], "img_shape": ["batch", 2],
                      "scale_factor": ["batch", 2]}
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "num_detections"]
    ops = {n.op_type for n in proto.graph.node}
    assert {"TopK", "NonMaxSuppression", "Sigmoid"} <= ops
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["categories"]) == CATEGORIES and json.loads(meta["class_names"]) == CLASS_NAMES
    assert json.loads(meta["scale"]) == list(SCALE) and json.loads(meta["score_thr"]) == 0.05
    assert json.loads(meta["nms_iou"]) == 0.6 and json.loads(meta["max_per_img"]) == 100
    assert meta["format"] == "atss-onnx-1"


def test_onnxruntime_equals_pytorch_predict_on_several_sizes(trained_model):
    from atss_cli import Detector

    ckpt, onnx_path = trained_model
    torch_det = Detector.from_checkpoint(ckpt, device="cpu")
    onnx_det = Detector.from_onnx(onnx_path, threads=1)
    from atss_cli.inference.checkpoint import build_inference_model

    net = build_inference_model(ckpt, num_classes=3, device="cpu")
    rng = np.random.default_rng(7)
    total = 0
    for h, w in SIZES:
        image, _, _ = scene(rng, h, w, n=8)
        t, o = torch_det([image])[0], onnx_det([image])[0]
        assert len(t) >= 20, (h, w, len(t))
        matched, problems = compare(t, o, candidates(net, image, SCALE))
        assert problems == [], f"{h}x{w}: {problems}"
        assert t.names == [CLASS_NAMES[i] for i in t.labels]
        total += matched
    assert total >= 20 * len(SIZES)


def test_explainer_rejects_a_mismatch_with_no_cause(trained_model):
    """The parity test can fail: a detection dropped from one side, far from every cut, is
    reported; one whose score sits on the threshold is explained."""
    from atss_cli import Detector
    from atss_cli.inference.checkpoint import build_inference_model
    from atss_cli.export.runtime import Detections

    ckpt, _ = trained_model
    det = Detector.from_checkpoint(ckpt, device="cpu")
    net = build_inference_model(ckpt, num_classes=3, device="cpu")
    image, _, _ = scene(np.random.default_rng(3), 128, 160)
    t = det([image])[0]
    cands = candidates(net, image, SCALE)
    drop = 5  # the 6th best: far above the 0.05 threshold and the 100th score
    o = Detections(np.delete(t.boxes, drop, 0), np.delete(t.scores, drop), np.delete(t.labels, drop))
    _, problems = compare(t, o, cands)
    assert len(problems) == 1 and problems[0].startswith("torch only")
    # The same detection, with its candidate marked as lying on a cut, is explained.
    flagged = dict(cands)
    flagged["near_cut"] = cands["near_cut"] | (np.abs(cands["boxes"] - t.boxes[drop]).max(axis=1) <= BOX_TOL)
    assert compare(t, o, flagged)[1] == []
    # A score off by more than 1e-4 is a mismatch on both sides.
    o2 = Detections(t.boxes.copy(), t.scores.copy(), t.labels.copy())
    o2.scores[drop] += 3e-4
    assert len(compare(t, o2, cands)[1]) == 2


def test_batch_of_two_equals_pytorch_on_the_same_padded_batch(trained_model):
    """The batch dimension of the post-processing: two images of one padded size but different
    img_shape and scale factors, against model.predict on the same batch."""
    import onnxruntime as ort

    from atss_cli.data.transforms import pad_batch, test_input
    from atss_cli.inference.checkpoint import build_inference_model
    from atss_cli.export.runtime import OnnxDetector

    ckpt, onnx_path = trained_model
    net = build_inference_model(ckpt, num_classes=3, device="cpu")
    runner = OnnxDetector(onnx_path, threads=1)
    rng = np.random.default_rng(11)
    images = [scene(rng, 200, 150)[0], scene(rng, 160, 200)[0]]
    prepared = [runner.preprocess(np.ascontiguousarray(im[:, :, ::-1])) for im in images]
    batch = runner.pad([p[0] for p in prepared])
    shapes = np.asarray([p[1] for p in prepared])
    factors = np.asarray([p[2] for p in prepared])
    boxes, scores, labels, num = runner.run(batch, shapes, factors)
    tensors = [test_input(np.ascontiguousarray(im[:, :, ::-1]), SCALE) for im in images]
    assert [t[1] for t in tensors] == [tuple(s) for s in shapes.tolist()]
    x = pad_batch([t[0] for t in tensors])
    assert tuple(x.shape) == batch.shape
    expected = net.predict(x, [t[1] for t in tensors], [t[2] for t in tensors])
    for i, exp in enumerate(expected):
        n = int(num[i])
        assert n == len(exp["scores"]) >= 20
        np.testing.assert_allclose(scores[i, :n], exp["scores"].numpy(), atol=SCORE_TOL)
        order = tie_order(scores[i, :n], labels[i, :n], boxes[i, :n], exp)
        np.testing.assert_allclose(boxes[i, order], exp["boxes"].numpy(), atol=BOX_TOL)
        assert (labels[i, order] == exp["labels"].numpy()).all() and (labels[i, n:] == -1).all()
    assert ort.get_available_providers()


def test_export_cli_writes_file_and_stores_ann_categories(trained_model, tmp_path):
    ckpt, _ = trained_model
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                               "annotations": [],
                               "categories": [{"id": 7, "name": "x"}, {"id": 2, "name": "y"},
                                              {"id": 4, "name": "z"}]}))
    out = tmp_path / "m.onnx"
    proc = atss("export", ckpt, "--out", out, "--ann", ann, "--scale", "256,192")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out}") and "opset 17" in proc.stdout
    from atss_cli.export.runtime import OnnxDetector

    meta = OnnxDetector(out).meta
    assert meta["categories"] == [{"id": 2, "name": "y"}, {"id": 4, "name": "z"}, {"id": 7, "name": "x"}]
    assert meta["scale"] == [256, 192]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "m.onnx"]


def test_export_bad_input_is_one_line_and_leaves_nothing(trained_model, tmp_path):
    ckpt, _ = trained_model
    not_detector = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(4, 3, 3, 3)}}, not_detector)
    not_torch = tmp_path / "notes.pth"
    not_torch.write_text("hello")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "m.onnx"
    old.write_bytes(b"previous")
    assert_one_line_error(atss("export", not_detector, "--out", old), "not an ATSS")
    assert_one_line_error(atss("export", not_torch, "--out", old), str(not_torch))
    assert_one_line_error(atss("export", ckpt, "--out", tmp_path / "missing" / "m.onnx"), "does not exist")
    assert_one_line_error(atss("export", ckpt, "--out", out_dir), "is a folder")
    assert old.read_bytes() == b"previous" and sorted(p.name for p in out_dir.iterdir()) == ["m.onnx"]
    if os.geteuid() == 0:  # root writes through chmod 555; sysfs is read-only for everyone
        read_only = Path("/sys/atss_test.onnx")
        assert_one_line_error(atss("export", ckpt, "--out", read_only), str(read_only))
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            assert_one_line_error(atss("export", ckpt, "--out", ro / "m.onnx"), "not writable")
            assert list(ro.iterdir()) == []
        finally:
            ro.chmod(0o755)


def test_mmdetection_style_checkpoint_exports_with_its_class_names(trained_model, tmp_path):
    """An MMDetection file: weights under state_dict, class names in meta.dataset_meta, no config
    (the architecture comes from the flags, as for `atss predict`)."""
    ckpt, _ = trained_model
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    mmdet = tmp_path / "atss_mmdet.pth"
    torch.save({"meta": {"dataset_meta": {"classes": ("cat", "dog", "bird")}, "epoch": 12}, "state_dict": state},
               mmdet)
    out = tmp_path / "mmdet.onnx"
    proc = atss("export", mmdet, "--out", out, "--depth", 18, "--fpn-channels", 32, "--head-channels", 64,
                "--stacked-convs", 1)
    assert proc.returncode == 0, proc.stderr
    from atss_cli.export.runtime import OnnxDetector

    det = OnnxDetector(out)
    assert det.meta["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "bird"}]
    assert det.scale == (1333, 800) and det.meta["model"]["depth"] == 18
    assert_one_line_error(atss("export", mmdet, "--out", tmp_path / "r50.onnx"), "lacks", "this depth")
    assert not (tmp_path / "r50.onnx").exists()
