"""Instrument files: formats (real Bruker and JPK files, Gwyddion and Igor files written here), channels, levelling,
the paper's crops, `tmdafm prepare` and raw folders as data sets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tmdafm_core.cli import main
from tmdafm_core.data import levelling, load_image, read_dataset, scans
from tmdafm_core.data.prepare import prepare_folder

DATA = Path(__file__).with_name("data")
BRUKER = DATA / "old_bruker.002"  # real, numbered Bruker file: 256 px over 15 µm
JPK = DATA / "sample_0.jpk-qi-image"  # real JPK QI image: 100 px over 0.5 µm


def write_gwy(path, height_m, *, side_m, channels=("Height",), height_side_m=None):
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    container = GwyContainer()
    for k, name in enumerate(channels):
        container[f"/{k}/data"] = GwyDataField(np.asarray(height_m, dtype=np.float64) * (k + 1), xreal=side_m,
                                               yreal=height_side_m or side_m, si_unit_xy=GwySIUnit(unitstr="m"),
                                               si_unit_z=GwySIUnit(unitstr="m"))
        container[f"/{k}/data/title"] = name
    container.tofile(str(path))
    return path


def write_ibw(path, height_m, *, side_m):
    from igorwriter import IgorWave

    wave = IgorWave(np.stack([height_m, 3 * height_m], axis=-1).transpose(1, 0, 2), name="scan")
    wave.set_dimlabel(2, 0, "HeightTrace")
    wave.set_dimlabel(2, 1, "AmplitudeTrace")
    wave.set_note(f"ScanRate: 1\rSlowScanSize: {side_m}\rFastScanSize: {side_m}\r")
    wave.save(str(path))
    return path


def tilted_film(size=200, seed=0):
    """Height (m) of islands 0.7 nm high on a substrate tilted in x and y, with a line offset per row."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    islands = ((xx // 25 + yy // 25) % 3 == 0) * 0.7
    lines = rng.normal(0, 0.3, size)[:, None]
    return (islands + 0.02 * xx + 0.01 * yy + lines + rng.normal(0, 0.02, (size, size))) * 1e-9


# --- formats and channels ---------------------------------------------------------------------------------------

def test_real_bruker_numbered_file_is_recognised_by_content(tmp_path):
    assert scans.raw_format(BRUKER) == "bruker"
    fake = tmp_path / "notes.002"
    fake.write_text("numbered, but not a Bruker file")
    assert scans.raw_format(fake) is None and not scans.is_raw_scan(fake)
    scan = scans.read_scan(BRUKER)
    assert scans.list_channels(BRUKER) == ["Height"] and scan.channel == "Height"
    assert scan.height_nm.shape == (256, 256) and scan.pixel_size_nm == pytest.approx(58.59375)
    assert scan.size_um == pytest.approx((15.0, 15.0))


def test_real_jpk_file_lists_channels_and_picks_the_height():
    channels = scans.list_channels(JPK)
    assert {"height_trace", "measuredHeight_trace", "adhesion_trace"} <= set(channels)
    scan = scans.read_scan(JPK)
    assert scan.channel == "height_trace" and scan.height_nm.shape == (100, 100)
    assert scan.pixel_size_nm == pytest.approx(5.0)
    other = scans.read_scan(JPK, channel="measuredHeight_trace")
    assert not np.allclose(other.height_nm, scan.height_nm)
    with pytest.raises(ValueError, match=r"sample_0.jpk-qi-image: .*'Phase' not in .*channel list"):
        scans.read_scan(JPK, channel="Phase")


