import numpy as np
import pytest
import tifffile
from PIL import Image

from tmdafm_core.data import load_image, probe_image, save_tiff


def test_uint16_tiff_roundtrip_with_pixel_size(tmp_path):
    ramp = np.tile(np.linspace(0, 1, 40), (30, 1))
    save_tiff(tmp_path / "a.tif", ramp, pixel_size_nm=3.90625, dtype=np.uint16)
    image, pixel_nm = load_image(tmp_path / "a.tif")
    assert image.dtype == np.float32 and image.shape == (30, 40)
    assert image.min() == 0 and image.max() == 1
    np.testing.assert_allclose(image, ramp, atol=1e-4)
    assert pixel_nm == pytest.approx(3.90625, rel=1e-6)
    assert probe_image(tmp_path / "a.tif") == (30, 40, pytest.approx(3.90625, rel=1e-6))


def test_float_tiff_with_nan_dropouts_is_filled(tmp_path):
    height = np.arange(16.0 * 16).reshape(16, 16) * 1e-9  # metres, as raw AFM exports store them
    height[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "raw.tiff", height.astype(np.float32))
    image, pixel_nm = load_image(tmp_path / "raw.tiff")
    assert np.isfinite(image).all()
    assert pixel_nm == pytest.approx(1000 / 16)  # no tags: the image spans 1 µm


def test_manifest_pixel_size_wins_over_tags(tmp_path):
    save_tiff(tmp_path / "a.tif", np.random.default_rng(0).random((8, 8)), pixel_size_nm=2.0)
    assert load_image(tmp_path / "a.tif", pixel_size_nm=7.5)[1] == 7.5


def test_8bit_png_and_rgb_jpeg(tmp_path):
    gray = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    image, _ = load_image(tmp_path / "g.png")
    np.testing.assert_allclose(image, gray / gray.max(), atol=1e-6)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, 4:] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=100)
    image, _ = load_image(tmp_path / "c.jpg")
    assert image.shape == (8, 8) and image[:, :3].max() < 0.1 and image[:, 5:].min() > 0.9


def test_rgba_png_uses_luma_not_alpha(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, :3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    image, _ = load_image(tmp_path / "a.png")
    assert image[:3].min() == 1 and image[3:].max() == 0


def test_constant_image_is_zero_not_nan(tmp_path):
    save_tiff(tmp_path / "flat.tif", np.full((10, 10), 0.5), pixel_size_nm=1.0)
    image, _ = load_image(tmp_path / "flat.tif")
    assert np.all(image == 0)


def test_unreadable_file(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="bad.tif: not a readable image"):
        load_image(tmp_path / "bad.tif")
    with pytest.raises(ValueError, match="bad.tif: not a readable image"):
        probe_image(tmp_path / "bad.tif")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match="unsupported image type"):
        load_image(tmp_path / "x.bmp")


def test_all_nan_image(tmp_path):
    tifffile.imwrite(tmp_path / "nan.tif", np.full((4, 4), np.nan, np.float32))
    with pytest.raises(ValueError, match="no finite pixel"):
        load_image(tmp_path / "nan.tif")


def test_placeholder_dpi_tags_are_ignored(tmp_path):
    tifffile.imwrite(tmp_path / "dpi.tif", np.zeros((20, 20), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    assert probe_image(tmp_path / "dpi.tif")[2] is None
    assert load_image(tmp_path / "dpi.tif")[1] == pytest.approx(50.0)


def test_save_tiff_validation(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_tiff(tmp_path / "a.tif", np.zeros((2, 2, 2)), pixel_size_nm=1.0)
    with pytest.raises(ValueError, match="positive"):
        save_tiff(tmp_path / "a.tif", np.zeros((2, 2)), pixel_size_nm=0)
