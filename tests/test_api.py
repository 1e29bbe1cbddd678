"""`from atss_cli import Detector`: every accepted input kind, on PyTorch and ONNX Runtime.

A file (EXIF orientation applied), a PIL image, an H x W x 3 uint8 RGB array and a [3, H, W]
uint8 RGB tensor of the same picture give the same detections; wrong inputs are one-line
AtssErrors naming the input.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from test_export_onnx import CLASS_NAMES, scene, trained_model  # noqa: F401 - the fixture

from atss_cli.errors import AtssError


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """(RGB array as displayed, PNG path, JPEG path stored turned with EXIF orientation 6)."""
    root = tmp_path_factory.mktemp("api")
    rgb, _, _ = scene(np.random.default_rng(5), 120, 160, n=8)
    png = root / "plain.png"
    Image.fromarray(rgb).save(png)
    # Stored turned 90 degrees counter-clockwise; orientation 6 turns it back when displayed.
    stored = np.ascontiguousarray(np.rot90(rgb, 1))
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = root / "turned.jpg"
    Image.fromarray(stored).save(turned, quality=100, subsampling=0, exif=exif.tobytes())
    return rgb, png, turned


def same(a, b, tol=0.0):
    assert len(a) == len(b) and (a.labels == b.labels).all() and a.names == b.names
    np.testing.assert_allclose(a.boxes, b.boxes, atol=tol)
    np.testing.assert_allclose(a.scores, b.scores, atol=tol)


@pytest.fixture(scope="module")
def detectors(trained_model):  # noqa: F811
    from atss_cli import Detector

    ckpt, onnx_path = trained_model
    return {"torch": Detector.from_checkpoint(ckpt, device="cpu"), "onnxruntime": Detector.from_onnx(onnx_path)}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_each_input_kind_gives_the_same_result(detectors, picture, backend):
    det = detectors[backend]
    rgb, png, _ = picture
    from_array = det([rgb])[0]
    assert len(from_array) >= 20 and det.backend == backend
    assert from_array.boxes.dtype == np.float32 and from_array.labels.dtype == np.int64
    assert from_array.names == [CLASS_NAMES[i] for i in from_array.labels]
    assert (np.diff(from_array.scores) <= 0).all()
    assert (from_array.width, from_array.height) == (160, 120)
    results = det([str(png), png, Image.fromarray(rgb), torch.from_numpy(rgb).permute(2, 0, 1)])
    assert len(results) == 4
    for r in results:
        same(r, from_array)


def test_a_file_gets_its_exif_orientation_and_a_pil_image_does_not(detectors, picture):
    from atss_cli.data.transforms import read_image

    det = detectors["torch"]
    _, _, turned = picture
    displayed = read_image(turned)[:, :, ::-1]                  # OpenCV applies EXIF: 120 x 160
    assert displayed.shape[:2] == (120, 160)
    from_file = det([turned])[0]
    same(from_file, det([np.ascontiguousarray(displayed)])[0])
    with Image.open(turned) as im:                              # PIL: the stored pixels, 160 x 120
        stored = det([im])[0]
    assert (stored.width, stored.height) == (120, 160)


def test_torch_and_onnxruntime_agree(detectors, picture):
    rgb, _, _ = picture
    same(detectors["torch"]([rgb])[0], detectors["onnxruntime"]([rgb])[0], tol=1e-4)


def test_score_threshold_and_single_input(detectors, picture):
    det = detectors["torch"]
    rgb, _, _ = picture
    all_dets = det([rgb])[0]
    high = det(rgb, score_thr=0.3)
    assert len(high) == 1 and (high[0].scores >= 0.3).all()
    assert len(high[0]) == int((all_dets.scores >= 0.3).sum())


@pytest.mark.parametrize("bad,needle", [
    (np.zeros((10, 10), np.uint8), "uint8 [H, W, 3]"),
    (np.zeros((10, 10, 3), np.float32), "float32"),
    (torch.zeros(10, 10, 3, dtype=torch.uint8), "[3, H, W]"),
    (torch.zeros(3, 10, 10), "torch.float32"),
    (42, "int"),
    ("no/such/file.jpg", "no/such/file.jpg"),
])
def test_bad_inputs_are_one_line_errors(detectors, bad, needle):
    with pytest.raises(AtssError) as info:
        detectors["torch"]([np.zeros((32, 32, 3), np.uint8), bad])
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_from_checkpoint_rejects_a_non_detector(tmp_path):
    from atss_cli import Detector

    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, path)
    with pytest.raises(AtssError, match="not an ATSS checkpoint"):
        Detector.from_checkpoint(path)


def test_importing_the_package_does_not_import_torch():
    code = ("import sys, atss_cli; assert 'torch' not in sys.modules; "
            "from atss_cli import Detector; assert 'torch' not in sys.modules, 'api imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True)
