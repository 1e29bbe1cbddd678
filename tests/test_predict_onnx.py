"""`atss predict --onnx`: the exported file on ONNX Runtime gives what the checkpoint gives
(detections and pictures); a file that is not ours or an input the graph cannot take is a
one-line error. And the runtime module works where torch cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli_run import ROOT, assert_one_line_error, atss
from test_export_onnx import CLASS_NAMES, scene, trained_model  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx_images")
    rng = np.random.default_rng(21)
    paths = []
    for name, (h, w) in (("a.jpg", (120, 160)), ("b.png", (200, 90))):
        Image.fromarray(scene(rng, h, w, n=8)[0]).save(root / name, quality=95)
        paths.append(root / name)
    return paths


def test_onnx_gives_the_checkpoints_detections_and_pictures(trained_model, images, tmp_path):  # noqa: F811
    ckpt, onnx_path = trained_model
    runs = {}
    for kind, flag, model in (("ckpt", "--checkpoint", ckpt), ("onnx", "--onnx", onnx_path)):
        out = tmp_path / kind
        proc = atss("predict", flag, model, *images, "--out", out, "--score-thr", "0.1")
        assert proc.returncode == 0, proc.stderr
        runs[kind] = (out, json.loads((out / "detections.json").read_text()))
    (_, a), (_, b) = runs["ckpt"], runs["onnx"]
    assert a["class_names"] == b["class_names"] == CLASS_NAMES and a["scale"] == b["scale"]
    for ra, rb in zip(a["images"], b["images"], strict=True):
        assert (ra["width"], ra["height"]) == (rb["width"], rb["height"])
        assert len(ra["detections"]) == len(rb["detections"]) > 0
        for da, db in zip(ra["detections"], rb["detections"]):
            assert (da["label"], da["name"]) == (db["label"], db["name"])
            assert abs(da["score"] - db["score"]) <= 1e-4
            assert np.abs(np.subtract(da["box"], db["box"])).max() <= 0.01
        # The same boxes drawn: the pictures are pixel for pixel the same.
        pa = np.asarray(Image.open(ra["output"]))
        pb = np.asarray(Image.open(rb["output"]))
        assert pa.shape == pb.shape and (pa == pb).all()


def test_ann_names_the_classes(trained_model, images, tmp_path):  # noqa: F811
    _, onnx_path = trained_model
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 9, "height": 9}],
                               "annotations": [],
                               "categories": [{"id": 9, "name": "c"}, {"id": 1, "name": "a"},
                                              {"id": 4, "name": "b"}]}))
    proc = atss("predict", "--onnx", onnx_path, images[0], "--out", tmp_path / "out", "--ann", ann)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert summary["class_names"] == ["a", "b", "c"]
    assert {d["name"] for d in summary["images"][0]["detections"]} <= {"a", "b", "c"}
    wrong = tmp_path / "two.json"
    wrong.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 9, "height": 9}],
                                 "annotations": [], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}))
    assert_one_line_error(atss("predict", "--onnx", onnx_path, images[0], "--out", tmp_path / "o2", "--ann", wrong),
                          "2 categories", "3 classes")


def test_onnx_bad_input_is_one_line(trained_model, images, tmp_path):  # noqa: F811
    import onnx
    from onnx import TensorProto, helper

    ckpt, onnx_path = trained_model
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), foreign)
    assert_one_line_error(atss("predict", "--onnx", foreign, images[0], "--out", tmp_path / "o"),
                          "not an `atss export` file")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    assert_one_line_error(atss("predict", "--onnx", garbage, images[0], "--out", tmp_path / "o"), str(garbage))
    # A picture that resizes to nothing at the test scale (1 x 4000 px): the graph cannot take it.
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 4000, 3), np.uint8)).save(strip)
    assert_one_line_error(atss("predict", "--onnx", onnx_path, strip, "--out", tmp_path / "o"), "too small")
    assert_one_line_error(atss("predict", "--onnx", onnx_path, "--checkpoint", ckpt, images[0], "--out",
                               tmp_path / "o"), "either --checkpoint")
    assert_one_line_error(atss("predict", "--onnx", onnx_path, images[0], "--out", tmp_path / "o", "--depth", "50"),
                          "--depth")


def test_runtime_rejects_sizes_the_graph_cannot_take(trained_model):  # noqa: F811
    from atss_cli.errors import AtssError
    from atss_cli.export.runtime import OnnxDetector

    _, onnx_path = trained_model
    det = OnnxDetector(onnx_path, threads=1)
    ok = np.zeros((1, 3, 64, 96), np.uint8)
    with pytest.raises(AtssError, match="multiples of 32, got 90x64"):
        det.run(np.zeros((1, 3, 64, 90), np.uint8), np.asarray([[64, 90]]), np.ones((1, 2)))
    with pytest.raises(AtssError, match="does not fit"):
        det.run(ok, np.asarray([[65, 96]]), np.ones((1, 2)))
    with pytest.raises(AtssError, match="uint8"):
        det.run(ok.astype(np.float32), np.asarray([[64, 96]]), np.ones((1, 2)))
    boxes, scores, labels, num = det.run(ok, np.asarray([[64, 96]]), np.ones((1, 2)))
    assert boxes.shape[0] == scores.shape[0] == labels.shape[0] == num.shape[0] == 1


BLOCK_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("torchvision"):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def test_runtime_and_api_work_without_torch(trained_model, images):  # noqa: F811
    """The exported file runs where `import torch` fails: the runtime module alone (as a
    copied file would be used) and `atss_cli.Detector.from_onnx`."""
    _, onnx_path = trained_model
    code = BLOCK_TORCH + f"""
import json
try:
    import torch
except ImportError:
    pass
else:
    raise SystemExit("the blocker did not block torch")
from atss_cli.export.runtime import OnnxDetector, read_bgr
det = OnnxDetector({str(onnx_path)!r}, threads=1)
r = det([read_bgr({str(images[0])!r})])[0]
from atss_cli import Detector
api = Detector.from_onnx({str(onnx_path)!r}, threads=1)(["{images[0]}"])[0]
assert (api.scores == r.scores).all() and api.names == r.names
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
print(json.dumps({{"n": len(r), "names": r.names[:3], "score": float(r.scores[0])}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] >= 20 and set(out["names"]) <= set(CLASS_NAMES)
