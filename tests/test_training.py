"""Cross-validation, run directories, resume, metrics, feature-table runs, prediction and the CLI commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from tmdafm_core import training
from tmdafm_core.cli import main
from tmdafm_core.data import FeatureTable, read_dataset, save_tiff
from tmdafm_core.training import (
    TrainConfig,
    classification_scores,
    cross_validate,
    decode_classes,
    decode_strict,
    embed,
    format_metrics,
    grid_search,
    load_checkpoint,
    load_run,
    predict,
)

TINY = dict(weights="none", epochs=1, batch_size=8, image_size=32)
STRIPES = {"MoS2": "vertical", "WS2": "horizontal", "WSe2": "checker"}


def write_stripes(folder, *, materials=("MoS2", "WS2"), samples=4, per_sample=8, size=32, noise=0.3, seed=0):
    """A clearly separable TMD-AFM-layout set: each material has its own stripe texture; sample 0 is held out."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    textures = {"vertical": np.sin(xx * np.pi / 2), "horizontal": np.sin(yy * np.pi / 2),
                "checker": np.sin(xx * np.pi / 2) * np.sin(yy * np.pi / 2)}
    folder.mkdir(parents=True, exist_ok=True)
    for material in materials:
        for s in range(samples):
            for i in range(per_sample):
                image = textures[STRIPES[material]] + noise * rng.standard_normal((size, size))
                suffix = "_test" if s == 0 else ""
                save_tiff(folder / f"{material}_afm_{material}s{s}_{i:02d}{suffix}.tif", image, pixel_size_nm=4.0)
    return folder


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    return read_dataset(write_stripes(tmp_path_factory.mktemp("stripes") / "data"))


@pytest.fixture(scope="module")
def mtc_run(stripes, tmp_path_factory):
    """A finished 2-fold MtC run on the separable stripes (learned in 3 epochs for seeds 0..5)."""
    run_dir = tmp_path_factory.mktemp("runs") / "mtc"
    metrics = cross_validate(stripes, run_dir, weights="none", folds=2, epochs=3, lr=1e-3, batch_size=4,
                             image_size=32)
    return run_dir, metrics


def test_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    predicted[:5] = 3
    scores = classification_scores(true, predicted, 5)
    assert scores["accuracy"] == pytest.approx(np.mean(true == predicted))
    assert scores["f1_macro"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert scores["confusion"].sum() == 50 and scores["confusion"][true[0], predicted[0]] >= 1


def test_run_directory_and_metrics_schema(mtc_run):
    run_dir, metrics = mtc_run
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "fold0.pt", "fold1.pt", "history.csv",
                                                          "metrics.json", "splits.csv"]
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert list(on_disk) == ["task", "classes", "elements", "folds", "accuracy", "f1_macro",
                             "confusion_test_percent", "per_fold", "precision_used", "calibration", "novelty"]
    assert on_disk["precision_used"] == "fp32"  # auto on the CPU
    calibration = on_disk["calibration"]
    assert len(calibration["temperature"]) == 2 and all(t > 0 for t in calibration["temperature"])
    for key in ("ece", "ece_uncalibrated", "brier", "brier_uncalibrated"):
        assert set(calibration[key]) == {"val", "test"}
    assert len(calibration["reliability"]["edges"]) == calibration["bins"] + 1 == 16
    assert sum(calibration["reliability"]["test"]["count"]) == 2 * 16  # both folds' 16 test images
    assert on_disk["novelty"]["method"] == "stage1-mahalanobis" and on_disk["novelty"]["quantile"] == 0.95
    assert on_disk["task"] == "mtc" and on_disk["classes"] == ["MoS2", "WS2"] and on_disk["folds"] == 2
    assert on_disk["elements"] == ["Mo", "W", "S"]
    for metric in ("accuracy", "f1_macro"):
        assert set(on_disk[metric]) == {"train", "val", "test"}
        assert all(set(v) == {"mean", "std", "std_paper"} for v in on_disk[metric].values())
    per_fold_val = [f["accuracy"]["val"] for f in on_disk["per_fold"]]
    assert on_disk["accuracy"]["val"]["std"] == pytest.approx(np.std(per_fold_val, ddof=1))
    assert on_disk["accuracy"]["val"]["std_paper"] == pytest.approx(np.std(per_fold_val))  # the paper's ddof 0
    assert np.sum(on_disk["confusion_test_percent"]) == pytest.approx(100.0)
    assert [f["fold"] for f in on_disk["per_fold"]] == [0, 1]
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history.columns) == ["fold", "epoch", "split", "loss", "accuracy", "f1_macro"]
    assert len(history) == 2 * 3 * 2  # folds x epochs x {train, val}
    config = json.loads((run_dir / "config.json").read_text())
    assert config["mode"] == "scratch" and config["lr"] == 1e-3 and config["image_size"] == 32


