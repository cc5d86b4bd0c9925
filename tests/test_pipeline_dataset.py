"""The store's first steps: data set preparation (synthetic or given), thumbnails, the overview's tables."""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest

from tests.conftest import write_tmd_afm_folder
from tmdafm_core import pipeline, prepared
from tmdafm_core.pipeline import Profile

TINY = Profile("tiny", n=40, size=32, n_folds=3)


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    cache = tmp_path_factory.mktemp("store") / "cache"
    pipeline.complete_store(cache, profile=TINY)
    return cache


def _assert_sample_wise(manifest):
    partition = np.where(manifest["split"] == "test", -1, manifest["fold"])
    assert (manifest.assign(partition=partition).groupby("sample_id")["partition"].nunique() == 1).all()


def test_synthetic_store_holds_a_split_manifest(demo_store):
    manifest = pipeline.load_manifest(demo_store)
    assert len(manifest) == 40
    assert set(manifest["split"]) == {"train", "test"}
    assert set(manifest.loc[manifest["split"] == "train", "fold"]) == {0, 1, 2}
    assert (manifest.loc[manifest["split"] == "test", "fold"] == -1).all()
    _assert_sample_wise(manifest)
    assert (manifest[["height", "width"]] == 32).all().all()
    assert all((demo_store / "dataset" / "images" / image).is_file() for image in manifest["image"])
    record = json.loads((demo_store / "dataset" / "prepared.json").read_text())
    assert record["settings"]["source"] == {"kind": "synthetic", "n": 40, "size": 32, "seed": 0}
    assert not list((demo_store / "dataset").glob(".*.tmp"))


def test_second_run_is_skipped_and_a_changed_setting_rebuilds(tmp_path):
    cache = tmp_path / "cache"
    first = pipeline.prepare_dataset(cache, profile=TINY)
    stamp = (cache / "dataset" / "manifest.parquet").stat().st_mtime_ns
    steps = []
    again = pipeline.prepare_dataset(cache, profile=TINY, progress=lambda step, done, total: steps.append(step))
    assert (cache / "dataset" / "manifest.parquet").stat().st_mtime_ns == stamp
    assert steps == ["data set ready (from the store)"]
    assert again.drop(columns="path").equals(first.drop(columns="path"))
    rebuilt = pipeline.prepare_dataset(cache, profile=Profile("tiny", n=45, size=32, n_folds=3))
    assert len(rebuilt) == 45


def test_given_data_set_and_a_change_in_its_files(tmp_path):
    data = write_tmd_afm_folder(tmp_path / "data", samples=4, per_sample=2, size=32)
    cache = tmp_path / "cache"
    profile = Profile("small", n_folds=2)
    manifest = pipeline.prepare_dataset(cache, data, profile=profile)
    assert len(manifest) == 40 and not (cache / "dataset" / "images").exists()
    assert manifest.attrs["source"] == "tmd-afm"
    _assert_sample_wise(manifest)
    write_tmd_afm_folder(tmp_path / "more", materials=("MoS2",), samples=1, per_sample=2, size=32, test_samples=0,
                         seed=3)
    for path in (tmp_path / "more").iterdir():
        shutil.move(path, data / path.name.replace("MoS2s0", "MoS2s9"))
    assert len(pipeline.prepare_dataset(cache, data, profile=profile)) == 42