def test_gwyddion_and_igor_files_written_by_their_libraries(tmp_path):
    height = tilted_film(64)
    gwy = write_gwy(tmp_path / "scan.gwy", height, side_m=1e-6, channels=("Height", "Amplitude"))
    ibw = write_ibw(tmp_path / "scan.ibw", height, side_m=1e-6)
    assert scans.list_channels(gwy) == ["Height", "Amplitude"]
    assert scans.list_channels(ibw) == ["HeightTrace", "AmplitudeTrace"]
    for path in (gwy, ibw):
        scan = scans.read_scan(path)
        assert scan.pixel_size_nm == pytest.approx(1000.0 / 64)
        # Heights in nm (the files hold metres); Igor rows come out flipped, as AFMReader reads them.
        assert np.allclose(np.sort(scan.height_nm.ravel()), np.sort(height.ravel() * 1e9))


def test_unreadable_and_unknown_files_are_refused_with_their_name(tmp_path):
    broken = tmp_path / "broken.gwy"
    broken.write_bytes(b"GWYP" + b"\x00" * 7)
    with pytest.raises(ValueError, match="broken.gwy"):
        scans.read_scan(broken)
    text = tmp_path / "x.txt"
    text.write_text("x")
    with pytest.raises(ValueError, match="not an instrument file"):
        scans.read_scan(text)
    with pytest.raises(FileNotFoundError, match="no such file"):
        scans.read_scan(tmp_path / "missing.spm")
    only_amplitude = write_gwy(tmp_path / "amp.gwy", tilted_film(40), side_m=1e-6, channels=("Amplitude",))
    with pytest.raises(ValueError, match=r"no height channel among \['Amplitude'\]; choose one with --channel"):
        scans.read_scan(only_amplitude)


# --- levelling --------------------------------------------------------------------------------------------------

def test_plane_level_removes_a_tilt_exactly_and_respects_the_mask():
    yy, xx = np.mgrid[:20, :30]
    plane = 3.0 + 0.2 * xx - 0.1 * yy
    assert np.allclose(levelling.plane_level(plane), 0.0)
    bump = plane.copy()
    bump[5:10, 5:10] += 50.0
    mask = np.zeros_like(bump, dtype=bool)
    mask[5:10, 5:10] = True
    levelled = levelling.plane_level(bump, mask)
    assert np.allclose(levelled[~mask], 0.0) and np.allclose(levelled[mask], 50.0)


def test_align_rows_median_and_polynomial():
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 5, 10)[:, None]
    rows = np.zeros((10, 40)) + offsets
    assert np.allclose(levelling.align_rows(rows), 0.0)
    x = np.linspace(-1, 1, 40)
    bowed = np.zeros((10, 40)) + 2.0 * x ** 2 - x + offsets
    assert np.allclose(levelling.align_rows(bowed, "polynomial", order=2), 0.0, atol=1e-9)
    assert not np.allclose(levelling.align_rows(bowed, "polynomial", order=1), 0.0, atol=1e-3)


def test_remove_scars_interpolates_a_jumped_line_only():
    rng = np.random.default_rng(1)
    height = rng.normal(0, 0.1, (30, 60))
    scarred = height.copy()
    scarred[12, 10:50] += 3.0
    fixed = levelling.remove_scars(scarred)
    assert np.abs(fixed[12, 10:50] - (height[11, 10:50] + height[13, 10:50]) / 2).max() < 1e-9
    assert np.array_equal(fixed[:12], height[:12]) and np.array_equal(fixed[13:], height[13:])
    assert np.array_equal(levelling.remove_scars(height), height)  # nothing to remove


def test_default_levelling_of_a_tilted_film_with_line_offsets():
    height = tilted_film(200) * 1e9
    levelled, steps = levelling.level(height)
    assert [s["step"] for s in steps] == ["plane", "rows", "scars", "mask", "plane", "rows", "zero"]
    islands = levelled > 0.35
    assert np.median(levelled[~islands]) == pytest.approx(0.0, abs=1e-9)
    assert np.median(levelled[islands]) == pytest.approx(0.7, abs=0.05)  # step height kept
    assert np.std(levelled[~islands]) < 0.06  # tilt and line offsets gone (noise 0.02 nm)
    assert levelling.level(height, "none")[0] is not height and np.array_equal(levelling.level(height, "none")[0],
                                                                               height)