def test_checkpoint_carries_what_inference_needs(mtc_run):
    checkpoint = load_checkpoint(mtc_run[0] / "fold0.pt")
    for key in ("model", "optimizer", "epoch", "args", "arch", "task", "classes", "elements", "image_size", "mean",
                "std"):
        assert key in checkpoint
    assert checkpoint["arch"] == "resnet18" and checkpoint["image_size"] == 32
    assert checkpoint["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert 1 <= checkpoint["epoch"] <= 3 and checkpoint["optimizer"]["state"]


def test_separable_toy_set_is_learned(mtc_run):
    _, metrics = mtc_run
    assert metrics["accuracy"]["val"]["mean"] > 0.9
    assert metrics["accuracy"]["test"]["mean"] > 0.9


def test_no_sample_in_two_partitions(mtc_run):
    splits = pd.read_csv(mtc_run[0] / "splits.csv")
    test_samples = set(splits.loc[splits["split"] == "test", "sample_id"])
    assert test_samples == {"MoS2s0", "WS2s0"}  # the file names' held-out marks are respected
    for fold in (0, 1):
        val = set(splits.loc[splits["fold"] == fold, "sample_id"])
        train = set(splits.loc[(splits["fold"] >= 0) & (splits["fold"] != fold), "sample_id"])
        assert val and train and not (val & train) and not (val & test_samples) and not (train & test_samples)


def test_resume_skips_finished_folds_and_reproduces_a_deleted_one(stripes, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    first = cross_validate(stripes, run_dir, folds=2, **TINY)
    (run_dir / "fold1.pt").unlink()
    trained = []
    fit = training.fit_fold
    monkeypatch.setattr(training.crossval, "fit_fold", lambda data, config, fold, **kw: trained.append(fold) or
                        fit(data, config, fold, **kw))
    second = cross_validate(stripes, run_dir, folds=2, **TINY)
    assert trained == [1]
    assert second == first  # seeded: the retrained fold comes out the same
    cross_validate(stripes, run_dir, folds=2, **TINY)
    assert trained == [1]


def test_folds_in_two_processes_give_the_same_run(stripes, tmp_path):
    one = cross_validate(stripes, tmp_path / "one", folds=2, **TINY)
    two = cross_validate(stripes, tmp_path / "two", folds=2, fold_jobs=2, **TINY)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)  # bit for bit, fold by fold
    for fold in (0, 1):
        a, b = (load_checkpoint(tmp_path / run / f"fold{fold}.pt")["model"] for run in ("one", "two"))
        assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="fold_jobs must be a whole number"):
        cross_validate(stripes, tmp_path / "three", folds=2, fold_jobs=0, **TINY)


def test_resume_refuses_other_settings(stripes, tmp_path):
    cross_validate(stripes, tmp_path / "run", folds=2, **TINY)
    with pytest.raises(ValueError, match="other settings \\(lr"):
        cross_validate(stripes, tmp_path / "run", folds=2, **{**TINY, "lr": 1e-3})


def test_a_run_written_before_a_setting_existed_resumes_with_its_default(stripes, tmp_path):
    first = cross_validate(stripes, tmp_path / "run", folds=2, **TINY)
    path = tmp_path / "run" / "config.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({k: v for k, v in document.items() if k not in ("schedule", "optimizer")}))
    assert cross_validate(stripes, tmp_path / "run", folds=2, **TINY)["f1_macro"] == first["f1_macro"]


