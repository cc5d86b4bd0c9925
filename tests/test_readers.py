import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tmdafm_core.data import MANIFEST_COLUMNS, read_dataset, read_feature_table, save_tiff
from tmdafm_core.data.readers import read_tmd_afm_folder

from .conftest import write_tmd_afm_folder


def test_tmd_afm_layout(tmd_afm_folder):
    manifest = read_dataset(tmd_afm_folder)
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest.attrs["source"] == "tmd-afm" and manifest.attrs["skipped"] == []
    assert len(manifest) == 5 * 4 * 3
    row = manifest.loc[manifest["image"] == "MoS2_afm_MoS2s0_00_test.tif"].iloc[0]
    assert (row["material"], row["sample_id"], row["split"]) == ("MoS2", "MoS2s0", "test")
    assert row["pixel_size_nm"] == pytest.approx(4.0) and (row["height"], row["width"]) == (48, 48)
    assert (manifest["split"] == "test").sum() == 15


def test_tmd_afm_without_test_marks_leaves_split_open(tmp_path):
    folder = write_tmd_afm_folder(tmp_path / "d", test_samples=0, samples=2, per_sample=1)
    assert read_dataset(folder)["split"].isna().all()


def test_skipped_files_are_reported_and_strict_raises(tmd_afm_folder):
    (tmd_afm_folder / "MoS2_afm_broken_00.tif").write_bytes(b"garbage")
    (tmd_afm_folder / "notes.txt").write_text("lab notes")
    (tmd_afm_folder / "Unobtainium_afm_s1_00.tif").write_bytes(b"x")
    manifest = read_dataset(tmd_afm_folder)
    skipped = dict((p.rsplit("/", 1)[-1], r) for p, r in manifest.attrs["skipped"])
    assert "not a readable image" in skipped["MoS2_afm_broken_00.tif"]
    assert "not an image type" in skipped["notes.txt"]
    assert "not an element symbol" in skipped["Unobtainium_afm_s1_00.tif"] or \
        "not a chemical formula" in skipped["Unobtainium_afm_s1_00.tif"]
    with pytest.raises(ValueError, match="notes.txt: not an image type"):
        read_tmd_afm_folder(tmd_afm_folder, strict=True)
    (tmd_afm_folder / "notes.txt").unlink()
    with pytest.raises(ValueError, match="broken_00.tif: not a readable image"):
        read_tmd_afm_folder(tmd_afm_folder, strict=True)


def test_class_folders(tmp_path):
    for material in ("MoS2", "WSe2"):
        (tmp_path / material).mkdir()
        for i in range(3):
            Image.fromarray((np.random.default_rng(i).random((40, 60)) * 255).astype(np.uint8)).save(
                tmp_path / material / f"scan{i}.png")
    manifest = read_dataset(tmp_path)
    assert manifest.attrs["source"] == "class-folders"
    assert sorted(manifest["material"].unique()) == ["MoS2", "WSe2"]
    assert manifest["sample_id"].nunique() == 6  # no sample ids in the names: one sample per image
    assert manifest.attrs["notes"] and manifest["pixel_size_nm"].iloc[0] == pytest.approx(1000 / 60)


def test_class_folder_with_no_images_is_an_error(tmp_path):
    (tmp_path / "MoS2").mkdir()
    (tmp_path / "WS2").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "WS2" / "a.png")
    with pytest.raises(ValueError, match="MoS2.*holds no images"):
        read_dataset(tmp_path)


def test_class_folder_not_a_material(tmp_path):
    (tmp_path / "blurry").mkdir()
    with pytest.raises(ValueError, match="blurry: folder name is not a material"):
        read_dataset(tmp_path)


