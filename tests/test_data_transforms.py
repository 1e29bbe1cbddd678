"""The SPEC.md section 5 transforms, against hand-computed values."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from atss_cli.data.dataset import collate
from atss_cli.data.transforms import MEAN, hflip, normalize, pad_batch, rescale_size, resize, resize_image


def test_rescale_size_matches_mmdetection():
    # s = min(1333 / 640, 800 / 480) = 5/3; int(640 * 5/3 + 0.5) = 1067, int(480 * 5/3 + 0.5) = 800
    assert rescale_size(640, 480, (1333, 800))[:2] == (1067, 800)
    assert rescale_size(480, 640, (1333, 800))[:2] == (800, 1067)   # portrait: the long side is h
    assert rescale_size(2000, 500, (1333, 800))[:2] == (1333, 333)   # long side binds: s = 0.6665
    assert rescale_size(30, 20, (50, 45))[:2] == (50, 33)            # s = 5/3, 20 * 5/3 = 33.3
    assert rescale_size(30, 20, (45, 50))[:2] == (50, 33)            # (long, short) in either order


def test_resize_scales_boxes_by_the_actual_ratio_and_clips():
    image = torch.zeros(3, 20, 30, dtype=torch.uint8)
    boxes = torch.tensor([[3.0, 4.0, 27.0, 18.0], [25.0, 15.0, 40.0, 30.0]])
    out, rb, (sx, sy) = resize(image, boxes, (50, 45))
    assert out.shape == (3, 33, 50) and out.dtype == torch.float32
    assert sx == pytest.approx(50 / 30) and sy == pytest.approx(33 / 20)      # not the nominal 5/3 for y
    expected = [[5.0, 6.6, 45.0, 29.7], [25 * 50 / 30, 24.75, 50.0, 33.0]]     # second box clipped to (50, 33)
    np.testing.assert_allclose(rb.numpy(), expected, rtol=1e-6)


def test_hflip_boxes_and_pixels():
    image = torch.arange(2 * 50, dtype=torch.float32).view(1, 2, 50).expand(3, 2, 50)
    boxes = torch.tensor([[5.0, 6.6, 25.0, 29.7], [0.0, 0.0, 50.0, 2.0]])
    fi, fb = hflip(image, boxes)
    np.testing.assert_allclose(fb.numpy(), [[25.0, 6.6, 45.0, 29.7], [0.0, 0.0, 50.0, 2.0]])   # x1' = W - x2
    assert torch.equal(fi[:, :, 0], image[:, :, 49])
    assert torch.equal(hflip(*hflip(image, boxes))[1], boxes)


def test_bilinear_is_opencv_inter_linear_bit_for_bit():
    row = torch.tensor([0, 100], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2)
    assert resize_image(row, 4, 1)[0, 0].tolist() == [0.0, 25.0, 75.0, 100.0]   # by hand
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (3, 37, 53), dtype=np.uint8)
    hwc = np.ascontiguousarray(src.transpose(1, 2, 0))
    for h, w in ((80, 100), (20, 31), (37, 53), (1, 7), (400, 9)):
        got = resize_image(torch.from_numpy(src), w, h).numpy()
        ref = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        assert got.dtype == np.float32 and np.array_equal(got, ref.astype(np.float32))
    # A plain float bilinear (what this module did before) is off by one on about 1 value in 8.
    flt = torch.nn.functional.interpolate(torch.from_numpy(src)[None].float(), size=(80, 100), mode="bilinear",
                                          align_corners=False)[0].round().numpy()
    assert (flt != resize_image(torch.from_numpy(src), 100, 80).numpy()).mean() > 0.05


def test_normalize():
    px = torch.tensor(MEAN).view(3, 1, 1).expand(3, 2, 2)
    assert torch.allclose(normalize(px), torch.zeros(3, 2, 2), atol=1e-6)
    assert torch.allclose(normalize(torch.full((3, 1, 1), 255.0))[:, 0, 0],
                          torch.tensor([(255 - 123.675) / 58.395, (255 - 116.28) / 57.12, (255 - 103.53) / 57.375]))


def test_pad_batch_and_collate():
    a, b = torch.ones(3, 33, 50), torch.full((3, 40, 20), 2.0)
    batch = pad_batch([a, b])
    assert batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch[0, :, :33, :50], a) and batch[0, :, 33:].abs().sum() == 0 and batch[0, :, :, 50:].abs().sum() == 0
    assert torch.equal(batch[1, :, :40, :20], b) and batch[1, :, 40:].abs().sum() == 0
    assert pad_batch([torch.zeros(3, 64, 32)]).shape == (1, 3, 64, 32)
    samples = [{"image": im, "boxes": torch.zeros(k, 4), "labels": torch.zeros(k, dtype=torch.int64),
                "img_shape": tuple(im.shape[1:]), "ori_shape": (10, 10), "scale_factor": (1.5, 1.5),
                "image_id": 7 + k, "index": k, "flipped": False, "skipped": ["x.jpg"] * k}
               for k, im in enumerate((a, b))]
    out = collate(samples)
    assert out["images"].shape == (2, 3, 64, 64)
    assert [set(t) for t in out["targets"]] == [{"boxes", "labels", "img_shape", "ori_shape", "scale_factor",
                                                  "image_id"}] * 2
    assert out["targets"][1]["img_shape"] == (40, 20) and out["targets"][1]["image_id"] == 8
    assert out["skipped"] == ["x.jpg"]