def test_mtl_run_reports_element_accuracy_and_valid_materials(stripes, tmp_path):
    metrics = cross_validate(stripes, tmp_path / "mtl", folds=2, task="mtl", **TINY)
    assert metrics["task"] == "mtl"
    assert all(0 <= f["element_accuracy"]["val"] <= 1 for f in metrics["per_fold"])
    run = load_run(tmp_path / "mtl")
    paper = metrics["paper_rule"]
    assert paper["columns"] == ["MoS2", "WS2", "unknown"]
    assert np.asarray(paper["confusion_test_percent"]).shape == (2, 3)
    assert np.sum(paper["confusion_test_percent"]) == pytest.approx(100.0)
    assert paper["accuracy"]["test"]["mean"] <= metrics["accuracy"]["test"]["mean"] + 1e-9
    text = format_metrics(metrics)
    assert "paper rule" in text and "calibration: temperature" in text and "novelty: unfamiliar beyond" in text
    assert len(metrics["calibration"]["temperature"]) == 2  # MtL calibrates its element sigmoids too
    result = predict(run, list(stripes["path"][:4]))
    assert set(result.materials) <= {"MoS2", "WS2"}
    assert result.element_probabilities.shape == (4, 3)
    np.testing.assert_allclose(result.class_probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_class_without_training_images_in_a_fold_is_refused(tmp_path):
    folder = write_stripes(tmp_path / "data", materials=("MoS2", "WS2"), samples=4)
    write_stripes(folder, materials=("WSe2",), samples=2, seed=1)  # one held-out + one training sample
    with pytest.raises(ValueError, match="class 'WSe2' has no training images in fold"):
        cross_validate(read_dataset(folder), tmp_path / "run", folds=2, **TINY)


def test_unknown_architecture_fails_before_training(stripes, tmp_path):
    with pytest.raises(ValueError, match="unknown architecture"):
        cross_validate(stripes, tmp_path / "run", arch="resnet20", folds=2, **TINY)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    ({"task": "mtx"}, "task must be one of"),
    ({"select": "best"}, "select must be one of"),
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"batch_size": 2.5}, "batch_size must be an integer"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"dropout": 1.5}, "dropout must be in"),
    ({"image_size": 8}, "image_size must be in"),
    ({"device": "tpu"}, "device must be 'cpu' or 'cuda'"),
    ({"precision": "fp16"}, "precision must be one of"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"optimizer": "sgd"}, "optimizer must be one of"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
])
def test_bad_settings_are_one_line_errors(change, message):
    with pytest.raises(ValueError, match=message) as error:
        TrainConfig(**change).validate()
    assert "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        TrainConfig(device="cuda").validate()


def test_predict_gives_probabilities_embeddings_and_cams(mtc_run, stripes):
    run = load_run(mtc_run[0])
    assert run.fold in (0, 1) and run.image_size == 32
    paths = list(stripes["path"][:3])
    big = np.random.default_rng(0).random((48, 40))
    result = predict(run, paths + [big], cam=True)
    assert result.images[-1] == "array3"
    assert result.class_probabilities.shape == (4, 2) and result.element_probabilities is None
    assert result.embeddings.shape == (4, 100) and (result.embeddings < 0).any()  # pre-ReLU, as the paper
    assert [c.shape for c in result.cams] == [(32, 32)] * 3 + [(48, 40)]
    assert all(c.min() >= 0 and c.max() == pytest.approx(1.0) for c in result.cams)
    truth = list(stripes["material"][:3])
    assert result.materials[:3] == truth
    frame = result.to_frame()
    assert list(frame.columns) == ["image", "material", "p_MoS2", "p_WS2", "novelty", "unfamiliar"]
    assert result.calibrated and not result.notes and np.isfinite(result.novelty).all()
    grad = predict(run, paths[:1], cam="grad")
    assert grad.cams[0].shape == (32, 32)


def test_embed_matches_predict(mtc_run, stripes):
    run = load_run(mtc_run[0], fold=1)
    latent = embed(run, stripes)
    assert latent.shape == (len(stripes), 100) and latent.dtype == np.float32
    np.testing.assert_allclose(latent[:2], predict(run, list(stripes["path"][:2])).embeddings, rtol=1e-4, atol=1e-5)
    post = embed(run, stripes.iloc[:2], latent="post-relu")
    np.testing.assert_allclose(post, np.maximum(latent[:2], 0), rtol=1e-4, atol=1e-5)


def _feature_table(n_per_class=12, seed=0):
    """Two separable Gaussian clouds in 16-d, 3 images per sample, sample 0 of each class held out."""
    rng = np.random.default_rng(seed)
    rows, features = [], []
    for c, material in enumerate(("MoS2", "WS2")):
        for i in range(n_per_class):
            rows.append({"image": f"{material}_{i}.tif", "sample_id": f"{material}-{i // 3}", "material": material,
                         "split": "test" if i < 3 else "train"})
            features.append(rng.normal(loc=3.0 * c, size=16))
    frame = pd.DataFrame(rows).astype({"material": "string", "split": "string"})
    return FeatureTable(frame, np.asarray(features, dtype=np.float32), [f"f{i}" for i in range(16)])


