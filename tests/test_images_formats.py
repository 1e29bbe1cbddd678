"""Real-photograph formats decode to the RGB that MMDetection's loader (mmcv imfrombytes with OpenCV,
IMREAD_COLOR) gives, on images the test writes: each case against an oracle independent of the
decoder where one exists (the painted pixels, PIL, the EXIF rule), else against OpenCV itself."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from atss_cli.data.transforms import DecodeError, decode_rgb, exif_orientation, read_image


def _photo(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    """uint8 [h, w, 3] RGB: smooth gradients plus noise, so that chroma subsampling and the IDCT matter."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def _save(tmp_path, name: str, image: Image.Image, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return path


def _opencv_rgb(path) -> np.ndarray:
    bgr = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def _ours(path) -> np.ndarray:
    out = decode_rgb(path).permute(1, 2, 0).numpy()
    assert out.dtype == np.uint8 and out.shape[2] == 3
    np.testing.assert_array_equal(read_image(path), out[:, :, ::-1])   # the two entry points agree
    return out


@pytest.mark.parametrize("kw", [{}, {"progressive": True}, {"subsampling": 0}, {"subsampling": 2, "quality": 60}],
                         ids=["baseline-420", "progressive", "444", "420-q60"])
def test_jpeg_variants_decode_like_libjpeg(tmp_path, kw):
    path = _save(tmp_path, "a.jpg", Image.fromarray(_photo()), **{"quality": 90, **kw})
    got = _ours(path)
    np.testing.assert_array_equal(got, _opencv_rgb(path))
    np.testing.assert_array_equal(got, np.asarray(Image.open(path).convert("RGB")))   # PIL: same libjpeg-turbo
    assert np.abs(got.astype(int) - _photo()).mean() < 8                              # and near what was painted


def test_grayscale_jpeg_and_png_become_three_equal_channels(tmp_path):
    gray = _photo()[:, :, 1]
    jpeg = _save(tmp_path, "g.jpg", Image.fromarray(gray), quality=90)
    for path in (jpeg, _save(tmp_path, "g.png", Image.fromarray(gray))):
        got = _ours(path)
        assert got.shape == (*gray.shape, 3)
        np.testing.assert_array_equal(got[:, :, 0], got[:, :, 1])
        np.testing.assert_array_equal(got[:, :, 0], got[:, :, 2])
        np.testing.assert_array_equal(got[:, :, 0], np.asarray(Image.open(path)))
    np.testing.assert_array_equal(_ours(tmp_path / "g.png")[:, :, 0], gray)   # lossless


def test_palette_png_and_bmp_expand_to_their_colours(tmp_path):
    pal = Image.fromarray(_photo()).quantize(37)
    rgb = np.asarray(pal.convert("RGB"))
    for name in ("p.png", "p.bmp"):
        np.testing.assert_array_equal(_ours(_save(tmp_path, name, pal)), rgb)
    trans = pal.copy()
    trans.info["transparency"] = 0
    np.testing.assert_array_equal(_ours(_save(tmp_path, "pt.png", trans)), rgb)        # tRNS dropped like alpha


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_dropped_not_composited(tmp_path, mode):
    photo = _photo()
    alpha = np.where(np.arange(photo.shape[1]) % 3 == 0, 0, 200).astype(np.uint8)[None].repeat(photo.shape[0], 0)
    if mode == "RGBA":
        im, want = Image.fromarray(np.dstack([photo, alpha]), "RGBA"), photo
    else:
        im, want = Image.fromarray(np.dstack([photo[:, :, 0], alpha]), "LA"), photo[:, :, :1].repeat(3, 2)
    np.testing.assert_array_equal(_ours(_save(tmp_path, "a.png", im)), want)


