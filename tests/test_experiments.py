"""Sequential study (grid, weight carry-over, head growth, volume cuts, resume), architecture comparison, ablation."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.models import get_model

from tmdafm_core import study_runs, training
from tmdafm_core.cli import main
from tmdafm_core.data import read_dataset
from tmdafm_core.data.synthetic import write_synthetic_dataset
from tmdafm_core.experiments import PROFILES, ablation_study, imagenet_top1, profile_options
from tmdafm_core.models import build_model, weights_cache_file
from tmdafm_core.sequential import (
    DEFAULT_VOLUMES,
    RESULT_COLUMNS,
    parse_order,
    parse_volumes,
    results_table,
    sequential_study,
    stage_dir,
)
from tmdafm_core.training import limit_training_images, load_checkpoint

TINY = dict(weights="none", epochs=1, folds=2, batch_size=32, image_size=32, lr=1e-3)
ORDER = ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
#: The shared study's classes: four stages cover the first stage, a grown stage and a grown stage's successor.
STUDY_ORDER = ORDER[:4]
VOLUMES = ("full", 4)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic") / "data"
    write_synthetic_dataset(folder, n=120, size=32, seed=0)
    return read_dataset(folder)


@pytest.fixture(scope="module")
def study(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "seq"
    results = sequential_study(synthetic, out, order=STUDY_ORDER, volumes=VOLUMES, task="mtc", **TINY)
    return out, results


def test_the_grid_is_complete_with_valid_numbers(study):
    out, results = study
    assert tuple(results.columns) == RESULT_COLUMNS
    on_disk = pd.read_csv(out / "results.csv", dtype={"volume": str})
    assert len(on_disk) == len(results) == 3 * 2 * 2 * 3  # class counts x modes x volumes x partitions
    grid = set(zip(results["n_classes"], results["mode"], results["volume"], results["split"], strict=True))
    assert grid == {(n, mode, volume, split) for n in (2, 3, 4) for mode in ("imagenet", "sequential")
                    for volume in ("full", "4") for split in ("train", "val", "test")}
    for column in ("f1_mean", "accuracy_mean"):
        assert results[column].between(0, 1).all()
    assert results[["f1_std", "accuracy_std"]].ge(0).all().all()
    for run in results["run"].unique():
        for name in ("config.json", "metrics.json", "fold0.pt", "fold1.pt"):
            assert (out / run / name).is_file()
    table = results_table(results)
    assert list(table.columns) == ["task", "n_classes", "volume", "imagenet", "sequential"]
    assert len(table) == 6
    # Sequential − ImageNet fold by fold, on the Sequential rows only, equal to a hand computation.
    from tmdafm_core.comparisons import fold_scores, paired_interval

    assert results.loc[results["mode"] == "imagenet", "diff_mean"].isna().all()
    # At 2 classes both arms are one run: no comparison, rather than a 0 that would count as one.
    assert results.loc[results["n_classes"] == 2, "diff_mean"].isna().all()
    row = results[(results["mode"] == "sequential") & (results["split"] == "test") & (results["n_classes"] > 2)].iloc[0]
    twin = results[(results["mode"] == "imagenet") & (results["split"] == "test") &
                   (results["n_classes"] == row["n_classes"]) & (results["volume"] == row["volume"])].iloc[0]
    a, b = fold_scores(out / twin["run"]), fold_scores(out / row["run"])
    mean, low, high = paired_interval([b[k] - a[k] for k in (0, 1)])
    # F1 differences lie in [-1, 1]: so do the stored bounds.
    assert (row["diff_mean"], row["diff_low"], row["diff_high"]) == pytest.approx((mean, max(low, -1), min(high, 1)))
    assert row["diff_low"] <= row["diff_mean"] <= row["diff_high"]


def test_sequential_at_two_classes_is_the_imagenet_run(study):
    _, results = study
    two = results[results["n_classes"] == 2]
    assert set(two["run"]) == {"mtc/imagenet/2cls_full", "mtc/imagenet/2cls_4"}
    by_mode = two.set_index(["mode", "volume", "split"])["f1_mean"]
    assert (by_mode["imagenet"] == by_mode["sequential"]).all()


def test_each_sequential_fold_starts_from_the_same_fold_one_class_fewer(study):
    out, _ = study
    for n, volume in ((3, "full"), (3, 4), (4, 4)):
        previous = stage_dir(out, "mtc", "imagenet" if n == 3 else "sequential", n - 1, "full")
        run = stage_dir(out, "mtc", "sequential", n, volume)
        config = json.loads((run / "config.json").read_text())
        for fold in (0, 1):
            start = str(previous / f"fold{fold}.pt")
            assert (run / config["fold_weights"][str(fold)]).resolve() == (previous / f"fold{fold}.pt").resolve()
            checkpoint = load_checkpoint(run / f"fold{fold}.pt")
            assert checkpoint["weights_source"] == start
            assert checkpoint["args"]["weights"] == start
    imagenet = load_checkpoint(stage_dir(out, "mtc", "imagenet", 3, "full") / "fold0.pt")
    assert imagenet["weights_source"] == "random initialisation"


def test_the_start_model_carries_backbone_and_known_class_rows(study):
    out, _ = study
    start = stage_dir(out, "mtc", "sequential", 3, "full") / "fold1.pt"
    previous = load_checkpoint(start)
    assert previous["classes"] == ["MoS2", "WS2", "WSe2"]
    grown = build_model("resnet18", 4, weights=str(start), output_names=("MoS2", "WS2", "WSe2", "MoSe2"))
    state = grown.state_dict()
    for key in ("backbone.conv1.weight", "backbone.layer4.1.bn2.running_var", "head.hidden.0.weight"):
        torch.testing.assert_close(state[key], previous["model"][key])
    torch.testing.assert_close(state["head.out.weight"][:3], previous["model"]["head.out.weight"])
    torch.testing.assert_close(state["head.out.bias"][:3], previous["model"]["head.out.bias"])
    assert not torch.equal(state["head.out.weight"][3], torch.zeros(100))


def test_output_rows_follow_names_not_positions(tmp_path):
    previous = build_model("resnet18", 2)
    checkpoint = {"model": previous.state_dict(), "arch": "resnet18", "task": "mtc", "classes": ["MoS2", "WSe2"],
                  "elements": ["Mo", "S", "W", "Se"]}
    torch.save(checkpoint, tmp_path / "fold0.pt")
    torch.manual_seed(1)
    model = build_model("resnet18", 3, weights=str(tmp_path / "fold0.pt"), output_names=("MoS2", "WS2", "WSe2"))
    old = previous.head.out.weight.detach()
    torch.testing.assert_close(model.head.out.weight[0], old[0])
    torch.testing.assert_close(model.head.out.weight[2], old[1])
    assert not torch.allclose(model.head.out.weight[1], old[0]) and not torch.allclose(model.head.out.weight[1], old[1])
    with pytest.raises(ValueError, match="one per output"):
        build_model("resnet18", 3, weights=str(tmp_path / "fold0.pt"), output_names=("MoS2", "WS2"))


def test_mtl_outputs_stay_the_study_elements_and_carry_over_whole(synthetic, tmp_path):
    out = tmp_path / "mtl"
    results = sequential_study(synthetic, out, order=("MoS2", "WS2", "WSe2"), volumes="full,1000", task="mtl",
                               **TINY)
    assert set(results["task"]) == {"mtl"} and len(results) == 2 * 2 * 2 * 3
    # A cut that keeps every training image is the full-volume run, reported under both labels, trained once.
    runs = results.drop_duplicates(["n_classes", "mode", "volume"]).set_index(["n_classes", "mode", "volume"])["run"]
    assert runs[(3, "sequential", "1000")] == runs[(3, "sequential", "full")] == "mtl/sequential/3cls_full"
    assert not any(out.glob("mtl/*/*cls_1000"))
    first = json.loads((stage_dir(out, "mtl", "imagenet", 2, "full") / "config.json").read_text())
    assert first["classes"] == ["MoS2", "WS2"] and first["elements"] == ["Mo", "W", "S", "Se"]
    start = stage_dir(out, "mtl", "imagenet", 2, "full") / "fold0.pt"
    previous = load_checkpoint(start)
    model = build_model("resnet18", 4, weights=str(start), output_names=("Mo", "W", "S", "Se"))
    torch.testing.assert_close(model.head.out.weight, previous["model"]["head.out.weight"])
    grown = load_checkpoint(stage_dir(out, "mtl", "sequential", 3, "full") / "fold0.pt")
    assert grown["model"]["head.out.weight"].shape == (4, 100) and grown["weights_source"] == str(start)


def test_volume_cut_is_by_sample_exact_nested_and_seeded():
    manifest = pd.DataFrame({"material": ["A"] * 12 + ["B"] * 6,
                             "sample_id": [f"a{i // 4}" for i in range(12)] + [f"b{i // 3}" for i in range(6)]})
    positions = np.arange(18)
    cuts = {n: limit_training_images(manifest, positions, {"A": n}, seed=3) for n in (2, 5, 8, 12, 20)}
    for n, kept in cuts.items():
        assert (manifest["material"].to_numpy()[kept] == "A").sum() == min(n, 12)
        assert (manifest["material"].to_numpy()[kept] == "B").sum() == 6
        per_sample = manifest.iloc[kept].query("material == 'A'").groupby("sample_id").size()
        assert (per_sample < 4).sum() <= 1  # whole samples first, at most one taken in part
    assert set(cuts[2]) <= set(cuts[5]) <= set(cuts[8])
    np.testing.assert_array_equal(cuts[5], limit_training_images(manifest, positions, {"A": 5}, seed=3))
    others = {tuple(limit_training_images(manifest, positions, {"A": 5}, seed=s)) for s in range(6)}
    assert len(others) > 1
    with pytest.raises(ValueError, match="whole number of images >= 1"):
        limit_training_images(manifest, positions, {"A": 0})


def test_the_papers_volume_is_n_random_train_and_validation_images_of_the_new_class(study, synthetic):
    out, results = study
    splits = pd.read_csv(out / "mtc/sequential/4cls_4/splits.csv", dtype={"sample_id": str})
    new = splits[splits["material"] == "MoSe2"]
    assert (new["split"] != "test").sum() == 4  # train + validation together, in every fold
    assert (new["split"] == "test").sum() == ((synthetic["material"] == "MoSe2") & (synthetic["split"] == "test")).sum()
    full = pd.read_csv(out / "mtc/sequential/4cls_full/splits.csv", dtype={"sample_id": str})
    assert len(splits[splits["material"] != "MoSe2"]) == len(full[full["material"] != "MoSe2"])
    run = load_checkpoint(out / "mtc/sequential/4cls_4/fold0.pt")
    val_count = ((splits["fold"] == 0) & (splits["material"] == "MoSe2")).sum()
    assert np.asarray(run["scores"]["val"]["confusion"])[3].sum() == val_count
    cut = results[(results["volume"] == "4") & (results["n_classes"] == 4)]
    assert (cut["new_class_train_images"] <= 4).all()
    study_doc = json.loads((out / "study.json").read_text())
    assert study_doc["train"]["head"] == "reset" and study_doc["train"]["volume_mode"] == "paper"
    config = json.loads((stage_dir(out, "mtc", "sequential", 4, "full") / "config.json").read_text())
    assert config["head"] == "reset"


def test_train_samples_volume_cuts_only_the_new_class_in_training(synthetic, tmp_path):
    out = tmp_path / "seq"
    results = sequential_study(synthetic, out, order=ORDER[:3], volumes=VOLUMES, task="mtc", modes=("imagenet",),
                               volume_mode="train-samples", **TINY)
    cut = results[(results["volume"] == "4")]
    assert (cut["new_class_train_images"] == 4).all()
    splits = pd.read_csv(out / "mtc/imagenet/3cls_4/splits.csv")
    run = load_checkpoint(out / "mtc/imagenet/3cls_4/fold0.pt")
    val_count = ((splits["fold"] == 0) & (splits["material"] == ORDER[2])).sum()
    confusion = np.asarray(run["scores"]["val"]["confusion"])
    assert confusion[2].sum() == val_count  # validation of the new class stays whole
    with pytest.raises(ValueError, match="volume_mode must be one of paper, train-samples"):
        sequential_study(synthetic, out, order=ORDER[:2], volume_mode="per-sample", **TINY)


@pytest.mark.parametrize("head", ["reset", "keep"])
def test_a_reset_head_starts_the_mtc_output_layer_fresh(study, head):
    from tmdafm_core.data import LabelSpace
    from tmdafm_core.training import FoldData, TrainConfig, _build_fold_model

    out, _ = study
    start = stage_dir(out, "mtc", "sequential", 3, "full") / "fold0.pt"
    previous = load_checkpoint(start)
    labels = LabelSpace(("MoS2", "WS2", "WSe2", "MoSe2"), ("Mo", "W", "S", "Se"))
    data = FoldData(torch.zeros(2, 1, 32, 32), np.zeros(2, dtype=np.int64), labels, {}, extra={"head": head})
    torch.manual_seed(5)
    model, _, _ = _build_fold_model(data, TrainConfig(weights=str(start), image_size=32), 4)
    state = model.state_dict()
    torch.testing.assert_close(state["backbone.conv1.weight"], previous["model"]["backbone.conv1.weight"])
    torch.testing.assert_close(state["head.hidden.0.weight"], previous["model"]["head.hidden.0.weight"])
    kept = torch.allclose(state["head.out.weight"][:3], previous["model"]["head.out.weight"])
    assert kept == (head == "keep")


def test_resume_skips_finished_stages_and_retrains_only_what_is_missing(study, synthetic, monkeypatch):
    out, results = study
    calls = []
    real_fit = training.fit_fold

    def counting_fit(data, config, fold, **kwargs):
        calls.append(fold)
        return real_fit(data, config, fold, **kwargs)

    reads = []
    real_read = study_runs.load_data

    def counting_read(split, **kwargs):
        reads.append(len(split))
        return real_read(split, **kwargs)

    monkeypatch.setattr(training.crossval, "fit_fold", counting_fit)
    monkeypatch.setattr(study_runs, "load_data", counting_read)
    again = sequential_study(synthetic, out, order=STUDY_ORDER, volumes=VOLUMES, task="mtc", **TINY)
    assert calls == [] and reads == []  # nothing to train: no image is read
    pd.testing.assert_frame_equal(again, results)
    (stage_dir(out, "mtc", "sequential", 4, 4) / "fold1.pt").unlink()
    sequential_study(synthetic, out, order=STUDY_ORDER, volumes=VOLUMES, task="mtc", **TINY)
    assert calls == [1] and len(reads) == 1  # the study's images, read once for the one run that trains


def test_order_and_volume_validation():
    present = ORDER
    assert parse_order("WS2, MoS2", present) == ("WS2", "MoS2")
    with pytest.raises(ValueError, match="'GaSe' is not in the data set"):
        parse_order("MoS2,GaSe", present)
    with pytest.raises(ValueError, match="listed twice"):
        parse_order("MoS2,WS2,MoS2", present)
    with pytest.raises(ValueError, match="at least 2 classes"):
        parse_order("MoS2", present)
    assert parse_volumes("8,full,16,8") == ("full", 8, 16)
    assert parse_volumes(DEFAULT_VOLUMES) == DEFAULT_VOLUMES
    with pytest.raises(ValueError, match="neither 'full' nor a whole number"):
        parse_volumes("full,lots")
    with pytest.raises(ValueError, match="neither 'full' nor a whole number"):
        parse_volumes([2.5])
    with pytest.raises(ValueError, match="must be >= 1"):
        parse_volumes("full,0")


def test_study_refuses_bad_modes_and_tasks(synthetic, tmp_path):
    with pytest.raises(ValueError, match="modes must be"):
        sequential_study(synthetic, tmp_path, order=ORDER[:2], modes=("finetune",), **TINY)
    with pytest.raises(ValueError, match="task must be mtc, mtl or both"):
        sequential_study(synthetic, tmp_path, order=ORDER[:2], task="multi", **TINY)
    with pytest.raises(ValueError, match="sets 'train_limits' itself"):
        sequential_study(synthetic, tmp_path, order=ORDER[:2], train_limits={"WS2": 3}, **TINY)


def test_profiles_and_explicit_overrides():
    assert profile_options("demo") == PROFILES["demo"]
    assert profile_options("demo", epochs=7, lr=None)["epochs"] == 7
    assert profile_options("paper")["weights"] == "imagenet-v2" and profile_options("paper")["epochs"] == 60
    assert profile_options("paper")["arch"] == "resnet152"  # the paper's model for Tables 4-5, Figures 3-5
    assert profile_options(None, folds=3) == {"folds": 3}
    with pytest.raises(ValueError, match="unknown profile"):
        profile_options("fast")


def test_threads_apply_while_the_experiment_runs_and_are_restored(synthetic, tmp_path, monkeypatch):
    seen = []
    real_fit = training.fit_fold

    def recording_fit(data, config, fold, **kwargs):
        seen.append(torch.get_num_threads())
        return real_fit(data, config, fold, **kwargs)

    monkeypatch.setattr(training.crossval, "fit_fold", recording_fit)
    torch.set_num_threads(2)
    sequential_study(synthetic, tmp_path / "t", order=ORDER[:2], volumes="full", threads=1, **TINY)
    assert seen == [1, 1] and torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        sequential_study(synthetic, tmp_path / "u", order=ORDER[:2], threads=0, **TINY)


def test_cli_bad_order_and_volumes_are_one_line_errors(synthetic, tmp_path, capsys):
    data = synthetic.attrs["root"]
    assert main(["sequential", str(data), "--out", str(tmp_path / "o"), "--order", "MoS2,Foo2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'Foo2' is not in the data set" in err and len(err.splitlines()) == 1
    assert main(["sequential", str(data), "--out", str(tmp_path / "o"), "--volumes", "full,-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "volumes" in err and len(err.splitlines()) == 1


def test_cli_sequential_with_profile_and_overrides(synthetic, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["sequential", str(synthetic.attrs["root"]), "--out", str(out), "--order", "MoS2,WS2",
                 "--volumes", "full", "--profile", "demo", "--epochs", "1", "--image-size", "32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "imagenet" in printed and "sequential" in printed
    config = json.loads((out / "mtc/imagenet/2cls_full/config.json").read_text())
    assert (config["epochs"], config["image_size"], config["folds"], config["weights"]) == (1, 32, 2, "none")


def test_imagenet_top1_comes_from_torchvision_metadata():
    assert imagenet_top1("resnet18", "imagenet-v1") == pytest.approx(69.758)
    assert imagenet_top1("resnet152", "imagenet-v2") == pytest.approx(82.284)
    assert math.isnan(imagenet_top1("resnet18", "imagenet-v2")) and math.isnan(imagenet_top1("resnet18", "none"))


def test_cli_compare_archs_mtc_and_mtl_on_the_same_folds(synthetic, tmp_path, capsys):
    out = tmp_path / "archs"
    code = main(["compare-archs", str(synthetic.attrs["root"]), "--out", str(out), "--archs", "resnet18",
                 "--weights", "none", "--epochs", "1", "--folds", "2", "--image-size", "32", "--batch-size", "32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "MtC vs MtL" in printed
    table = pd.read_csv(out / "architectures.csv")
    assert list(table["task"]) == ["mtc", "mtl"] and table["imagenet_top1"].isna().all()
    assert table["accuracy_test_mean"].between(0, 1).all()
    folds = [pd.read_csv(out / task / "resnet18_none/splits.csv")["fold"] for task in ("mtc", "mtl")]
    pd.testing.assert_series_equal(*folds)


def test_cli_compare_archs_without_imagenet_files_names_the_missing_file(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    code = main(["compare-archs", str(synthetic.attrs["root"]), "--out", str(tmp_path / "a"), "--archs", "resnet18",
                 "--weights", "imagenet-v1", "--epochs", "1", "--folds", "2"])
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar's lines
    assert last.startswith("tmdafm compare-archs: error:") and "resnet18-f37072fd.pth" in last


def test_ablation_fine_tune_feature_mlp_and_scratch_share_folds(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from tmdafm_core.models import imagenet_weights

    cache = weights_cache_file(imagenet_weights("resnet18", "imagenet-v1"))
    cache.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(get_model("resnet18", weights=None).state_dict(), cache)
    table = ablation_study(synthetic, tmp_path / "abl", weights="imagenet-v1", epochs=1, folds=2, image_size=32,
                           batch_size=32)
    assert list(dict.fromkeys(table["mode"])) == ["fine-tune", "feature-extraction", "scratch"]
    assert len(table) == 9 and table["accuracy_mean"].between(0, 1).all()
    configs = {m: json.loads((tmp_path / "abl" / m / "config.json").read_text()) for m in table["mode"].unique()}
    assert configs["fine-tune"]["mode"] == "fine-tune" and configs["scratch"]["mode"] == "scratch"
    assert configs["feature-extraction"]["mode"] == "features"
    folds = [pd.read_csv(tmp_path / "abl" / m / "splits.csv")["fold"] for m in configs]
    pd.testing.assert_series_equal(folds[0], folds[1])
    pd.testing.assert_series_equal(folds[0], folds[2])
    with pytest.raises(ValueError, match="leaves nothing to compare"):
        ablation_study(synthetic, tmp_path / "abl2", weights="none", **{k: v for k, v in TINY.items()
                                                                         if k != "weights"})


def test_store_ablation_trains_the_other_arms_beside_the_store_and_the_page_shows_table_2(tmp_path, capsys):
    import app as app_module
    from tmdafm_core import pipeline, results
    from tmdafm_core.experiments import store_ablation
    from tmdafm_core.layout import StoreLayout
    from tmdafm_core.steps import run_training_options

    store = tmp_path / "store"
    with pytest.raises(ValueError, match="no MtC run in this store"):
        store_ablation(store)
    pipeline.precompute(store, profile="tiny", steps=["mtc"])
    with pytest.raises(ValueError, match="train from scratch"):
        store_ablation(store)  # the tiny profile's runs start from random weights: nothing to compare
    backbone = tmp_path / "lab.pt"
    torch.manual_seed(0)
    torch.save(get_model("resnet18", weights=None).state_dict(), backbone)
    backbone.with_suffix(".json").write_text(json.dumps({"title": "Lab archive"}))
    table = store_ablation(store, weights=str(backbone))
    assert list(dict.fromkeys(table["run"])) == ["fine-tune", "feature-extraction", "scratch"]
    shown = results.ablation(store)
    assert list(shown["mode"]) == ["fine-tune", "feature-extraction", "scratch"]
    assert list(shown["title"]) == ["Fine-tuned from Lab archive",
                                    "Feature extraction: frozen Lab archive backbone + MLP", "From scratch"]
    # The store's MtC run stands in for fine-tuning when it was trained on the same split: no third training.
    options = {**run_training_options(StoreLayout(store).recorded_profile()), "weights": str(backbone)}
    mtc = store / "runs" / "mtc"
    reused = ablation_study(pipeline.load_manifest(store), tmp_path / "reuse", given={"fine-tune": mtc}, **options)
    assert reused.loc[reused["mode"] == "fine-tune", "run"].iat[0] == "../store/runs/mtc"
    assert not (tmp_path / "reuse" / "fine-tune").exists()
    sentences = results.ablation_comparisons(store)
    assert len(sentences) == 4 and sentences[0].startswith("Fine-tuning − scratch, val macro-F1")
    differences = results.ablation_differences(store)
    assert [row["supported"] for row in differences] == [row["low"] > 0 or row["high"] < 0 for row in differences]
    assert any(line.startswith("the paper's Table 2 on its own data") for line in results.demo_scope(store)["can"])
    app_module.app.server.test_client().get("/")
    from pages import performance

    card = performance._ablation(store)
    assert card.id == "ablation" and "interval" in str(card.children)
    assert [row["arm"] for row in performance.ablation_rows(shown)][2] == "From scratch"
    assert "tmdafm ablation --store" in str(performance._ablation(tmp_path / "empty").children)
    assert main(["ablation", "--store", str(store), "--epochs", "2"]) == 2
    assert "drop --epochs" in capsys.readouterr().err
    assert main(["ablation"]) == 2