def test_feature_mlp_learns_a_separable_table(tmp_path):
    metrics = cross_validate(_feature_table(), tmp_path / "mlp", folds=3, epochs=30, lr=1e-2, batch_size=8)
    assert metrics["accuracy"]["val"]["mean"] > 0.9 and metrics["accuracy"]["test"]["mean"] > 0.9
    config = json.loads((tmp_path / "mlp" / "config.json").read_text())
    assert config["mode"] == "features" and config["arch"] is None
    run = load_run(tmp_path / "mlp")
    assert embed(run, _feature_table().features).shape == (24, 100)


def test_inner_split_holds_out_training_samples_only():
    table = _feature_table(n_per_class=24)
    split = table.frame.assign(fold=[0, 1] * 24)
    train = np.flatnonzero((split["split"] == "train").to_numpy())
    parts = training.inner_split(split, train, fraction=0.25, seed=0)
    assert set(parts["train"]) | set(parts["val"]) == set(train) and not set(parts["train"]) & set(parts["val"])
    inner_val = split.iloc[parts["val"]]
    assert set(inner_val["material"]) == {"MoS2", "WS2"} and (inner_val["split"] == "train").all()
    assert not set(inner_val["sample_id"]) & set(split.iloc[parts["train"]]["sample_id"])  # by sample


def test_feature_mlp_tunes_each_fold_on_its_training_part(tmp_path, monkeypatch):
    grid = {"lr": [1e-2, 1e-6], "weight_decay": [0.0], "dropout": [0.0]}
    seen = []
    real_fit = training.fit_fold

    def spying_fit(data, config, fold, **kwargs):
        seen.append((config.lr, len(data.partitions["test"])))
        return real_fit(data, config, fold, **kwargs)

    monkeypatch.setattr(training.crossval, "fit_fold", spying_fit)
    metrics = cross_validate(_feature_table(n_per_class=24), tmp_path / "mlp", folds=2, epochs=20, batch_size=8,
                             tune=grid)
    # Per fold: two inner fits (never the test images), then the fold's own fit with the chosen grid point.
    assert [n_test for _, n_test in seen] == [0, 0, 6, 0, 0, 6]
    assert all(f["tuned"]["lr"] == 1e-2 for f in metrics["per_fold"])  # 1e-6 cannot learn in 20 epochs
    assert metrics["accuracy"]["test"]["mean"] > 0.9
    assert json.loads((tmp_path / "mlp" / "config.json").read_text())["tune"] == grid
    images = read_dataset(write_stripes(tmp_path / "img"))
    with pytest.raises(ValueError, match="tune searches the feature-extraction MLP"):
        cross_validate(images, tmp_path / "img_run", folds=2, tune=True, **TINY)


def test_bf16_autocast_on_the_cpu_trains_an_image_run_and_predicts_with_it(stripes, tmp_path):
    metrics = cross_validate(stripes, tmp_path / "bf16", folds=2, precision="bf16", **TINY)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision"] == "bf16"
    assert np.isfinite(metrics["f1_macro"]["val"]["mean"]) and metrics["precision_used"] == "bf16"
    # Predictions are computed as the held-out outputs its temperature was fitted on: in bf16.
    run = load_run(tmp_path / "bf16")
    paths = list(stripes["path"][:6])
    assert run.precision == "bf16"
    bf16 = predict(run, paths).class_probabilities
    run.precision = "fp32"
    difference = np.abs(bf16 - predict(run, paths).class_probabilities).max()
    assert 0 < difference < 0.05


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_native_precision_follows_the_cpu(monkeypatch, native, expected):
    monkeypatch.setattr(training.config, "cpu_has_native_bf16", lambda: native)
    assert training.resolve_precision("native", torch.device("cpu")) == expected
    assert training.resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert training.resolve_precision("native", torch.device("cuda")) == "bf16"


def test_warmup_cosine_rises_to_lr_then_decays_to_zero():
    config = TrainConfig(epochs=4, lr=0.01, schedule="warmup-cosine", optimizer="adamw", weight_decay=0.05)
    model = torch.nn.Linear(2, 2)
    optimizer, scheduler = training.build_optimizer(model, config, steps_per_epoch=10)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05
    rates = []
    for _ in range(40):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    warmup = round(training.WARMUP_SHARE * 40)
    assert rates[0] == pytest.approx(1e-4) and rates[warmup] == pytest.approx(0.01)
    assert np.all(np.diff(rates[:warmup + 1]) > 0) and np.all(np.diff(rates[warmup:]) < 0)
    assert rates[-1] < 1e-4
    constant, none = training.build_optimizer(model, TrainConfig(lr=0.01), steps_per_epoch=10)
    assert none is None and isinstance(constant, torch.optim.Adam)