def test_sixteen_bit_png_keeps_the_high_byte(tmp_path):
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (40, 50, 3), dtype=np.uint16)
    gray16 = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb16[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "g16.png"), gray16)
    np.testing.assert_array_equal(_ours(tmp_path / "c16.png"), (rgb16 >> 8).astype(np.uint8))
    np.testing.assert_array_equal(_ours(tmp_path / "g16.png"), (gray16 >> 8).astype(np.uint8)[:, :, None].repeat(3, 2))


def test_bmp_24_and_32_bit(tmp_path):
    photo = _photo()
    np.testing.assert_array_equal(_ours(_save(tmp_path, "c.bmp", Image.fromarray(photo))), photo)
    cv2.imwrite(str(tmp_path / "c32.bmp"), np.dstack([photo[:, :, ::-1], np.full(photo.shape[:2], 9, np.uint8)]))
    np.testing.assert_array_equal(_ours(tmp_path / "c32.bmp"), _opencv_rgb(tmp_path / "c32.bmp"))


def test_webp_lossless_and_lossy(tmp_path):
    photo = _photo()
    np.testing.assert_array_equal(_ours(_save(tmp_path, "l.webp", Image.fromarray(photo), lossless=True)), photo)
    lossy = _save(tmp_path, "q.webp", Image.fromarray(photo), quality=80)
    got = _ours(lossy)
    np.testing.assert_array_equal(got, _opencv_rgb(lossy))
    assert np.abs(got.astype(int) - np.asarray(Image.open(lossy).convert("RGB"))).max() <= 2   # libwebp, any build
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    np.testing.assert_array_equal(_ours(_save(tmp_path, "a.webp", Image.fromarray(rgba, "RGBA"), lossless=True,
                                              exact=True)), photo)


def test_cmyk_jpeg_comes_back_near_the_painted_colour(tmp_path):
    colours = [(200, 40, 90), (10, 220, 30), (250, 250, 250), (5, 5, 5)]
    flat = np.zeros((64, 256, 3), np.uint8)
    for i, c in enumerate(colours):
        flat[:, i * 64:(i + 1) * 64] = c
    path = _save(tmp_path, "k.jpg", Image.fromarray(flat).convert("CMYK"), quality=95)
    assert Image.open(path).mode == "CMYK"
    got = _ours(path)
    np.testing.assert_array_equal(got, _opencv_rgb(path))
    for i, c in enumerate(colours):
        assert np.abs(got[32, i * 64 + 32].astype(int) - c).max() <= 3, (c, got[32, i * 64 + 32])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_exif_transpose(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, f"o{orientation}.jpg", Image.fromarray(_photo(90, 160)), quality=92, exif=exif)
    assert exif_orientation(path) == orientation
    got = _ours(path)
    assert got.shape[:2] == ((160, 90) if orientation >= 5 else (90, 160))
    np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))


def test_no_exif_reads_as_orientation_one(tmp_path):
    assert exif_orientation(_save(tmp_path, "n.png", Image.fromarray(_photo()))) == 1
    assert exif_orientation(tmp_path / "missing.jpg") == 1


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_truncated_empty_and_garbage_files_are_decode_errors(tmp_path, suffix):
    path = tmp_path / f"t{suffix}"
    Image.fromarray(_photo()).save(path, **({"progressive": True} if suffix == ".jpg" else {}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(DecodeError, match="t" + suffix):
        read_image(path)
    path.write_bytes(b"")
    with pytest.raises(DecodeError, match="empty"):
        read_image(path)
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(DecodeError, match="cannot decode"):
        read_image(path)
    with pytest.raises(DecodeError, match="cannot read"):
        read_image(tmp_path / "absent.jpg")


def test_a_jpeg_with_data_after_its_end_marker_still_decodes(tmp_path):
    # Camera trailers after the end-of-image marker must not read as truncation.
    path = _save(tmp_path, "t.jpg", Image.fromarray(_photo()), quality=90)
    clean = _ours(path)
    path.write_bytes(path.read_bytes() + b"TRAILER\x00\x01" * 50)
    np.testing.assert_array_equal(_ours(path), clean)
