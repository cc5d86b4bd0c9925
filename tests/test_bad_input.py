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
    from tmdafm_core import embeddings

    monkeypatch.setattr(embeddings, "run_embeddings", lambda *a, **k: pytest.fail("embedded before checking inputs"))
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


def test_an_image_listed_twice_across_partitions_is_flagged_and_not_trained(tmp_path, capsys):
    from tmdafm_core.training import cross_validate

    rng = np.random.default_rng(0)
    rows = ["path,material,sample_id,split"]
    for material in ("MoS2", "WS2"):
        for sample in range(3):
            for i in range(2):
                name = f"{material}_{sample}_{i}.tif"
                save_tiff(tmp_path / name, rng.random((32, 32)), pixel_size_nm=4.0)
                rows.append(f"{name},{material},{material}{sample},{'test' if sample == 0 else 'train'}")
    rows.append("MoS2_1_0.tif,MoS2,MoS2x,test")  # the audit's leak: a training image listed again as test
    (tmp_path / "copy.tif").write_bytes((tmp_path / "WS2_1_1.tif").read_bytes())  # same pixels, other name
    rows.append("copy.tif,WS2,WS2y,train")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert main(["info", str(tmp_path / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert "2 image(s) repeat another" in out and "same file" in out and "identical content" in out
    assert "checks: ok" not in out
    manifest = read_dataset(tmp_path / "manifest.csv")
    with pytest.raises(ValueError, match="repeat another.*--allow-duplicates"):
        cross_validate(manifest, tmp_path / "run", folds=2, weights="none", epochs=1, image_size=32)
    assert not (tmp_path / "run").exists()
    metrics = cross_validate(manifest, tmp_path / "run", folds=2, weights="none", epochs=1, image_size=32,
                             batch_size=4, allow_duplicates=True)
    assert metrics["folds"] == 2


def _good(folder, name, seed):
    save_tiff(folder / name, np.random.default_rng(seed).random((48, 48)), pixel_size_nm=4.0)


def test_one_bad_file_does_not_stop_a_folder(tmp_path, capsys):
    for i, material in enumerate(("MoS2", "WS2")):
        for sample in range(2):
            _good(tmp_path, f"{material}_syn_{material}s{sample}_000.tif", 10 * i + sample)
    good = (tmp_path / "MoS2_syn_MoS2s0_000.tif").read_bytes()
    (tmp_path / "MoS2_syn_MoS2s5_000.tif").write_bytes(good[: len(good) // 2])  # header intact, pixels cut
    save_tiff(tmp_path / "WS2_syn_WS2s7_000.tif", np.zeros((1, 1)), pixel_size_nm=4.0)
    save_tiff(tmp_path / "WS2_syn_WS2s8_000.tif", np.zeros((64, 2)), pixel_size_nm=4.0)
    odd = os.fsencode(str(tmp_path)) + b"/MoS2_syn_MoS2s9_\xff.tif"
    with open(odd, "wb") as handle:
        handle.write(good)
    manifest = read_dataset(tmp_path)
    assert len(manifest) == 4
    reasons = {os.path.basename(p): r for p, r in manifest.attrs["skipped"]}
    assert "truncated" in reasons["MoS2_syn_MoS2s5_000.tif"]
    assert "too small: 1 x 1 px" in reasons["WS2_syn_WS2s7_000.tif"]
    assert "too small: 2 x 64 px" in reasons["WS2_syn_WS2s8_000.tif"]
    assert any("not valid UTF-8" in r for r in reasons.values())
    assert main(["features", str(tmp_path), "--out", str(tmp_path / "out" / "f.csv"), "--jobs", "1"]) == 0
    err = capsys.readouterr().err
    assert "truncated" in err and "too small" in err
    with pytest.raises(ValueError, match="remove --strict to skip such files"):
        read_dataset(tmp_path, strict=True)


def test_class_folders_skip_folders_that_are_not_classes(tmp_path):
    from PIL import Image

    for name in ("MoS2", "WS2", "Graphene", "__MACOSX"):
        (tmp_path / name).mkdir()
    for material in ("MoS2", "WS2"):
        Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(
            tmp_path / material / "a.png")
    (tmp_path / "__MACOSX" / "._a.png").write_bytes(b"\x00")
    manifest = read_dataset(tmp_path)
    assert sorted(manifest["material"]) == ["MoS2", "WS2"]
    reasons = {os.path.basename(p): r for p, r in manifest.attrs["skipped"]}
    assert "folder name is not a material" in reasons["Graphene"] and "__MACOSX" not in reasons


def test_features_skip_an_image_that_fails_to_decode(tmp_path):
    from tmdafm_core.features import compute_table

    for sample in range(2):
        _good(tmp_path, f"MoS2_syn_MoS2s{sample}_000.tif", sample)
    manifest = read_dataset(tmp_path)
    (tmp_path / "MoS2_syn_MoS2s1_000.tif").write_bytes(b"II*\x00garbage")  # damaged after it was listed
    table = compute_table(manifest, jobs=1, cache=False, progress=False)
    assert list(table["image"]) == ["MoS2_syn_MoS2s0_000.tif"]
    assert "not a readable image" in table.attrs["skipped"][0][1]
    with pytest.raises(ValueError, match="remove --strict"):
        compute_table(manifest, jobs=1, cache=False, progress=False, strict=True)


def test_feature_table_says_which_column_it_left_out_and_why(tmp_path):
    from tmdafm_core.data import read_feature_table

    (tmp_path / "t.csv").write_text("image,sample_id,material,f0,f1\na,s1,MoS2,1.0,2.0\nb,s2,WS2,3.0,oops\n"
                                    "c,s3,WS2,5.0,6.0\n")
    table = read_feature_table(tmp_path / "t.csv")
    assert table.feature_names == ["f0"]
    assert any("'f1' left out of the features: row 1 holds 'oops'" in note for note in table.guessed)


def test_array_valued_csv_column_is_detected_under_pandas_3(tmp_path):
    from tmdafm_core.data import read_feature_table

    (tmp_path / "t.csv").write_text('image,sample_id,material,vec\na,s1,MoS2,"[1, 2, 3]"\nb,s2,WS2,"[4, 5, 6]"\n')
    table = read_feature_table(tmp_path / "t.csv")
    assert table.features.shape == (2, 3) and table.feature_names[0] == "vec_0"


def test_leftovers_of_a_killed_writer_are_cleaned_and_a_failed_run_does_not_block_a_retry(tmp_path):
    import subprocess

    from tmdafm_core.training import remove_stale_temporaries

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".fold0.pt.{dead.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".fold1.pt.{os.getpid()}.tmp"
    alive.write_bytes(b"being written")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists() and alive.exists()


def test_a_run_folder_with_no_finished_fold_does_not_block_other_settings(tmp_path):
    import json

    from tmdafm_core.training import _check_resumable

    (tmp_path / "config.json").write_text(json.dumps({"lr": 0.1}))
    _check_resumable(tmp_path, {"lr": 0.2})  # the failed attempt left only its config
    (tmp_path / "fold0.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="holds a run with other settings"):
        _check_resumable(tmp_path, {"lr": 0.2})


def test_a_large_scan_is_scaled_without_full_size_float64_copies():
    import tracemalloc

    from tmdafm_core.data import normalize_height

    raw = (np.random.default_rng(0).random((2000, 2000)) * 65535).astype(np.uint16)
    tracemalloc.start()
    try:
        scaled = normalize_height(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert scaled.dtype == np.float32 and scaled.min() == 0.0 and scaled.max() == 1.0
    assert peak < 1.25 * scaled.nbytes  # before: a float64 copy and a float64 result besides (5x)