def test_weight_average_starts_after_warmup_and_decays_per_step():
    model = torch.nn.Linear(1, 1, bias=False)
    average = training.engine.WeightAverage(model, 0.75, start_step=2)
    with torch.no_grad():
        model.weight.fill_(4.0)
        average.update(model)  # step 1: still warming up
        assert average.scored(model) is model
        model.weight.fill_(8.0)
        average.update(model)  # step 2: the average starts as a copy
        model.weight.fill_(0.0)
        average.update(model)  # step 3: 0.75 * 8 + 0.25 * 0
    scored = average.scored(model)
    assert scored is not model and float(scored.weight.detach()) == pytest.approx(6.0)
    assert float(model.weight.detach()) == 0.0


def test_weight_averaged_run_keeps_the_average(stripes, tmp_path):
    cross_validate(stripes, tmp_path / "raw", folds=2, **{**TINY, "epochs": 2})
    cross_validate(stripes, tmp_path / "ema", folds=2, ema_decay=0.5, **{**TINY, "epochs": 2})
    assert json.loads((tmp_path / "ema" / "config.json").read_text())["ema_decay"] == 0.5
    raw, averaged = (torch.load(tmp_path / name / "fold0.pt", weights_only=True)["model"] for name in ("raw", "ema"))
    assert raw.keys() == averaged.keys()
    assert not torch.equal(raw["head.out.weight"], averaged["head.out.weight"])


def test_schedule_and_optimizer_are_recorded_in_the_run(stripes, tmp_path):
    cross_validate(stripes, tmp_path / "cos", folds=2, schedule="warmup-cosine", optimizer="adamw",
                   weight_decay=0.01, **TINY)
    config = json.loads((tmp_path / "cos" / "config.json").read_text())
    assert (config["schedule"], config["optimizer"], config["weight_decay"]) == ("warmup-cosine", "adamw", 0.01)


def test_grid_search_writes_a_ranked_table(tmp_path):
    table = grid_search(_feature_table(), tmp_path / "grid", lr=[1e-2, 1e-4], dropout=[0.0], batch_size=[8],
                        folds=2, epochs=5)
    assert len(table) == 2 and set(table["lr"]) == {1e-2, 1e-4}
    assert table["f1_macro_val_mean"].is_monotonic_decreasing
    assert (tmp_path / "grid" / "grid.csv").is_file()
    assert (tmp_path / "grid" / table["run"][0] / "metrics.json").is_file()


