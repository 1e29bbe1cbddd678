"""Our test and train pipelines against what MMDetection 3.3.0 fed its ATSS model, bit for bit.

tests/data/mmdet_pipeline/ is a copy of ../shared/reference/mmdet_pipeline/ without the resized
PNGs (see its README): nine images (baseline, progressive and 4:4:4 JPEG, grayscale JPEG, RGBA PNG,
a 1200x90 strip, a 48x36 PNG, EXIF orientation 6, CMYK JPEG) and, per pipeline, the shapes, scale
factors, boxes after resize and flip and the sha256 of the exact float32 input tensor.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atss_cli.data.transforms import test_input, train_input

REF = Path(__file__).parent / "data" / "mmdet_pipeline"
META = json.loads((REF / "meta.json").read_text())
BOXES = json.loads((REF / "boxes.json").read_text())
CASES = [(name, pipe) for name, pipes in META["images"].items() for pipe in pipes]


def test_the_reference_covers_nine_images_and_three_pipelines():
    assert len(META["images"]) == 9 and len(CASES) == 27
    assert {p for _, p in CASES} == {"test", "train-noflip", "train-flip"}
    assert tuple(META["scale"]) == (1333, 800) and META["pad_size_divisor"] == 32


@pytest.mark.parametrize("name,pipeline", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_input_equals_mmdetection_bit_for_bit(name, pipeline):
    ref = META["images"][name][pipeline]
    path = REF / "images" / name
    scale = tuple(META["scale"])
    if pipeline == "test":
        tensor, img_shape, factors = test_input(path, scale=scale)
        boxes = None
    else:
        tensor, img_shape, factors, boxes = train_input(path, BOXES[name], pipeline == "train-flip", scale=scale)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert list(tensor.shape) == ref["batch_input_shape"]
    assert isinstance(img_shape, tuple) and all(type(v) is int for v in img_shape)
    assert list(img_shape) == ref["img_shape"]
    assert isinstance(factors, tuple) and all(type(v) is float for v in factors)
    assert list(factors) == ref["scale_factor"]                       # exact, not approx
    h, w = img_shape
    assert not tensor[:, h:, :].any() and not tensor[:, :, w:].any()   # zero padding
    assert hashlib.sha256(tensor.numpy().tobytes()).hexdigest() == ref["input_sha256"]
    assert float(tensor.double().sum()) == pytest.approx(ref["input_sum"], rel=1e-9)
    if boxes is not None:
        assert boxes.dtype == torch.float32 and boxes.shape == (len(BOXES[name]), 4)
        assert np.array_equal(boxes.numpy(), np.asarray(ref["gt_boxes"], dtype=np.float32))