def test_manifest_csv_with_extra_columns(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = []
    for i, material in enumerate(["MoS2", "WS2", "MoS2", "Mo-WSe2"]):
        save_tiff(images / f"{i}.tif", np.random.default_rng(i).random((32, 32)), pixel_size_nm=2.0)
        rows.append({"path": f"img/{i}.tif", "material": material, "sample_id": f"s{i // 2}",
                     "split": ["train", "val", "test", "train"][i], "pixel_size_nm": 8.0, "truth_x": i * 1.5})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    manifest = read_dataset(tmp_path)
    assert manifest.attrs["source"] == "manifest-csv"
    assert list(manifest["split"]) == ["train", "train", "test", "train"]
    assert (manifest["pixel_size_nm"] == 8.0).all()  # the manifest wins over the TIFF tags
    assert list(manifest["truth_x"]) == [0.0, 1.5, 3.0, 4.5]


@pytest.mark.parametrize("change, match", [
    (lambda t: t.drop(columns="sample_id"), r"missing column\(s\) \['sample_id'\]"),
    (lambda t: t.assign(material=["MoS2", "Kryptonite"]), "line 3: material name 'Kryptonite'"),
    (lambda t: t.assign(split=["train", "later"]), "line 3: split 'later'"),
    (lambda t: t.assign(pixel_size_nm=[1.0, -2.0]), "line 3: pixel_size_nm must be positive"),
])
def test_manifest_csv_errors(tmp_path, change, match):
    for i in range(2):
        save_tiff(tmp_path / f"{i}.tif", np.zeros((4, 4)), pixel_size_nm=1.0)
    table = pd.DataFrame({"path": ["0.tif", "1.tif"], "material": ["MoS2", "WS2"], "sample_id": ["a", "b"]})
    change(table).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match=match):
        read_dataset(tmp_path / "m.csv")


def test_manifest_csv_missing_file_is_skipped(tmp_path):
    save_tiff(tmp_path / "0.tif", np.zeros((32, 32)), pixel_size_nm=1.0)
    pd.DataFrame({"path": ["0.tif", "gone.tif"], "material": ["MoS2", "WS2"], "sample_id": ["a", "b"]}).to_csv(
        tmp_path / "m.csv", index=False)
    manifest = read_dataset(tmp_path / "m.csv")
    assert len(manifest) == 1 and "not found" in manifest.attrs["skipped"][0][1]
    with pytest.raises(ValueError, match="gone.tif: listed on line 3"):
        read_dataset(tmp_path / "m.csv", strict=True)


def test_plain_image_folder(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((40, 40), i * 40, np.uint8)).save(tmp_path / f"scan {i}.png")
    manifest = read_dataset(tmp_path)
    assert manifest.attrs["source"] == "images"
    assert manifest["material"].isna().all() and manifest["split"].isna().all()
    assert list(manifest["sample_id"]) == ["scan 0", "scan 1", "scan 2"]


def test_empty_and_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="empty folder"):
        read_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_dataset(tmp_path / "nope")
    (tmp_path / "x.tif").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable images found; skipped 1"):
        read_dataset(tmp_path)


# --- feature tables ---

def _features_frame(n=6):
    rng = np.random.default_rng(0)
    return pd.DataFrame({"sampleId": [f"s{i // 2}" for i in range(n)], "target": ["MoS2", "WS2"] * (n // 2),
                         "f0": rng.random(n), "f1": rng.random(n), "f2": rng.random(n)})


def test_feature_table_numeric_columns_csv(tmp_path):
    _features_frame().to_csv(tmp_path / "t.csv", index=False)
    table = read_feature_table(tmp_path / "t.csv")
    assert table.features.shape == (6, 3) and table.feature_names == ["f0", "f1", "f2"]
    assert list(table.frame["sample_id"][:2]) == ["s0", "s0"] and table.frame["material"][1] == "WS2"
    assert any("'sampleId' (guessed)" in g for g in table.guessed)
    assert any("'target' (guessed)" in g for g in table.guessed)


def test_feature_table_array_column_parquet_and_pickle(tmp_path):
    frame = _features_frame()
    vectors = frame[["f0", "f1", "f2"]].to_numpy()
    frame = frame.drop(columns=["f0", "f1", "f2"]).assign(embedding=list(vectors))
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_pickle(tmp_path / "t.pkl")
    for name in ("t.parquet", "t.pkl"):
        table = read_feature_table(tmp_path / name)
        np.testing.assert_allclose(table.features, vectors, rtol=1e-6)
        assert table.feature_names[0] == "embedding_0"


def test_feature_table_explicit_columns(tmp_path):
    frame = _features_frame().rename(columns={"sampleId": "wafer", "target": "film"})
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = read_feature_table(tmp_path / "t.csv", sample_col="wafer", label_col="film", feature_cols=["f1"])
    assert table.features.shape == (6, 1) and table.guessed == []


@pytest.mark.parametrize("kwargs, match", [
    ({"sample_col": "nope"}, "no column 'nope' for the sample id"),
    ({"feature_cols": ["missing"]}, r"feature column\(s\) \['missing'\] not found"),
    ({"feature_cols": ["target"], "label_col": "f0"}, "not numeric|not hold numeric"),
])
def test_feature_table_column_errors(tmp_path, kwargs, match):
    _features_frame().to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=match):
        read_feature_table(tmp_path / "t.csv", **kwargs)