def test_levelling_validation():
    with pytest.raises(ValueError, match="2-D map"):
        levelling.plane_level(np.zeros(5))
    with pytest.raises(ValueError, match="method must be one of"):
        levelling.align_rows(np.zeros((3, 3)), "mean")
    with pytest.raises(ValueError, match="order must be a whole number"):
        levelling.align_rows(np.zeros((3, 3)), "polynomial", order=-1)
    with pytest.raises(ValueError, match="mask has shape"):
        levelling.plane_level(np.zeros((3, 3)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="threshold_low <= threshold_high"):
        levelling.remove_scars(np.zeros((3, 3)), threshold_low=1.0, threshold_high=0.5)
    with pytest.raises(ValueError, match="k must be positive"):
        levelling.mask_tall_features(np.zeros((3, 3)), k=0)
    with pytest.raises(ValueError, match="levelling must be one of"):
        levelling.level(np.zeros((3, 3)), "magic")


# --- crops ------------------------------------------------------------------------------------------------------

def test_crop_boxes_central_tiles_and_refusals():
    assert scans.crop_boxes((500, 500), 5.0) == [(150, 150, 200, 200)]  # the central 1 µm of 2.5 µm
    tiles = scans.crop_boxes((500, 450), 5.0, tile=True)
    assert tiles == [(50, 25, 200, 200), (50, 225, 200, 200), (250, 25, 200, 200), (250, 225, 200, 200)]
    assert scans.crop_boxes((40, 50), 5.0, crop_um=None) == [(0, 0, 40, 50)]
    with pytest.raises(ValueError, match=r"scan.spm: a 1 µm crop would be 17 px, under 32 px a side \(scan 15 x 15 "):
        scans.crop_boxes((256, 256), 58.59375, source="scan.spm")
    with pytest.raises(ValueError, match=r"smaller than a 1 µm crop; use --no-crop"):
        scans.crop_boxes((100, 100), 5.0)


def test_prepare_scan_levels_the_whole_scan_then_crops_with_provenance(tmp_path):
    path = write_gwy(tmp_path / "film.gwy", tilted_film(200), side_m=2e-6)  # 10 nm/px, 2 µm
    (crop,) = scans.prepare_scan(path)
    assert crop.height_nm.shape == (100, 100) and crop.pixel_size_nm == pytest.approx(10.0)
    box = crop.provenance
    assert (box["crop_x0_um"], box["crop_x1_um"], box["crop_y0_um"], box["crop_y1_um"]) == (0.5, 1.5, 0.5, 1.5)
    assert box["scan_width_um"] == pytest.approx(2.0) and box["channel"] == "Height"
    assert [s["step"] for s in json.loads(box["levelling_steps"])][0] == "plane"
    assert len(scans.prepare_scan(path, tile=True)) == 4


# --- prepare, raw folders as data -------------------------------------------------------------------------------

@pytest.fixture
def raw_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for material, sample in (("MoS2", "s1"), ("WS2", "s2"), ("MoS2", "s3")):
        write_gwy(raw / f"{material}_afm_{sample}_000.gwy", tilted_film(200, seed=len(sample)), side_m=2e-6)
    shutil.copy(BRUKER, raw / "MoS2_afm_s9_000.002")  # 58.6 nm/px: a 1 µm crop is under 32 px, refused
    return raw


def test_prepare_writes_tiffs_manifest_and_provenance(raw_folder, tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["prepare", str(raw_folder), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 3 image(s) from 3 scan(s)" in captured.out
    assert "skipped MoS2_afm_s9_000.002: a 1 µm crop would be 17 px" in captured.err
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns[:5]) == ["path", "material", "sample_id", "split", "pixel_size_nm"]
    assert set(manifest["source_file"]) == {f"{m}_afm_{s}_000.gwy" for m, s in (("MoS2", "s1"), ("WS2", "s2"),
                                                                                ("MoS2", "s3"))}
    data = read_dataset(out)
    assert len(data) == 3 and set(data["width"]) == {100} and np.allclose(data["pixel_size_nm"], 10.0)
    assert {"source_file", "levelling", "crop_x0_um"} <= set(data.columns)
    image, pixel = load_image(data["path"].iloc[0])
    assert image.shape == (100, 100) and pixel == pytest.approx(10.0)
    # Tiles share their scan's sample id; a second prepare into the same folder replaces the first.
    assert main(["prepare", str(raw_folder), "--out", str(out), "--tile"]) == 0
    tiled = pd.read_csv(out / "manifest.csv")
    assert len(tiled) == 12 and tiled.groupby("source_file")["sample_id"].nunique().eq(1).all()
    assert len(list(out.glob("*.tif"))) == 12


def test_prepare_with_a_labels_csv_and_bad_options(raw_folder, tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"source": ["MoS2_afm_s1_000.gwy", "WS2_afm_s2_000.gwy"], "material": ["WSe2", "MoSe2"],
                  "sample_id": ["a", "b"], "split": ["train", "test"]}).to_csv(labels, index=False)
    out = tmp_path / "labelled"
    manifest = prepare_folder(raw_folder, out, labels=labels)
    assert dict(zip(manifest["source_file"], manifest["material"], strict=True)) == {
        "MoS2_afm_s1_000.gwy": "WSe2", "WS2_afm_s2_000.gwy": "MoSe2"}
    assert any("not in the labels CSV" in reason for _, reason in manifest.attrs["skipped"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert main(["prepare", str(raw_folder), "--out", str(tmp_path / "busy")]) == 2
    assert "not empty and not an earlier `tmdafm prepare` output" in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    assert main(["prepare", str(raw_folder), "--out", str(tmp_path / "x"), "--tile", "--no-crop"]) == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("source,material\nx,MoS2\n")
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['sample_id'\]"):
        prepare_folder(raw_folder, tmp_path / "y", labels=bad)
    with pytest.raises(ValueError, match="MoS2_afm_s9_000.002: a 1 µm crop would be 17 px"):
        prepare_folder(raw_folder, tmp_path / "z", strict=True)


def test_a_raw_folder_is_a_data_set_and_info_describes_one_file(raw_folder, capsys):
    data = read_dataset(raw_folder)
    assert len(data) == 3 and set(data["material"]) == {"MoS2", "WS2"}  # levelled, central 1 µm on reading
    assert data.attrs["skipped"][0][0].endswith("MoS2_afm_s9_000.002")
    assert set(data["levelling"]) == {"default"} and set(data["crop_x0_um"]) == {0.5}  # provenance travels along
    image, pixel = load_image(data["path"].iloc[0])
    assert image.shape == (100, 100) and 0.0 <= image.min() and image.max() == pytest.approx(1.0)
    assert main(["info", str(raw_folder)]) == 0
    listing = capsys.readouterr().out
    assert "instrument files (3; levelled, central crop):" in listing
    assert all(f"{m}_afm_{s}_000.gwy" in listing for m, s in (("MoS2", "s1"), ("WS2", "s2"), ("MoS2", "s3")))
    assert listing.count("gwyddion  Height") == 3 and "2 x 2" in listing and " 10 " in listing  # 10 nm pixels
    assert main(["info", str(JPK)]) == 0
    out = capsys.readouterr().out
    assert "jpk file, channels: " in out and "height channel: height_trace" in out
    assert "0.5 x 0.5 um, 5 nm/px" in out and "smaller than a 1 µm crop" in out


def test_commands_take_a_raw_folder_as_data(raw_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TMDAFM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "features.csv"
    assert main(["features", str(raw_folder), "--out", str(out), "--jobs", "1"]) == 0
    table = pd.read_csv(out)
    assert len(table) == 3 and np.allclose(table["pixel_size_nm"], 10.0)  # from the files, not 1 µm / width
    assert "skipped MoS2_afm_s9_000.002" in capsys.readouterr().err.replace(str(raw_folder) + "/", "")
    assert main(["info", str(raw_folder)]) == 0
    assert "MoS2" in capsys.readouterr().out


def test_non_square_pixels_are_resampled_to_square_and_said(tmp_path):
    height = tilted_film(128)
    path = write_gwy(tmp_path / "wide.gwy", height, side_m=2e-6, height_side_m=1e-6)  # 15.6 nm wide, 7.8 nm tall
    scan = scans.read_scan(path)
    assert scan.height_nm.shape == (64, 128) and scan.pixel_size_nm == pytest.approx(2000 / 128)
    assert scan.size_um == pytest.approx((2.0, 1.0))
    assert "non-square pixels" in scan.notes[0] and "128 rows resampled to 64" in scan.notes[0]
    assert scans.read_scan(BRUKER).notes == []  # square: untouched


def test_readings_agree_with_the_reader_librarys_own_values():
    from AFMReader import jpk, spm

    for path, load, channel in ((BRUKER, spm.load_spm, "Height"), (JPK, jpk.load_jpk, "height_trace")):
        image, pixel = load(path, channel)
        scan = scans.read_scan(path)
        assert scan.pixel_size_nm == pytest.approx(pixel)
        assert (scan.height_nm.min(), scan.height_nm.max()) == pytest.approx((image.min(), image.max()))


def test_bad_raw_files_get_one_line_each_and_the_others_are_still_read(raw_folder, tmp_path, capsys):
    data = BRUKER.read_bytes()
    (raw_folder / "MoS2_afm_s4_000.001").write_bytes(data[:90000])  # truncated pixel data
    (raw_folder / "MoS2_afm_s5_000.003").write_bytes(data[:4000])  # header cut short (pySPM would loop)
    (raw_folder / "WS2_afm_s6_000.spm").write_bytes(np.random.default_rng(0).bytes(5000))  # unknown binary
    write_gwy(raw_folder / "WS2_afm_s7_000.gwy", tilted_film(200), side_m=2e-6, channels=("Phase",))
    assert main(["info", str(raw_folder)]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "MoS2_afm_s4_000.001: truncated Bruker file: its image data end at byte 172032, the file has 90000" in err
    assert "MoS2_afm_s5_000.003: truncated or damaged Bruker file (no end of header" in err
    assert "WS2_afm_s6_000.spm: not a Bruker file" in err
    assert "WS2_afm_s7_000.gwy: no height channel among ['Phase']" in err
    assert "instrument files (3;" in captured.out  # the three good scans still read
    assert main(["info", str(raw_folder / "MoS2_afm_s4_000.001")]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "MoS2_afm_s4_000.001: truncated Bruker file" in message


def test_levelling_recovers_a_surface_with_tilt_row_offsets_and_a_scar():
    rng = np.random.default_rng(5)
    truth = rng.normal(0, 0.05, (128, 128))
    truth[40:80, 30:90] += 1.0  # one island, 1 nm high
    yy, xx = np.mgrid[:128, :128]
    raw = truth + 0.03 * xx - 0.02 * yy + rng.normal(0, 0.5, 128)[:, None]
    raw[100, 10:110] += 4.0  # a scar
    levelled, _ = levelling.level(raw)
    error = levelled - (truth - np.median(truth[truth < 0.5]))
    assert np.abs(np.median(error)) < 0.01 and np.percentile(np.abs(error), 99) < 0.15  # tolerance: 0.15 nm
    assert np.abs(levelled[100, 10:110]).max() < 0.5  # the scar is gone


def test_raw_scans_prepare_then_precompute_then_classify_end_to_end(tmp_path):
    """The path a lab takes: a folder of instrument files -> prepare -> precompute -> the app classifies a raw file."""
    from tmdafm_core import classify, pipeline
    from tmdafm_core.data import synthetic

    raw = tmp_path / "raw"
    raw.mkdir()
    for material in ("MoS2", "WS2", "WSe2"):
        for sample in range(4):
            params = dataclasses.replace(synthetic.sample_params(material, sample), scan_size_nm=2000.0)
            height, _ = synthetic.render_surface(params, 128, seed=sample)  # 2 µm at 15.6 nm/px
            suffix = "_test" if sample == 0 else ""
            write_gwy(raw / f"{material}_afm_{material}-s{sample}_000{suffix}.gwy", height * 1e-9, side_m=2e-6)
    data = tmp_path / "data"
    manifest = prepare_folder(raw, data, tile=True)  # four 1 µm tiles (64 px) per scan
    assert len(manifest) == 48 and set(manifest[manifest["split"] == "test"]["sample_id"]) == {
        f"{m}-s0" for m in ("MoS2", "WS2", "WSe2")}
    cache = tmp_path / "cache"
    # Every step, the sequential study at its smallest (one two-class stage): the scans' manifest reaches them all.
    profile = dataclasses.replace(pipeline.PROFILES["tiny"], volumes=("full",), umap_dims=(), n_boot=20,
                                  order=("MoS2", "WS2"), sequential_task="mtc")
    results = pipeline.precompute(cache, data, profile=profile)
    assert all(r.status in ("computed", "from cache") for r in results)
    stored = pipeline.load_manifest(cache)
    assert len(stored) == 48 and {"source_file", "crop_x0_um"} <= set(stored.columns)
    (result,) = classify.classify_uploads(cache, [("new.gwy", (raw / "WS2_afm_WS2-s1_000.gwy").read_bytes())])
    assert result["ok"] and result["material"] in ("MoS2", "WS2", "WSe2") and result["scan"]["format"] == "gwyddion"
    scan = str(raw / "WS2_afm_WS2-s1_000.gwy")
    assert main(["predict", str(cache / "runs" / "mtc"), scan, "--no-crop", "--out", str(tmp_path / "p.csv")]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted["image"]) == [scan] and predicted["material"].iloc[0] in ("MoS2", "WS2", "WSe2")


def test_no_crop_reads_whole_scans_and_is_cached_apart(raw_folder, tmp_path, capsys, monkeypatch):
    from tmdafm_core import pipeline, prepared

    monkeypatch.setenv("TMDAFM_CACHE", str(tmp_path / "cache"))
    whole = read_dataset(raw_folder, crop_um=None)  # the 15 µm Bruker scan, refused for a 1 µm crop, now reads too
    assert sorted(whole["width"]) == [200, 200, 200, 256] and whole["crop_um"].isna().all()
    assert set(read_dataset(raw_folder, crop_um=0.5)["width"]) == {50}
    image, _ = load_image(whole["path"].iloc[0], crop_um=None)
    assert image.shape == (200, 200)
    tables = {}
    for name, flags in (("crop", []), ("whole", ["--no-crop"])):
        out = tmp_path / f"{name}.csv"
        assert main(["features", str(raw_folder), "--out", str(out), "--jobs", "1", *flags]) == 0
        tables[name] = pd.read_csv(out)
    # Same files, other images: the descriptor cache must not hand back the crop's numbers for the whole scan.
    both = tables["crop"].merge(tables["whole"], on="image", suffixes=("_crop", "_whole"))
    assert len(both) == 3 and not np.allclose(both["grain_density_crop"], both["grain_density_whole"])
    capsys.readouterr()
    assert main(["info", str(raw_folder), "--no-crop"]) == 0
    assert "200x200 px (3), 256x256 px (1)" in capsys.readouterr().out
    assert main(["info", str(raw_folder), "--crop-um", "0"]) == 2
    assert "--crop-um must be positive" in capsys.readouterr().err
    profile = dataclasses.replace(pipeline.PROFILES["tiny"], scan_crop_um=None)
    assert prepared._dataset_settings(profile, raw_folder, tmp_path) != \
        prepared._dataset_settings(pipeline.PROFILES["tiny"], raw_folder, tmp_path)