def test_interrupted_preparation_leaves_no_data_set_and_resumes(tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "split_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.prepare_dataset(cache, profile=TINY)
    assert not pipeline.store_ready(cache)
    with pytest.raises(FileNotFoundError, match="no prepared data set"):
        pipeline.load_manifest(cache)
    monkeypatch.undo()
    assert len(pipeline.prepare_dataset(cache, profile=TINY)) == 40


def test_store_can_move(demo_store, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(demo_store, moved)
    manifest = pipeline.load_manifest(moved)
    assert all(path.startswith(str(moved)) for path in manifest["path"])
    assert pipeline.prepare_dataset(moved, profile=TINY)["path"].iloc[0].startswith(str(moved))


def test_complete_store_keeps_a_data_set_from_data(tmp_path):
    data = write_tmd_afm_folder(tmp_path / "data", samples=3, per_sample=2, size=32)
    cache = tmp_path / "cache"
    pipeline.prepare_dataset(cache, data, profile=Profile("small", n_folds=2))
    pipeline.complete_store(cache, profile=TINY)
    assert pipeline.load_manifest(cache).attrs["source"] == "tmd-afm"
    assert pipeline.store_ready(cache)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown profile"):
        pipeline.prepare_dataset(tmp_path / "c", profile="huge")
    with pytest.raises(FileNotFoundError, match="no such file"):
        pipeline.prepare_dataset(tmp_path / "c", tmp_path / "absent")
    unlabelled = tmp_path / "plain"
    unlabelled.mkdir()
    from tmdafm_core.data import save_tiff

    save_tiff(unlabelled / "a.tif", np.zeros((32, 32)), pixel_size_nm=4.0)
    with pytest.raises(ValueError, match="no material labels"):
        pipeline.prepare_dataset(tmp_path / "c", unlabelled)
    with pytest.raises(ValueError, match="thumbnail size"):
        pipeline.prepare_thumbnails(tmp_path / "c", size=4)
    with pytest.raises(FileNotFoundError, match="no prepared data set"):
        pipeline.prepare_thumbnails(tmp_path / "c")


def test_thumbnails_are_small_pngs_and_resume(demo_store, tmp_path):
    manifest = pipeline.load_manifest(demo_store)
    folder = demo_store / "thumbnails"
    assert len(list(folder.glob("*.png"))) == len(manifest)
    uri = pipeline.thumbnail_uri(demo_store, manifest["image"].iloc[0])
    assert uri.startswith("data:image/png;base64,") and len(uri) < 40_000
    assert pipeline.thumbnail_uri(demo_store, "not/an/image.tif") is None

    cache = tmp_path / "cache"
    shutil.copytree(demo_store, cache)
    marker = json.loads((cache / "thumbnails" / "thumbnails.json").read_text())
    (cache / "thumbnails" / "thumbnails.json").write_text(json.dumps({**marker, "complete": False}))
    lost = cache / "thumbnails" / pipeline.thumbnail_name(manifest["image"].iloc[3])
    lost.unlink()
    kept = cache / "thumbnails" / pipeline.thumbnail_name(manifest["image"].iloc[0])
    stamp = kept.stat().st_mtime_ns
    pipeline.prepare_thumbnails(cache)
    assert lost.is_file() and kept.stat().st_mtime_ns == stamp
    assert pipeline.store_ready(cache)


def test_example_thumbnails_spread_over_samples(demo_store):
    examples = pipeline.example_thumbnails(demo_store, per_material=3)
    assert list(examples) == ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"]
    mos2 = examples["MoS2"]
    assert len(mos2) == 3 and len({item["sample_id"] for item in mos2}) == 3
    assert all(item["uri"].startswith("data:image/png;base64,") for items in examples.values() for item in items)


def test_split_table_adds_up(demo_store):
    table = pipeline.split_table(pipeline.load_manifest(demo_store))
    rows = table.drop(index="total")
    assert list(rows.index) == ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"]
    assert (table["train_pool"] + table["test"] == table["images"]).all()
    folds = table[[f"val_fold_{k}" for k in range(3)]]
    assert (folds.sum(axis=1) == table["train_pool"]).all()
    assert np.allclose(table["train_mean"] + table["val_mean"], table["train_pool"])
    assert (rows[["train_pool", "test", "images", "samples"]].sum() ==
            table.loc["total", ["train_pool", "test", "images", "samples"]]).all()


def test_dataset_overview_and_store_contents(demo_store, tmp_path):
    empty = pipeline.dataset_overview(tmp_path / "nothing")
    assert not empty["prepared"]
    assert [a.key for a in empty["artifacts"]] == list(pipeline.STEPS)
    assert [a.present for a in empty["artifacts"]] == [False] * len(pipeline.STEPS)
    assert all(a.command.startswith("tmdafm precompute ") for a in empty["artifacts"])

    overview = pipeline.dataset_overview(demo_store)
    assert overview["prepared"] and overview["synthetic"]
    assert overview["n_images"] == 40 and overview["n_folds"] == 3
    assert overview["elements"] == ["Mo", "W", "S", "Se"]
    assert overview["element_matrix"].tolist()[-1] == [1, 1, 0, 1]  # Mo-WSe2
    assert overview["image_sizes"] == [(32, 32, 40)]
    assert overview["pixel_size_nm"] == pytest.approx((1000 / 32,) * 3)
    assert overview["scan_size_nm"] == pytest.approx(1000)
    present = {a.key for a in overview["artifacts"] if a.present}
    assert present == {"dataset", "thumbnails"}
    commands = {a.key: a.command for a in overview["artifacts"]}
    # A custom profile is spelled out as the named profile plus the settings that differ.
    assert "--profile tiny" in commands["mtc"] and "--n 40" in commands["mtc"] and "--folds 3" in commands["mtc"]
    assert commands["mtc"].endswith("--steps mtc")


def test_store_contents_commands_run(demo_store, tmp_path, capsys):
    """The command shown for a missing artifact is a real command that builds it (here: the atlas)."""
    from tmdafm_core.cli import main

    cache = tmp_path / "cache"
    shutil.copytree(demo_store, cache)
    (cache / "thumbnails" / "atlas.json").unlink()
    (cache / "store.json").unlink()
    command = {a.key: a.command for a in pipeline.store_contents(cache)}["thumbnails"]
    assert main(shlex.split(command)[1:]) == 0
    assert "thumbnails" in capsys.readouterr().out
    atlas = json.loads((cache / "thumbnails" / "atlas.json").read_text())
    assert sorted(atlas) == sorted(pipeline.load_manifest(cache)["image"])
    assert all(uri.startswith("data:image/png;base64,") for uri in atlas.values())
    assert {a.key for a in pipeline.store_contents(cache) if a.present} == {"dataset", "thumbnails"}


def test_corrupt_manifest_is_never_served_and_is_rebuilt_from_the_recorded_profile(demo_store, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(demo_store, cache)
    (cache / "dataset" / "manifest.parquet").write_bytes(b"PAR1 truncated")
    assert not pipeline.store_ready(cache)
    with pytest.raises(FileNotFoundError, match="no prepared data set"):
        pipeline.load_manifest(cache)
    pipeline.complete_store(cache, profile="demo")  # the store says it was built with TINY: rebuilt as TINY
    assert len(pipeline.load_manifest(cache)) == 40
    assert pipeline.store_ready(cache)
