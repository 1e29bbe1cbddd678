"""Photographs of any size and shape, and EXIF-rotated ones, through the one test and train pipeline
(transforms.test_input / train_input) that evaluation, prediction and training use."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from atss_cli.data import CorruptImagesError, TestDataset, TrainDataset, load_split
from atss_cli.data.prepare import check_image_files
from atss_cli.data.transforms import read_image, test_input, train_input

SCALE = (1333, 800)


def _write_plain(path, w: int, h: int) -> None:
    """A cheap-to-encode picture: a grey field with a bright block in the top-left quarter."""
    img = np.full((h, w, 3), 90, np.uint8)
    img[: max(1, h // 4), : max(1, w // 4)] = (30, 200, 250)
    assert cv2.imwrite(str(path), img)


def _check_input(tensor, img_shape, factors, w: int, h: int) -> None:
    nh, nw = img_shape
    assert max(nh, nw) <= max(SCALE) and min(nh, nw) <= min(SCALE)
    assert max(nh, nw) >= max(SCALE) - 1 or min(nh, nw) >= min(SCALE) - 1   # one side reaches its limit
    assert factors == (nw / w, nh / h)
    assert tensor.dtype == torch.float32 and tensor.shape[0] == 3
    assert tensor.shape[1] % 32 == 0 and tensor.shape[2] % 32 == 0
    assert tensor.shape[1] - nh < 32 and tensor.shape[2] - nw < 32
    assert not tensor[:, nh:].any() and not tensor[:, :, nw:].any()


@pytest.mark.parametrize("w,h", [(32, 32), (32, 640), (640, 32), (50, 1000), (2000, 100), (1000, 10000),
                                 (10000, 500), (4000, 3000)])
def test_sizes_and_aspect_ratios_go_through_both_pipelines(tmp_path, w, h):
    path = tmp_path / f"im_{w}x{h}.jpg"
    _write_plain(path, w, h)
    tensor, img_shape, factors = test_input(path, scale=SCALE)
    _check_input(tensor, img_shape, factors, w, h)
    boxes = [[0, 0, w, h], [w / 4, h / 4, w / 2, h / 2]]
    t2, s2, f2, b2 = train_input(path, boxes, True, scale=SCALE)
    assert s2 == img_shape and f2 == factors
    nh, nw = img_shape
    assert b2.dtype == torch.float32 and b2.shape == (2, 4)
    np.testing.assert_allclose(b2[0].numpy(), [0, 0, nw, nh], rtol=1e-6)                 # whole image, clipped
    np.testing.assert_allclose(b2[1].numpy(), [nw - nw / 2, nh / 4, nw - nw / 4, nh / 2], rtol=1e-5, atol=1e-3)
    assert torch.equal(t2[:, :nh, :nw], tensor[:, :nh, :nw].flip(-1))


def test_a_10000_px_square_photo_stays_within_memory(tmp_path):
    """100 megapixels: the decoded picture (300 MB) is the only large buffer; peak RSS is measured in a
    fresh process so that it is this pipeline's alone."""
    path = tmp_path / "big.jpg"
    _write_plain(path, 10000, 10000)
    code = textwrap.dedent(f"""
        import json, resource, sys
        from atss_cli.data.transforms import test_input, train_input
        t, s, f = test_input({str(path)!r})
        t2, s2, f2, b = train_input({str(path)!r}, [[10, 10, 9000, 9000]], False)
        print(json.dumps({{"shape": list(t.shape), "img_shape": s, "boxes": b.tolist(),
                           "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["shape"] == [3, 800, 800] and r["img_shape"] == [800, 800]
    np.testing.assert_allclose(r["boxes"], [[0.8, 0.8, 720, 720]], rtol=1e-5)
    assert r["peak_mib"] < 3 * 1024, r   # torch itself ~0.5 GiB, the picture 0.3 GiB


def _exif_jpeg(path, w: int, h: int, orientation: int) -> np.ndarray:
    """Writes a stored w x h JPEG with EXIF `orientation`; returns the displayed RGB pixels (via PIL)."""
    from PIL import ImageOps

    rng = np.random.default_rng(w * h + orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=92, exif=exif)
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


@pytest.fixture
def exif_dataset(tmp_path):
    """A COCO-layout split: a.jpg (EXIF 6, JSON in the displayed frame), b.jpg (EXIF 6, JSON holding the
    stored size), c.png and d.jpg (no EXIF); every image has one box."""
    root = tmp_path / "ds"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    _exif_jpeg(root / "train2017" / "a.jpg", 200, 120, 6)          # shown 120 x 200
    _exif_jpeg(root / "train2017" / "b.jpg", 200, 120, 6)
    Image.fromarray(np.full((100, 150, 3), 77, np.uint8)).save(root / "train2017" / "c.png")
    _write_plain(root / "train2017" / "d.jpg", 150, 100)
    sizes = {"a.jpg": (120, 200), "b.jpg": (200, 120), "c.png": (150, 100), "d.jpg": (150, 100)}
    images = [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(sizes.items())]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 150 if i == 0 else 20, 40, 30],
             "area": 1200, "iscrowd": 0} for i in range(len(images))]
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return root


def test_exif_rotated_photo_is_read_in_the_displayed_frame(exif_dataset):
    cache = load_split(exif_dataset, "train2017")
    ds = TrainDataset(cache, scale=SCALE, flip_prob=0.0)
    pos = [cache.file_name(int(i)) for i in ds.indices].index("a.jpg")
    s = ds[(pos, 0)]
    assert s["skipped"] == [] and s["ori_shape"] == (200, 120)               # h, w as displayed
    path = exif_dataset / "train2017" / "a.jpg"
    tensor, img_shape, factors, boxes = train_input(path, [[10, 150, 50, 180]], False, scale=SCALE)
    assert s["img_shape"] == img_shape == (1333, 800) and s["scale_factor"] == factors
    assert torch.equal(s["image"], tensor[:, :1333, :800])                    # the one training path
    assert torch.equal(s["boxes"], boxes)                                     # boxes are never rotated
    t = TestDataset(cache, scale=SCALE)[list(cache.file_names).index("a.jpg")]
    assert torch.equal(t["image"], test_input(path, SCALE)[0][:, :1333, :800])


def test_json_holding_the_unrotated_size_is_a_counted_skip_with_its_reason(exif_dataset):
    cache = load_split(exif_dataset, "train2017")
    ds = TrainDataset(cache, scale=(64, 48), flip_prob=0.0)
    names = [cache.file_name(int(i)) for i in ds.indices]
    pos = names.index("b.jpg")
    s = ds[(pos, 0)]
    assert s["skipped"] == ["b.jpg"] and cache.file_name(s["index"]) == names[(pos + 1) % len(names)]
    reason = ds.bad_images()["b.jpg"]
    assert "200x120 is the stored, unrotated size" in reason and "EXIF orientation 6" in reason
    with pytest.raises(CorruptImagesError, match="unrotated"):
        TestDataset(cache, scale=(64, 48))[list(cache.file_names).index("b.jpg")]
    report = check_image_files(cache, workers=1)
    assert report["size_mismatch"] == 1 and report["undecodable"] == 0
    assert report["size_mismatch_examples"][0].startswith("b.jpg (120x200 on disk, 200x120 in JSON")
    assert "EXIF orientation 6" in report["size_mismatch_examples"][0]


def test_any_other_size_mismatch_is_a_counted_skip(exif_dataset):
    _write_plain(exif_dataset / "train2017" / "d.jpg", 151, 100)
    cache = load_split(exif_dataset, "train2017")
    ds = TrainDataset(cache, scale=(64, 48), flip_prob=0.0)
    pos = [cache.file_name(int(i)) for i in ds.indices].index("d.jpg")
    assert ds[(pos, 0)]["skipped"] == ["d.jpg"]
    assert ds.bad_images()["d.jpg"].endswith("decodes to 151x100 but the JSON says 150x100")


class _WholeImage(torch.nn.Module):
    """A stand-in detector: one box covering the network input's image area, mapped back by the scale factors."""

    def predict(self, images, img_shapes, scale_factors):
        self.seen = (tuple(images.shape), img_shapes, scale_factors)
        (h, w), (sx, sy) = img_shapes[0], scale_factors[0]
        return [{"boxes": torch.tensor([[0.0, 0.0, w / sx, h / sy]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([0])}]


def test_predict_uses_the_test_pipeline_in_the_displayed_frame(tmp_path):
    from atss_cli.inference.predict import predict_files

    shown = _exif_jpeg(tmp_path / "turned.jpg", 200, 120, 8)
    _write_plain(tmp_path / "strip.png", 2000, 100)
    model = _WholeImage()
    summary = predict_files(model, [tmp_path / "turned.jpg", tmp_path / "strip.png"], device="cpu",
                            out_dir=tmp_path / "out", class_names=["thing"], score_thr=0.5)
    assert summary["skipped"] == []
    turned, strip = summary["images"]
    assert (turned["width"], turned["height"]) == (120, 200) and (strip["width"], strip["height"]) == (2000, 100)
    np.testing.assert_allclose(turned["detections"][0]["box"], [0, 0, 120, 200], rtol=1e-6)
    np.testing.assert_allclose(strip["detections"][0]["box"], [0, 0, 2000, 100], rtol=1e-6)
    assert model.seen[1] == [(1333 * 100 // 2000 + 1, 1333)] and model.seen[0] == (1, 3, 96, 1344)
    drawn = read_image(turned["output"])
    assert drawn.shape[:2] == shown.shape[:2] == (200, 120)