def test_cli_extract_train_features_train_and_predict(stripes, tmp_path, capsys):
    data = stripes.attrs["root"]
    assert main(["extract", data, "--weights", "none", "--image-size", "32", "--out", str(tmp_path / "f.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert list(table.columns[:4]) == ["image", "sample_id", "material", "split"] and table.shape[1] == 4 + 512
    assert main(["train-features", str(tmp_path / "f.parquet"), "--out", str(tmp_path / "mlp"), "--folds", "2",
                 "--epochs", "2"]) == 0
    splits = pd.read_csv(tmp_path / "mlp" / "splits.csv")
    assert set(splits.loc[splits["split"] == "test", "sample_id"]) == {"MoS2s0", "WS2s0"}
    assert main(["train", data, "--out", str(tmp_path / "run"), "--weights", "none", "--folds", "2", "--epochs", "1",
                 "--image-size", "32", "--batch-size", "8"]) == 0
    assert "f1_macro" in capsys.readouterr().out
    images = [str(p) for p in stripes["path"][:2]]
    assert main(["predict", str(tmp_path / "run"), *images, "--cam", str(tmp_path / "cams")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("image,material,p_MoS2") and len(lines) == 3
    assert len(list((tmp_path / "cams").glob("*_cam.png"))) == 2


def test_cli_bad_config_is_a_one_line_error(stripes, tmp_path, capsys):
    code = main(["train", stripes.attrs["root"], "--out", str(tmp_path / "run"), "--weights", "imagenet-v2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "resnet18 has no ImageNet V2 weights" in err and "\n" not in err


def test_folds_on_a_dask_cluster_equal_local_folds(tmp_path):
    from dask.distributed import LocalCluster

    local = cross_validate(_feature_table(), tmp_path / "local", folds=2, epochs=3, lr=1e-2, batch_size=8)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        remote = cross_validate(_feature_table(), tmp_path / "dask", folds=2, epochs=3, lr=1e-2, batch_size=8,
                                dask_address=cluster.scheduler_address)
    assert remote == local
    assert sorted(p.name for p in (tmp_path / "dask").glob("fold*.pt")) == ["fold0.pt", "fold1.pt"]


def test_paper_mtl_rule_calls_an_impossible_element_vector_unknown():
    """Elements [Mo, W, S, Se]; MoS2 = [1,0,1,0], WS2 = [0,1,1,0]. An image with p(Mo) and p(W) both > 0.5 decodes
    to no known material under the paper's rule, but to the most likely valid one under ours."""
    matrix = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=torch.float32)
    logits = torch.tensor([[3.0, -3.0, 3.0, -3.0],    # MoS2 exactly
                           [0.4, 0.2, 3.0, -3.0],     # Mo and W present: no such material
                           [-3.0, 3.0, -1.0, -3.0]])  # W only, S absent: no such material
    assert decode_strict(logits, matrix).tolist() == [0, 2, 2]
    assert decode_classes(logits, "mtl", matrix).tolist() == [0, 0, 1]
    scores = classification_scores(np.array([0, 0, 1]), decode_strict(logits, matrix).numpy(), 3)
    assert scores["accuracy"] == pytest.approx(1 / 3)  # unknown counts as an error


def test_predict_skips_bad_files_and_refuses_tiny_images(mtc_run, stripes, tmp_path, capsys):
    good = str(stripes["path"].iloc[0])
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    save_tiff(tmp_path / "tiny.tif", np.random.default_rng(0).random((1, 1)), pixel_size_nm=4.0)
    run = load_run(mtc_run[0])
    with pytest.raises(ValueError, match="too small to classify"):
        predict(run, [str(tmp_path / "tiny.tif")])
    result = predict(run, [good, str(tmp_path / "broken.tif"), str(tmp_path / "tiny.tif")], on_error="skip")
    assert result.images == [good] and [p.rsplit("/", 1)[-1] for p, _ in result.skipped] == ["broken.tif", "tiny.tif"]
    assert main(["predict", str(mtc_run[0]), good, str(tmp_path / "tiny.tif")]) == 0
    captured = capsys.readouterr()
    assert "tiny.tif: 1 x 1 px is too small" in captured.err and len(captured.out.strip().splitlines()) == 2
    assert main(["predict", str(mtc_run[0]), good, str(tmp_path / "tiny.tif"), "--strict"]) == 2


def test_the_fold_ensemble_averages_the_folds_and_reports_their_agreement(mtc_run, stripes, capsys):
    from tmdafm_core.training import load_ensemble, predict_ensemble

    runs = load_ensemble(mtc_run[0])
    assert sorted(r.fold for r in runs) == [0, 1] and runs[0].fold == load_run(mtc_run[0]).fold  # best first
    paths = list(stripes["path"][:4])
    ensemble = predict_ensemble(runs, paths)
    each = [predict(run, paths) for run in runs]
    mean = np.mean([p.class_probabilities for p in each], axis=0)
    np.testing.assert_allclose(ensemble.class_probabilities, mean, rtol=1e-6)
    chosen = mean.argmax(axis=1)
    votes = np.mean([p.class_probabilities.argmax(axis=1) == chosen for p in each], axis=0)
    np.testing.assert_allclose(ensemble.agreement, votes)
    spread = np.std([p.class_probabilities[np.arange(4), chosen] for p in each], axis=0)
    np.testing.assert_allclose(ensemble.spread, spread, rtol=1e-6)
    np.testing.assert_allclose(ensemble.embeddings, each[0].embeddings)  # the best fold's latent space
    np.testing.assert_allclose(ensemble.novelty, np.mean([p.novelty for p in each], axis=0), rtol=1e-6)
    assert main(["predict", str(mtc_run[0]), *paths[:2]]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "image,material,p_MoS2,p_WS2,agreement,spread,novelty,unfamiliar"
    assert main(["predict", str(mtc_run[0]), paths[0], "--fold", "1"]) == 0
    assert "agreement" not in capsys.readouterr().out
    assert main(["latent", str(mtc_run[0]), stripes.attrs["root"], "--out", "x", "--fold", "all"]) == 2
