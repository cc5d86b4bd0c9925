"""tmdafm precompute end to end on the tiny profile: every artifact, warm rerun, resume, invalidation, corruption,
a writer killed mid-step, and readers during a write."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest

from tmdafm_core import pipeline, store
from tmdafm_core.embeddings import procrustes_align

from .stores import STORE_PROFILE as PROFILE
from .stores import link_copy


def _statuses(results):
    return {r.step: r.status for r in results}


def test_precompute_resumes_after_stopping_between_steps(tiny_store):
    _, first, second, _ = tiny_store
    assert [r.step for r in first] == ["dataset", "descriptors"]
    assert all(r.status == "computed" and r.reason == "not in the store" for r in first)
    statuses = _statuses(second)
    reported = [s for s in pipeline.STEPS if s != "pretrain"]  # the tiny profile does not pretrain
    assert list(statuses) == reported
    assert statuses["dataset"] == statuses["descriptors"] == "from cache"
    assert [s for s, v in statuses.items() if v == "computed"] == [s for s in reported
                                                                    if s not in ("dataset", "descriptors")]


def test_store_holds_every_artifact_in_the_agreed_layout(tiny_store):
    cache, _, _, reports = tiny_store
    manifest = pipeline.load_manifest(cache)
    assert len(manifest) == 80
    record = store.read_record(cache)
    assert all(record[step]["status"] == "done" for step in pipeline.STEPS)
    assert record["mtc"]["settings"]["train"]["epochs"] == 1
    assert record["latent-mtc"]["inputs"] == {"mtc": record["mtc"]["output"],
                                              "descriptors": record["descriptors"]["output"]}
    assert all(a.present for a in pipeline.store_contents(cache))

    atlas = json.loads((cache / "thumbnails" / "atlas.json").read_text())
    assert sorted(atlas) == sorted(manifest["image"])
    features = pd.read_csv(cache / "features.csv")
    assert list(features.columns[:2]) == ["image", "rms_roughness"] and len(features.columns) == 15
    for task in ("mtc", "mtl"):
        assert json.loads((cache / "runs" / task / "metrics.json").read_text())["task"] == task
        latent = cache / "latent" / task
        projection = pd.read_csv(latent / "projection.csv")
        assert {"PC1", "PC10", "split"} <= set(projection.columns) and "UMAP1" not in projection.columns
        assert len(projection) == 80
        assert (latent / "table5.csv").is_file() and (latent / "projection.npz").is_file()
        predictions = pd.read_csv(latent / "predictions.csv")
        assert list(predictions.columns[:7]) == ["image", "sample_id", "material", "split", "fold", "predicted",
                                                 "correct"]
        classes = [c for c in predictions.columns if c in ("p_MoS2", "p_WS2", "p_WSe2", "p_MoSe2", "p_Mo-WSe2")]
        assert len(classes) == 5 and np.allclose(predictions[classes].sum(axis=1), 1, atol=1e-4)
        assert ("p_Se" in predictions.columns) == (task == "mtl")
        assert (predictions["correct"] == (predictions["predicted"] == predictions["material"])).all()
        assert list(predictions.columns[-4:]) == ["agreement", "spread", "novelty", "unfamiliar"]  # fold ensemble
        assert predictions["novelty"].notna().all() and set(predictions["unfamiliar"]) <= {True, False}
    results = pd.read_csv(cache / "sequential" / "results.csv")
    assert set(results["task"]) == {"mtc", "mtl"} and set(results["n_classes"]) == {2, 3}
    for task in ("mtc", "mtl"):
        for mode in ("imagenet", "sequential"):
            stages = [pd.read_csv(cache / "latent" / "sequential" / task / mode / f"{n}cls" / "projection.csv")
                      for n in (2, 3)]
            assert set(stages[0]["label"]) == {"MoS2", "WS2"} and set(stages[1]["label"]) == {"MoS2", "WS2", "WSe2"}
            assert {"PC1", "PC2", "split"} <= set(stages[1].columns)
    assert not list(cache.glob(".*.partial")) and not list((cache / "runs").glob(".*"))
    steps_reported = [step for step, _, _ in reports]
    assert "mtc: computing (not in the store)" in steps_reported
    assert steps_reported[-1] == "sequential latent projections"


def test_warm_rerun_serves_everything_from_the_store(tiny_store):
    cache = tiny_store[0]
    start = time.perf_counter()
    results = pipeline.precompute(cache, profile=PROFILE)
    assert set(_statuses(results).values()) == {"from cache"}
    assert time.perf_counter() - start < 10
    summary = pipeline.format_summary(results, cache)
    assert "0 step(s) computed, 9 from the cache" in summary and f"tmdafm app --cache {cache}" in summary
    assert "pretrain" not in summary  # the tiny profile does not pretrain


def test_changed_setting_recomputes_only_what_depends_on_it(tiny_store, tmp_path):
    cache = link_copy(tiny_store[0], tmp_path / "cache")
    results = pipeline.precompute(cache, profile=dataclasses.replace(PROFILE, n_boot=20))
    computed = {r.step: r.reason for r in results if r.status == "computed"}
    assert computed == {"latent-mtc": "settings changed", "latent-mtl": "settings changed"}
    assert store.read_record(cache)["latent-mtc"]["settings"]["n_boot"] == 20
    original = store.read_record(tiny_store[0])
    assert original["latent-mtc"]["settings"]["n_boot"] == PROFILE.n_boot  # intact


def test_corrupt_entries_are_reported_and_recomputed_never_served(tiny_store, tmp_path):
    cache = link_copy(tiny_store[0], tmp_path / "cache")
    features = (cache / "features.csv").read_bytes()
    (cache / "features.csv").unlink()
    (cache / "features.csv").write_bytes(features[: len(features) // 2])
    checkpoint = cache / "runs" / "mtc" / "fold1.pt"
    checkpoint.unlink()
    checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint")
    kept = (cache / "runs" / "mtc" / "fold0.pt").stat().st_ino
    thumbnail = next((cache / "thumbnails").glob("*.png"))
    size = thumbnail.stat().st_size
    thumbnail.unlink()
    thumbnail.write_bytes(b"\x89PNG\r\n\x1a\n".ljust(size, b"\0"))  # same size, damaged pixels
    results = pipeline.precompute(cache, profile=PROFILE)
    computed = {r.step: r.reason for r in results if r.status == "computed"}
    assert computed["descriptors"].startswith("corrupt: features.csv")
    assert computed["mtc"].startswith("corrupt: runs/mtc/fold1.pt")
    assert computed["latent-mtc"] == "input changed: mtc, descriptors"
    assert computed["latent-mtl"] == "input changed: descriptors"
    assert computed["thumbnails"].startswith(f"corrupt: thumbnails/{thumbnail.name}: content changed")
    assert set(computed) == {"thumbnails", "descriptors", "mtc", "latent-mtc", "latent-mtl"}
    assert store.check_files(cache, store.read_record(cache)["thumbnails"]["files"]) is None
    assert thumbnail.read_bytes() == (tiny_store[0] / "thumbnails" / thumbnail.name).read_bytes()  # made again, whole
    assert pd.read_csv(cache / "features.csv").shape == (80, 15)
    assert (cache / "runs" / "mtc" / "fold0.pt").stat().st_ino == kept  # only the damaged fold was retrained
    assert store.check_files(cache, store.read_record(cache)["mtc"]["files"]) is None


_KILLED_WRITER = """
import sys, dataclasses
from tmdafm_core import pipeline
pipeline.precompute(sys.argv[1], profile=dataclasses.replace(pipeline.PROFILES["tiny"], volumes=("full",),
                                                            umap_dims=()), steps=["mtc"])