def test_feature_table_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_feature_table(tmp_path / "none.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match="unsupported table type"):
        read_feature_table(tmp_path / "t.xlsx")
    (tmp_path / "t.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable .parquet table"):
        read_feature_table(tmp_path / "t.parquet")
    _features_frame().assign(f0=np.nan).to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(ValueError, match="non-finite"):
        read_feature_table(tmp_path / "nan.csv")
    _features_frame().assign(target="Vibranium").to_csv(tmp_path / "lab.csv", index=False)
    with pytest.raises(ValueError, match="column 'target'"):
        read_feature_table(tmp_path / "lab.csv")


def test_paper_file_names_are_read_as_the_papers_reader_does(tmp_path):
    """The public data set's names: name.split('_')[1] is the material, [3] the integer sample id."""
    rng = np.random.default_rng(0)
    names = ["20210312_MoS2_5um_12_003.tif", "20210312_MoS2_5um_12_004.tif", "20210401_WSe2_5um_7_001_test.tif",
             "20210402_WSe2_5um_8_001.tif", "20210402_Mo-WSe2_5um_31_002.tif"]
    for name in names:
        save_tiff(tmp_path / name, rng.random((40, 40)), pixel_size_nm=3.90625)
    manifest = read_dataset(tmp_path)
    assert manifest.attrs["source"] == "tmd-afm" and manifest.attrs["naming"] == "paper"
    rows = manifest.set_index("image")
    assert tuple(rows.loc[names[0], ["material", "sample_id", "split"]]) == ("MoS2", "12", "train")
    assert tuple(rows.loc[names[2], ["material", "sample_id", "split"]]) == ("WSe2", "7", "test")
    assert rows.loc[names[4], "material"] == "Mo-WSe2"
    from tmdafm_core.data import dataset_summary

    assert "field 1 = material, field 3 = integer sample id" in dataset_summary(manifest)


def test_material_first_names_still_read_and_say_so(tmd_afm_folder):
    from tmdafm_core.data import dataset_summary

    manifest = read_dataset(tmd_afm_folder)
    assert manifest.attrs["naming"] == "material-first"
    assert "field 0 = material, field 2 = sample id" in dataset_summary(manifest)


def test_paper_names_need_an_integer_sample_id():
    from tmdafm_core.data import parse_tmd_afm_name

    assert parse_tmd_afm_name("x_WS2_y_0042_test.tif", "paper") == ("WS2", "42", True)
    with pytest.raises(ValueError, match="not an integer sample id"):
        parse_tmd_afm_name("x_WS2_y_s42.tif", "paper")
    with pytest.raises(ValueError, match="at least 4"):
        parse_tmd_afm_name("x_WS2_y.tif", "paper")
    with pytest.raises(ValueError, match="unknown naming convention"):
        parse_tmd_afm_name("x_WS2_y_1.tif", "by-date")
