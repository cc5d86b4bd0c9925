"""Inputs that used to exhaust memory, hang, or fail with an unclear message (the break-it-on-purpose audit)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from tmdafm_core.cli import main
from tmdafm_core.data import load_image, probe_image, read_dataset, save_tiff


def _huge_compressed_tiff(path, side=12000):
    """A few hundred kB on disk, 144 Mpx decoded: the header says so before any pixel is read."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.zeros((side, side), np.uint8), compression="zlib", tile=(1024, 1024))
    return path


def test_a_tiny_file_of_a_huge_image_is_refused_from_its_header(tmp_path, monkeypatch):
    path = _huge_compressed_tiff(tmp_path / "MoS2_syn_s1_000.tif")
    assert path.stat().st_size < 2 << 20
    with pytest.raises(ValueError, match="Mpx read at most"):
        probe_image(path)
    with pytest.raises(ValueError, match="Mpx read at most"):
        load_image(path)
    monkeypatch.setenv("TMDAFM_MAX_PIXELS", str(200 * 2**20))
    assert probe_image(path)[:2] == (12000, 12000)


def test_a_huge_image_in_a_folder_is_skipped_with_the_reason(tmp_path):
    save_tiff(tmp_path / "MoS2_syn_s1_000.tif", np.random.default_rng(0).random((40, 40)), pixel_size_nm=4.0)
    save_tiff(tmp_path / "WS2_syn_s2_000.tif", np.random.default_rng(1).random((40, 40)), pixel_size_nm=4.0)
    _huge_compressed_tiff(tmp_path / "MoS2_syn_s3_000.tif")
    manifest = read_dataset(tmp_path)
    assert len(manifest) == 2
    assert any("Mpx read at most" in reason for _, reason in manifest.attrs["skipped"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_a_fifo_named_like_an_image_does_not_hang_info(tmp_path, capsys):
    save_tiff(tmp_path / "MoS2_syn_s1_000.tif", np.random.default_rng(0).random((40, 40)), pixel_size_nm=4.0)
    save_tiff(tmp_path / "WS2_syn_s2_000.tif", np.random.default_rng(1).random((40, 40)), pixel_size_nm=4.0)
    os.mkfifo(tmp_path / "x.tif")
    assert main(["info", str(tmp_path)]) == 0
    assert "x.tif: not a regular file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a regular file"):
        load_image(tmp_path / "x.tif")


def test_manifest_pixel_size_that_is_not_a_number_names_file_column_and_line(tmp_path):
    save_tiff(tmp_path / "a.tif", np.random.default_rng(0).random((40, 40)), pixel_size_nm=4.0)
    (tmp_path / "manifest.csv").write_text("path,material,sample_id,pixel_size_nm\na.tif,MoS2,s1,abc\n")
    with pytest.raises(ValueError, match=r"manifest.csv: line 2: column pixel_size_nm: 'abc' is not a number"):
        read_dataset(tmp_path / "manifest.csv")


@pytest.mark.parametrize("argv, message", [
    (["predict", "RUN", "x.tif", "--fold", "abc"], "--fold: takes a fold number (0, 1, ...) or best, got 'abc'"),
    (["train", "DATA", "--out", "OUT", "--image-size", "0"], "--image-size: takes a side in pixels from 32 to 4096"),
])
def test_bad_option_values_are_one_line_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([a.replace("RUN", str(tmp_path)).replace("DATA", str(tmp_path)).replace("OUT", str(tmp_path / "o"))
              for a in argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]


def test_latent_checks_the_descriptor_table_before_embedding(tmp_path, capsys, monkeypatch):
    from tmdafm_core import latent

    monkeypatch.setattr(latent, "run_embeddings", lambda *a, **k: pytest.fail("embedded before checking inputs"))
    (tmp_path / "run").mkdir()
    assert main(["latent", str(tmp_path / "run"), str(tmp_path), "--out", str(tmp_path / "o"),
                 "--features", str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv: no such descriptor table" in capsys.readouterr().err


def test_images_under_the_limit_still_read(tmp_path, monkeypatch):
    save_tiff(tmp_path / "ok.tif", np.random.default_rng(0).random((64, 64)), pixel_size_nm=4.0)
    monkeypatch.setenv("TMDAFM_MAX_PIXELS", str(64 * 64))
    assert load_image(tmp_path / "ok.tif")[0].shape == (64, 64)
    monkeypatch.setenv("TMDAFM_MAX_PIXELS", str(64 * 64 - 1))
    with pytest.raises(ValueError, match="Mpx read at most"):
        load_image(tmp_path / "ok.tif")