"""


def test_writer_killed_mid_step_leaves_a_consistent_store_that_resumes(tiny_store, tmp_path):
    cache = link_copy(tiny_store[0], tmp_path / "cache")
    store.update_step(cache, "mtc", None)  # as if mtc had never been trained
    shutil.rmtree(cache / "runs" / "mtc")
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(cache)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache / "runs" / ".mtc.partial" / "splits.csv").is_file():
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    record = store.read_record(cache)
    assert record["mtc"]["status"] == "running"  # never reported done
    assert not (cache / "runs" / "mtc").exists()  # nothing half-trained where readers look
    assert not {a.key for a in pipeline.store_contents(cache) if a.present} & {"mtc"}
    results = pipeline.precompute(cache, profile=PROFILE, steps=["latent-mtc"])
    computed = {r.step: r.reason for r in results if r.status == "computed"}
    assert computed == {"mtc": "interrupted earlier", "latent-mtc": "input changed: mtc"}
    assert store.step_done(cache, "mtc") and (cache / "runs" / "mtc" / "metrics.json").is_file()


def test_readers_during_a_recompute_only_see_whole_files(tiny_store, tmp_path):
    cache = link_copy(tiny_store[0], tmp_path / "cache")
    stop, problems, reads = threading.Event(), [], [0]

    def read():
        while not stop.is_set():
            try:
                table = pd.read_csv(cache / "latent" / "mtc" / "table5.csv")
                projection = pd.read_csv(cache / "latent" / "mtc" / "projection.csv")
                assert len(table) == 14 and len(projection) == 80
                store.read_record(cache)["latent-mtc"]
                reads[0] += 1
            except Exception as exc:
                problems.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        pipeline.precompute(cache, profile=dataclasses.replace(PROFILE, n_boot=21), steps=["latent-mtc"])
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert problems == [] and reads[0] > 0


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown step 'umap'"):
        pipeline.precompute(tmp_path / "c", profile=PROFILE, steps=["umap"])
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        pipeline.precompute(tmp_path / "c", profile="fast")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        pipeline.precompute(tmp_path / "file", profile=PROFILE)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        pipeline.precompute(tmp_path / "c", tmp_path / "missing", profile=PROFILE)


def test_cli_precompute_prints_the_summary(tiny_store, tmp_path, capsys):
    from tmdafm_core.cli import main

    cache = link_copy(tiny_store[0], tmp_path / "cache")
    assert main(["precompute", "--out", str(cache), *pipeline.profile_arguments(PROFILE),
                 "--steps", "latent-sequential"]) == 0
    out = capsys.readouterr().out
    assert "latent-sequential  from cache" in out and "tmdafm app --cache" in out
    assert main(["precompute", "--out", str(cache), "--steps", "nothing"]) == 2


def test_sequential_configs_point_at_start_checkpoints_that_exist_in_the_store(tiny_store):
    cache = tiny_store[0]
    configs = [json.loads(p.read_text()) | {"_dir": p.parent} for p in (cache / "sequential").rglob("config.json")]
    starts = [(c["_dir"] / path).resolve() for c in configs for path in c.get("fold_weights", {}).values()]
    assert starts and all(path.is_file() and cache.resolve() in path.parents for path in starts)
    assert not any(".partial" in str(path) for path in starts)


def test_precompute_refuses_a_folder_of_the_users_files(tmp_path, capsys):
    from tmdafm_core.cli import main

    folder = tmp_path / "my_results"
    (folder / "thumbnails").mkdir(parents=True)
    (folder / "thumbnails" / "notes.txt").write_text("mine")
    (folder / "features.csv").write_text("image,x\n")
    with pytest.raises(ValueError, match="not empty and not a tmdafm store"):
        pipeline.precompute(folder, profile=PROFILE, steps=["dataset"])
    assert main(["precompute", "--out", str(folder), "--profile", "tiny", "--steps", "dataset"]) == 2
    assert "not empty and not a tmdafm store" in capsys.readouterr().err
    assert (folder / "thumbnails" / "notes.txt").read_text() == "mine"
    assert (folder / "features.csv").read_text() == "image,x\n"
    assert not (folder / "dataset").exists()


def test_a_folder_holding_only_the_descriptor_memo_becomes_a_store(tmp_path):
    """`tmdafm features` with the default cache leaves CACHE/diskcache/ before any store exists: that folder is ours."""
    from tmdafm_core.store import open_store

    folder = tmp_path / "cache"
    with open_store(folder) as memo:
        memo.put("key", [1.0])
    pipeline.precompute(folder, profile=PROFILE, steps=["dataset"])
    assert (folder / pipeline.STORE_MARKER).is_file()
    (tmp_path / "other" / "diskcache").mkdir(parents=True)  # a folder of that name that is not a memo stays foreign
    with pytest.raises(ValueError, match="not empty and not a tmdafm store"):
        pipeline.precompute(tmp_path / "other", profile=PROFILE, steps=["dataset"])


def test_inside_a_store_only_recorded_files_are_replaced(tiny_store, tmp_path):
    cache = link_copy(tiny_store[0], tmp_path / "cache")
    assert (cache / pipeline.STORE_MARKER).is_file()
    (cache / "latent" / "mtc" / "my_analysis.csv").write_text("mine")
    with pytest.raises(ValueError, match=r"latent/mtc: holds 1 file\(s\) the store did not write"):
        pipeline.precompute(cache, profile=dataclasses.replace(PROFILE, n_boot=21), steps=["latent-mtc"])
    assert (cache / "latent" / "mtc" / "my_analysis.csv").read_text() == "mine"
    (cache / "latent" / "mtc" / "my_analysis.csv").unlink()
    results = {r.step: r.status for r in pipeline.precompute(cache, profile=dataclasses.replace(PROFILE, n_boot=21),
                                                             steps=["latent-mtc"])}
    assert results["latent-mtc"] == "computed"


def test_a_checkpoint_damaged_without_changing_its_size_is_found_and_made_again(tiny_store, tmp_path):
    """The audit's case: bytes of a large checkpoint overwritten in place, same size; it used to be "from the cache"
    and predict printed NaN probabilities."""
    import torch

    from tmdafm_core.training import load_run, predict

    cache = link_copy(tiny_store[0], tmp_path / "cache")
    checkpoint = cache / "runs" / "mtc" / "fold0.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model"]["head.out.bias"] = torch.full_like(state["model"]["head.out.bias"], float("nan"))
    damaged = tmp_path / "damaged.pt"
    torch.save(state, damaged)
    size = checkpoint.stat().st_size
    checkpoint.unlink()  # the store's files are hard links of the module's; replace, do not write through
    checkpoint.write_bytes(damaged.read_bytes().ljust(size, b"\0")[:size])
    assert checkpoint.stat().st_size == size
    run = load_run(cache / "runs" / "mtc", 0)
    manifest = pipeline.load_manifest(cache)
    with pytest.raises(ValueError, match="non-finite outputs .* fold0.pt is damaged"):
        predict(run, list(manifest["path"][:2]))
    results = {r.step: r for r in pipeline.precompute(cache, profile=PROFILE, steps=["mtc"])}
    assert results["mtc"].status == "computed"
    assert results["mtc"].reason == "corrupt: runs/mtc/fold0.pt: content changed since it was written"


def test_paper_descriptors_are_built_recorded_and_rebuildable(tiny_store, tmp_path, capsys):
    from tmdafm_core.cli import main
    from tmdafm_core.features import FEATURE_COLUMNS, compute_all

    cache = link_copy(tiny_store[0], tmp_path / "store")
    profile = dataclasses.replace(PROFILE, descriptors="paper")
    results = _statuses(pipeline.precompute(cache, profile=profile, steps=["descriptors"]))
    assert results["descriptors"] == "computed" and results["dataset"] != "computed"
    record = json.loads((cache / "store.json").read_text())["steps"]["descriptors"]
    assert record["settings"]["paper_pixels"] is True
    table = pd.read_csv(cache / "features.csv")
    manifest = pd.read_parquet(cache / "dataset" / "manifest.parquet")
    from tmdafm_core.data import load_image

    first = manifest.iloc[0]
    expected = compute_all(load_image(first["path"])[0], first["pixel_size_nm"], paper_pixels=True)
    row = table.set_index("image").loc[first["image"]]
    assert [row[c] for c in FEATURE_COLUMNS] == pytest.approx([expected[c] for c in FEATURE_COLUMNS])
    assert "--descriptors" in pipeline.profile_arguments(profile)
    with pytest.raises(ValueError, match="descriptors must be one of physical, paper"):
        dataclasses.replace(PROFILE, descriptors="pixels")
    assert main(["precompute", "--out", str(cache), "--profile", "tiny", "--steps", "descriptors",
                 "--descriptors", "physical", "--volumes", "full", "--umap-dims", ""]) == 0
    record = json.loads((cache / "store.json").read_text())["steps"]["descriptors"]
    assert record["settings"]["paper_pixels"] is False


def test_profile_arguments_rebuild_the_profile():
    from tmdafm_core.cli import build_parser

    arguments = pipeline.profile_arguments(PROFILE)
    assert arguments == ["--profile", "tiny", "--volumes", "full", "--umap-dims", ""]
    args = build_parser().parse_args(["precompute", *arguments])
    overrides = {k[len("profile_"):]: v for k, v in vars(args).items() if k.startswith("profile_") and v is not None}
    assert dataclasses.replace(pipeline.PROFILES[args.profile], **overrides) == PROFILE


def test_demo_profile_uses_the_experiments_training_options():
    from tmdafm_core.experiments import PROFILES

    options = pipeline.PROFILES["demo"].train_options
    # The sequential study fine-tunes the store's backbone at its pretraining side, gently; the MtC / MtL runs keep
    # the recipe's rate.
    own = {"weights": pipeline.PRETRAINED_WEIGHTS, "image_size": 64, "lr": 5e-4}
    assert {k: options[k] for k in PROFILES["demo"]} == {**PROFILES["demo"], **own}
    assert pipeline.run_training_options("demo")["lr"] == PROFILES["demo"]["lr"]
    assert pipeline.PROFILES["demo"].folds == PROFILES["demo"]["folds"]
    assert pipeline.PROFILES["paper"].train_options["device"] == "cuda"


def test_runs_take_their_own_settings_or_else_the_studys():
    study = dataclasses.replace(PROFILE, epochs=3, image_size=48, lr=1e-3)
    assert {k: pipeline.run_training_options(study)[k] for k in ("epochs", "image_size", "lr")} == {
        "epochs": 3, "image_size": 48, "lr": 1e-3}
    runs = dataclasses.replace(study, run_epochs=7, run_image_size=96, run_lr=2e-3)
    assert {k: pipeline.run_training_options(runs)[k] for k in ("epochs", "image_size", "lr")} == {
        "epochs": 7, "image_size": 96, "lr": 2e-3}
    assert runs.train_options["lr"] == 1e-3  # the sequential study keeps the profile's rate


def test_a_pretraining_profile_fine_tunes_its_runs_and_arm_from_the_stores_backbone(tmp_path):
    from tmdafm_core import results

    profile = dataclasses.replace(PROFILE, order=("MoS2", "WS2"), sequential_task="mtc", n_boot=20,
                                  weights=pipeline.PRETRAINED_WEIGHTS, pretrain_images=16, pretrain_epochs=1,
                                  pretrain_image_size=40)
    cache = tmp_path / "cache"
    pipeline.precompute(cache, profile=profile, steps=["mtc", "sequential"])
    backbone = cache / "pretrained" / "backbone.pt"
    assert backbone.is_file() and store.step_done(cache, "pretrain")
    # The backbone learns at its own side; the runs fine-tune it at theirs.
    assert json.loads(backbone.with_suffix(".json").read_text())["image_size"] == 40
    assert json.loads((cache / "runs" / "mtc" / "config.json").read_text())["image_size"] == 32
    assert json.loads((cache / "runs" / "mtc" / "config.json").read_text())["weights"] == str(backbone)
    assert json.loads((cache / "sequential" / "study.json").read_text())["train"]["weights"] == str(backbone)
    assert results.mode_titles(cache)["imagenet"] == "AFM-pretrained (synthetic)"
    record = store.read_record(cache)
    assert record["mtc"]["inputs"]["pretrain"] == record["pretrain"]["output"]
    assert record["mtc"]["settings"]["train"]["weights"] == pipeline.PRETRAINED_WEIGHTS  # no path in the key
    assert "pretrain" in [a.key for a in pipeline.store_contents(cache)]
    again = pipeline.precompute(cache, profile=profile, steps=["mtc", "sequential"])
    assert {r.status for r in again} == {"from cache"}
    with pytest.raises(ValueError, match="pretrain_images >= 2"):
        dataclasses.replace(PROFILE, weights=pipeline.PRETRAINED_WEIGHTS)


def test_procrustes_align_recovers_a_similarity_transform():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(30, 2))
    angle = 0.7
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reflected = points * [1, -1]  # a PCA axis may flip sign from one stage to the next
    reference = 2.5 * reflected[:20] @ rotation + [3.0, -1.0]
    aligned, residual = procrustes_align(points, reference, shared=np.arange(20))
    assert residual < 1e-9
    assert np.allclose(aligned, 2.5 * reflected @ rotation + [3.0, -1.0])
    unscaled, _ = procrustes_align(points, reference, scale=False)
    assert np.allclose(np.linalg.norm(unscaled[0] - unscaled[1]), np.linalg.norm(points[0] - points[1]))


def test_procrustes_align_validates_its_input():
    with pytest.raises(ValueError, match="same number of columns"):
        procrustes_align(np.zeros((5, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="row positions"):
        procrustes_align(np.zeros((5, 2)), np.zeros((3, 2)), shared=[0, 1, 7])
    with pytest.raises(ValueError, match="too few"):
        procrustes_align(np.zeros((5, 2)), np.zeros((1, 2)))


@pytest.mark.slow
def test_demo_profile_builds_a_complete_learnt_store(tmp_path):
    """The heavy twin of the tiny-profile tests above: the real demo store (about 17 minutes on 2 cores)."""
    cache = tmp_path / "cache"
    results = pipeline.precompute(cache, profile="demo")
    assert [r.step for r in results] == list(pipeline.STEPS)
    assert all(store.step_done(cache, step) for step in pipeline.STEPS)
    for task in ("mtc", "mtl"):
        metrics = json.loads((cache / "runs" / task / "metrics.json").read_text())
        assert metrics["accuracy"]["val"]["mean"] > 1.5 / len(metrics["classes"])  # clearly above chance
    sequential = pd.read_csv(cache / "sequential" / "results.csv")
    assert set(sequential["n_classes"]) == {2, 3, 4, 5} and set(sequential["task"]) == {"mtc", "mtl"}
    assert len(pipeline.precompute(cache, profile="demo")) == len(pipeline.STEPS)  # warm: everything from cache
