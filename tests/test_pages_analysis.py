"""The analysis pages (/physical, /performance, /sequential) without a browser: store readers, figure builders,
page data functions and callbacks as plain functions, on a small store the tests write themselves (no training:
runs, predictions and study results are written in the store's formats; the latent tables come from
``latent.analyse`` on made-up embeddings)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tmdafm_core import calibration, figures, latent, pipeline, results, selection
from tmdafm_core.data import LabelSpace
from tmdafm_core.embeddings import fit_projection
from tmdafm_core.features import FEATURE_COLUMNS

TINY = pipeline.Profile("tiny", n=40, size=32, n_folds=3)


def _write_run(cache, task: str, manifest: pd.DataFrame, rng) -> None:
    space = LabelSpace.from_materials(manifest["material"])
    classes = list(space.classes)
    predicted = manifest["material"].astype(str).to_numpy().copy()
    flip = rng.random(len(predicted)) < 0.3
    predicted[flip] = rng.choice(classes, flip.sum())
    test = (manifest["split"] == "test").to_numpy()
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)))
    for true, guess in zip(manifest["material"][test], predicted[test], strict=True):
        matrix[index[true], index[guess]] += 100.0 / test.sum()
    score = {s: {"mean": m, "std": 0.05} for s, m in (("train", 0.9), ("val", 0.7), ("test", 0.65))}
    logits = {part: 3.0 * rng.normal(size=(200, len(classes))) for part in ("val", "test")}
    true = {part: logits[part].argmax(axis=1) ^ (rng.random(200) < 0.3) for part in logits}  # over-confident
    report = calibration.calibration_report(logits, {p: np.minimum(t, len(classes) - 1) for p, t in true.items()},
                                            task="mtc")
    run = cache / "runs" / task
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "task": task, "classes": classes, "elements": list(space.elements), "folds": 3, "accuracy": score,
        "f1_macro": score, "confusion_test_percent": matrix.tolist(), "per_fold": [],
        "calibration": calibration.summarize_calibration([report] * 3),
        "novelty": {"method": "stage1-mahalanobis", "quantile": 0.95, "flagged": {"val": 0.01, "test": 0.02}}}))
    pd.DataFrame([{"fold": f, "epoch": e, "split": s, "loss": 2.0 / e + (s == "val"), "accuracy": 0.2 * e,
                   "f1_macro": 0.15 * e} for f in range(3) for e in range(1, 5) for s in ("train", "val")]) \
        .to_csv(run / "history.csv", index=False)
    folder = cache / "latent" / task
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": manifest["image"], "material": manifest["material"], "split": manifest["split"],
                  "predicted": predicted, "correct": predicted == manifest["material"].to_numpy()}) \
        .to_csv(folder / "predictions.csv", index=False)


def build_analysis_store(cache, *, seed: int = 0):
    """A store with a data set, thumbnails, features.csv, MtC and MtL runs with predictions, the MtC latent tables,
    a two-stage sequential study with per-stage projections. Returns the manifest."""
    rng = np.random.default_rng(seed)
    pipeline.complete_store(cache, profile=TINY)
    manifest = pipeline.load_manifest(cache)
    n = len(manifest)
    embeddings = rng.normal(size=(n, 12))
    features = pd.DataFrame({"image": manifest["image"]})
    for j, name in enumerate(FEATURE_COLUMNS):  # half the descriptors follow a latent direction
        features[name] = np.abs(embeddings[:, j % 12] * (j % 2) + rng.normal(size=n) + 3.0)
    features.to_csv(cache / "features.csv", index=False)
    for task in results.TASKS:
        _write_run(cache, task, manifest, rng)
    frame = pd.concat([manifest[["image", "sample_id", "material"]], pd.DataFrame(embeddings)], axis=1)
    frame.columns = [str(c) for c in frame.columns]
    projection = fit_projection(embeddings, n_components=6)
    tables = latent.analyse(frame, features, projection=projection, n_boot=50, cv_folds=3, gallery_size=6)
    latent.write_latent_outputs(cache / "latent" / "mtc", tables, projection=projection)
    rows = []
    for task in results.TASKS:
        for n_classes, new in ((2, "WS2"), (3, "WSe2")):
            for mode in ("imagenet", "sequential"):
                for volume, images in (("full", 6.0), ("4", 4.0), ("2", 2.0)):
                    for split in ("train", "val", "test"):
                        # Sequential rows carry the paired difference; one stage's interval excludes 0.
                        low = 0.02 if (n_classes, volume) == (3, "full") else -0.05
                        diff = {"diff_mean": low + 0.03, "diff_low": low, "diff_high": low + 0.06} \
                            if mode == "sequential" else {}
                        rows.append({"n_classes": n_classes, "mode": mode, "task": task, "volume": volume,
                                     "split": split, "f1_mean": rng.uniform(0.3, 0.9), "f1_std": 0.05,
                                     "accuracy_mean": 0.7, "accuracy_std": 0.05, "new_class": new,
                                     "new_class_train_images": images,
                                     "run": f"{task}/{mode}/{n_classes}cls_{volume}", **diff})
    (cache / "sequential").mkdir()
    pd.DataFrame(rows).to_csv(cache / "sequential" / "results.csv", index=False)
    (cache / "sequential" / "study.json").write_text(json.dumps({"order": ["MoS2", "WS2", "WSe2"]}))
    for mode in ("imagenet", "sequential"):
        for n_classes, classes in ((2, ["MoS2", "WS2"]), (3, ["MoS2", "WS2", "WSe2"])):
            part = manifest[manifest["material"].isin(classes)]
            folder = cache / "latent" / "sequential" / "mtc" / mode / f"{n_classes}cls"
            folder.mkdir(parents=True)
            pd.DataFrame({"image": part["image"], "sample_id": part["sample_id"], "label": part["material"],
                          "PC1": rng.normal(size=len(part)), "PC2": rng.normal(size=len(part))}) \
                .to_csv(folder / "projection.csv", index=False)
    return manifest


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cache = tmp_path_factory.mktemp("analysis") / "cache"
    manifest = build_analysis_store(cache)
    return cache, manifest


@pytest.fixture(scope="module")
def app_context(store):
    import app as app_module

    app_module.configure(app_module.app, store[0])
    app_module.app.server.test_client().get("/")  # Dash imports the pages on the first request
    with app_module.app.server.app_context():
        yield app_module
    app_module.configure(app_module.app, None)


def _text(component) -> str:
    """All strings of a Dash component tree."""
    out, stack = [], [component]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif node is not None and hasattr(node, "children"):
            stack.append(node.children)
    return " ".join(out)


# --- store readers ----------------------------------------------------------------------------------------------

def test_metrics_table_and_confusion(store):
    cache, manifest = store
    table = results.metrics_table(cache)
    assert list(table["task"]) == ["MtC"] * 3 + ["MtL"] * 3
    assert table.loc[2, "f1_mean"] == pytest.approx(0.65)
    matrix = results.confusion(cache, "mtc")
    assert list(matrix.index) == list(matrix.columns) == ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"]
    assert matrix.to_numpy().sum() == pytest.approx(100.0)


def test_readers_return_none_for_absent_artifacts(tmp_path):
    assert results.run_metrics(tmp_path, "mtc") is None
    assert results.metrics_table(tmp_path).empty
    assert results.latent_tables(tmp_path) is None
    assert results.sequential_results(tmp_path) is None
    assert results.architectures(tmp_path) is None


def test_unreadable_metrics_names_the_file(tmp_path):
    (tmp_path / "runs" / "mtc").mkdir(parents=True)
    (tmp_path / "runs" / "mtc" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json: unreadable"):
        results.run_metrics(tmp_path, "mtc")


def test_unknown_task_is_refused(tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        results.run_metrics(tmp_path, "regression")


def test_confusion_of_wrong_shape_is_refused(tmp_path):
    (tmp_path / "runs" / "mtc").mkdir(parents=True)
    (tmp_path / "runs" / "mtc" / "metrics.json").write_text(json.dumps(
        {"classes": ["a", "b"], "confusion_test_percent": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="expected 2 x 2"):
        results.confusion(tmp_path, "mtc")


def test_cell_images_match_true_and_predicted_test_rows(store):
    cache, _ = store
    table = results.predictions(cache, "mtc")
    chosen = results.cell_images(table, "MoS2", "MoS2")
    expected = table[(table["material"] == "MoS2") & (table["predicted"] == "MoS2") & (table["split"] == "test")]
    assert list(chosen["image"]) == list(expected["image"])


def test_table5_display_adds_intervals_and_q_values(store):
    cache, _ = store
    tables = results.latent_tables(cache, "mtc")
    display = results.with_q_values(results.table5_display(tables["table5"]), tables["table5"],
                                    tables["correlation"])
    assert list(display["descriptor"]) == list(FEATURE_COLUMNS)
    assert display["min_r_ci"].str.match(r"^\[[+-]\d\.\d\d, [+-]\d\.\d\d\]$").all()
    row = tables["correlation"].set_index(["descriptor", "pc"]).loc[(display.loc[0, "descriptor"],
                                                                     tables["table5"].loc[0, "max_pc"])]
    assert display.loc[0, "max_r_q"] == pytest.approx(row["q_value"])
    assert display.loc[FEATURE_COLUMNS.index("grain_size"), "unit"] == "nm"


def test_percentile_images_use_the_threshold(store):
    cache, _ = store
    features = pd.read_csv(cache / "features.csv")
    threshold = float(features["grain_density"].quantile(0.75))
    high = results.percentile_images(features, "grain_density", "high", threshold)
    assert set(high) == set(features.loc[features["grain_density"] >= threshold, "image"])
    values = features.set_index("image").loc[high, "grain_density"].to_numpy()
    assert (np.diff(values) <= 0).all()  # most extreme first
    with pytest.raises(ValueError, match="side must be"):
        results.percentile_images(features, "grain_density", "middle", threshold)


def test_volume_order_and_study_order(store):
    assert results.volume_order(["full", "32", "8", "64"]) == ["8", "32", "64", "full"]
    assert results.sequential_order(store[0]) == ["MoS2", "WS2", "WSe2"]


# --- figure builders --------------------------------------------------------------------------------------------

def test_confusion_figure_is_percent_with_cell_ids(store):
    matrix = results.confusion(store[0], "mtc")
    figure = figures.confusion_figure(matrix)
    heat = figure.data[0]
    assert heat.type == "heatmap" and heat.zmin == 0
    assert list(heat.customdata[0][1]) == ["MoS2", "WS2"]
    assert figure.layout.xaxis.title.text == "predicted material"
    assert "% of test images" in heat.colorbar.title.text


def test_correlation_heatmap_is_diverging_around_zero(store):
    tables = results.latent_tables(store[0], "mtc")
    figure = figures.correlation_heatmap(tables["correlation"])
    heat = figure.data[0]
    assert (heat.zmin, heat.zmax, heat.zmid) == (-1, 1, 0)
    assert heat.z.shape == (len(FEATURE_COLUMNS), 6)
    significant = tables["correlation"]["q_value"] < 0.05
    assert sum(t.endswith("*") for row in heat.text for t in row) == int(significant.sum())


def test_cosine_heatmap_and_descriptor_scatter(store):
    cache, _ = store
    tables = results.latent_tables(cache, "mtc")
    figure = figures.cosine_heatmap(tables["cosine_regression_directions"], x_title="direction")
    assert figure.data[0].z.shape == (14, 14) and figure.data[0].zmid == 0
    features = pd.read_csv(cache / "features.csv")
    points = results.pc_descriptor_points(tables, features, "grain_size")
    scatter = figures.descriptor_scatter_figure(points, x="PC1", y="PC3", descriptor="grain_size",
                                                label="grain size (nm)", explained={"PC1": 0.4})
    assert scatter.data[-1].marker.colorbar.title.text == "grain size (nm)"
    assert scatter.layout.xaxis.title.text == "PC1 score (40.0 % of variance)"
    with pytest.raises(ValueError, match="not in the store's features.csv"):
        results.pc_descriptor_points(tables, features, "banana")


def test_metrics_and_training_curves_figures(store):
    cache, _ = store
    bars = figures.metrics_figure(results.metrics_table(cache))
    assert {t.name for t in bars.data} == {"MtC", "MtL"}
    assert bars.data[0].error_y.array[0] == pytest.approx(5.0)
    curves = figures.training_curves_figure(results.history(cache, "mtc"))
    means = [t for t in curves.data if t.name.endswith("(mean)")]
    assert len(means) == 4 and len(curves.data) == 4 + 2 * 2 * 3
    assert curves.layout.yaxis.type == "log" and curves.layout.yaxis2.type is None  # loss log, F1 linear
    with pytest.raises(ValueError, match="history lacks"):
        figures.training_curves_figure(pd.DataFrame({"epoch": [1]}))


def test_sequential_figure_panels_and_error_bars(store):
    table = results.sequential_results(store[0])
    figure = figures.sequential_figure(table)
    assert [a.text for a in figure.layout.annotations] == ["MtC · 3 classes", "MtL · 3 classes"]
    imagenet = figure.data[0]
    assert list(imagenet.x) == ["2", "4", "full"]
    assert imagenet.error_y.array[0] == pytest.approx(5.0)
    assert {t.name for t in figure.data} == {"ImageNet", "Sequential"}
    with pytest.raises(ValueError, match="no rows for split"):
        figures.sequential_figure(table, split="holdout")


# --- pages as plain functions -----------------------------------------------------------------------------------

def test_performance_page_and_cell_click(app_context, store):
    from pages import performance

    cache, _ = store
    text = _text(performance.layout())
    assert "Scores per partition" in text and "MtC test confusion matrix" in text
    click = {"points": [{"x": "MoS2", "y": "MoS2"}]}
    gallery, chosen = performance.show_cell(cache, "mtc", click)
    table = results.cell_images(results.predictions(cache, "mtc"), "MoS2", "MoS2")
    assert chosen["images"] == list(table["image"]) and "true MoS2, predicted MoS2" in chosen["source"]
    assert f"{len(table)} image(s)" in _text(gallery)
    message, unchanged = performance.show_cell(cache, "mtc", None)
    assert "Click a cell" in _text(message) and unchanged is not None
    assert "Calibration and novelty" in text and "the 95 % line of the fold's validation" in text
    assert "its best validation epoch." in text and "moving average" not in text


def test_curves_say_when_validation_scores_a_weight_average(tmp_path):
    run = tmp_path / "runs" / "mtl"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"ema_decay": 0.98}))
    note = results.curves_note(tmp_path, ["mtc", "mtl"])
    assert "MtL (decay 0.98 per step): validation scores, and the kept model, are a moving average" in note
    assert "MtC (decay" not in note


def test_mtl_minus_mtc_is_compared_fold_by_fold(tmp_path):
    from tmdafm_core.comparisons import paired_interval

    for task, scores in (("mtc", [0.6, 0.7, 0.65]), ("mtl", [0.7, 0.8, 0.74])):
        run = tmp_path / "runs" / task
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"per_fold": [
            {"fold": k, "f1_macro": {"test": v}} for k, v in enumerate(scores)]}))
    sentence = results.task_comparison(tmp_path)
    mean, low, high = paired_interval([0.1, 0.1, 0.09])
    assert sentence.startswith(f"MtL − MtC test macro-F1: {100 * mean:+.1f} pp") and "supported" in sentence
    assert results.task_comparison(tmp_path / "none") is None


def test_calibration_table_and_reliability_diagram(store):
    from pages import performance

    cache, _ = store
    table = results.calibration_table(cache)
    assert list(table["task"]) == ["MtC", "MtL"] and tuple(table.columns) == results.CALIBRATION_COLUMNS
    block = json.loads((cache / "runs" / "mtc" / "metrics.json").read_text())["calibration"]
    assert table.loc[0, "ece_test"] == pytest.approx(block["ece"]["test"])
    assert table.loc[0, "ece_test"] < table.loc[0, "ece_test_uncalibrated"]  # the temperature helps on test too
    row = performance.calibration_rows(table)[0]
    assert row["flagged"] == "1.0 / 2.0" and row["temperature"].count("(") == 1
    assert row["ece_test"] == f"{table.loc[0, 'ece_test_uncalibrated']:.3f} → {table.loc[0, 'ece_test']:.3f}"
    verdict = results.calibration_verdicts(table)[0]
    assert verdict.startswith("MtC: ") and "test ECE" in verdict
    worse = table.assign(ece_test=table["ece_test_uncalibrated"] + 0.01)
    assert "does not carry over to new samples" in results.calibration_verdicts(worse)[0]
    good = table.assign(ece_test=0.02)
    assert "right about 8 times in 10" in results.calibration_verdicts(good)[0]
    noisy = table.assign(ece_test=0.09, ece_test_uncalibrated=0.2, ece_test_floor=0.12)
    assert "consistent with calibrated" in results.calibration_verdicts(noisy)[0]
    reliability = results.reliability_table(cache)
    assert set(reliability["probabilities"]) == {"calibrated", "uncalibrated"}
    assert reliability.groupby(["task", "probabilities"])["count"].sum().eq(3 * 200).all()  # 3 folds pooled
    figure = figures.reliability_figure(reliability)
    assert [a.text for a in figure.layout.annotations] == ["MtC", "MtL"]
    assert {t.name for t in figure.data} == {"perfect calibration", "calibrated", "uncalibrated"}
    with pytest.raises(ValueError, match="no calibration"):
        figures.reliability_figure(reliability.iloc[:0])


def test_performance_of_runs_without_calibration_says_how_to_rebuild(app_context, tmp_path):
    from pages import performance

    cache = tmp_path / "cache"
    (cache / "runs" / "mtc").mkdir(parents=True)
    assert results.calibration_table(cache).empty
    assert "tmdafm precompute" in _text(performance._calibration(cache))


def test_performance_without_predictions_says_what_to_build(app_context, tmp_path):
    from pages import performance

    cache = tmp_path / "cache"
    (cache / "runs" / "mtc").mkdir(parents=True)
    chosen, table, message = performance.cell_selection(cache, "mtc", {"points": [{"x": "a", "y": "b"}]})
    assert chosen is None and "predictions.csv" in message and "tmdafm precompute" in message


def test_physical_page_galleries_select_every_image_past_the_percentile(app_context, store):
    from pages import physical

    cache, _ = store
    text = _text(physical.layout())
    assert "Table 5" in text and "Figure 7" in text and "Figure 8" in text
    sides = physical.gallery_sides(cache, "mtc", "grain_density")
    chosen = physical.select_side(cache, "mtc", "grain_density", "low")
    assert chosen["images"] == sides["low"]["images"]
    assert len(chosen["images"]) >= len(sides["low"]["shown"]) and "25th" in chosen["source"]
    figure, points, filename = physical.scatter(cache, "mtc", "grain_size", "PC2", "PC1")
    assert filename == "tmdafm_mtc_PC2_PC1_grain_size" and len(points) == 40


def test_sequential_page_rows_and_stage_panels(app_context, store):
    from pages import sequential

    cache, _ = store
    text = _text(sequential.layout())
    assert "Figure 4" in text and "MoS2 → WS2 → WSe2" in text
    study = cache / "sequential" / "study.json"
    original = study.read_text() if study.is_file() else None
    document = json.loads(original) if original else {"order": ["MoS2", "WS2", "WSe2"]}
    assert "whole samples first" in text or "drawn at random" in text
    study.write_text(json.dumps({**document, "train": {"head": "reset", "volume_mode": "paper", "weights": "none"}}))
    try:
        text = _text(sequential.layout())
        assert results.mode_titles(cache) == {"imagenet": "Scratch", "sequential": "Sequential"}
        assert [m.title for m in selection.stage_models(cache, "mtc", "imagenet")][0] == "Scratch · MTC · 2 classes"
    finally:
        study.write_text(original) if original else study.unlink()
    assert "fresh output layer" in text and "drawn at random (the paper's)" in text
    assert "Scratch: every stage starts from random weights" in text and "ImageNet:" not in text
    rows = sequential.sequential_rows(results.sequential_results(cache), "test")
    assert list(rows["volume"][:3]) == ["2", "4", "full"] and len(rows) == 2 * 2 * 3
    assert list(rows["supported"]).count("yes") == 2 and rows["interval"].iloc[0] == "-5.0 to +1.0"
    sentence = sequential.supported_sentence(rows)
    assert sentence.startswith("2 of 12 differences are supported") and "MtC 3 classes, volume full" in sentence
    assert "Student-t interval over folds" in text
    figure, data = sequential.stage_panels(cache, "mtc", "sequential")
    assert [a.text for a in figure.layout.annotations] == ["2 classes", "3 classes"]
    assert set(data["stage"]) == {"2 classes", "3 classes"}
    structure = selection.stage_structure(cache, "mtc")
    assert structure["n_classes"].tolist() == [2, 3, 2, 3] and structure["centroid_shift"].isna().sum() == 2
    assert structure["silhouette"].between(-1, 1).all()
    assert "Class structure per stage" in text and "silhouette at 3 classes" in text
    assert list(sequential.structure_rows(structure).columns) == [
        "task", "n_classes", "silhouette_imagenet", "silhouette_sequential", "centroid_shift_imagenet",
        "centroid_shift_sequential"]


def test_demo_scope_says_what_the_store_can_and_cannot_show(store, tmp_path):
    cache, _ = store
    scope = results.demo_scope(cache)
    assert scope["can"][0].startswith("the whole workflow on data with known answers: its models reach test macro-F1")
    assert any("differences are supported by their 95 % interval" in line for line in scope["can"])
    assert any(line.startswith("tight intervals: 3 folds") for line in scope["cannot"])
    last = selection.stage_structure(cache, "mtc").query("n_classes == n_classes.max()")["silhouette"]
    grouped = [line for line in scope["can"] if line.startswith("Figure 5's class structure")]
    overlapping = [line for line in scope["cannot"] if line.startswith("clear material groups")]
    assert (len(grouped), len(overlapping)) == ((1, 0) if (last >= 0.25).all() else (0, 1))
    arm = results.mode_titles(cache)["imagenet"]
    assert f"MtC at 3 classes: silhouette {arm} {last.iloc[0]:.2f}, Sequential {last.iloc[1]:.2f}" in " ".join(
        grouped + overlapping)
    empty = results.demo_scope(tmp_path, {"training": "demo", "weights": None})
    assert not any("known answers" in line for line in empty["can"])
    assert any("the demo trains from scratch" in line for line in empty["cannot"])
    pretrained = results.demo_scope(tmp_path, {"training": "demo", "weights": "afm-pretrained"})
    assert "start from its own 'AFM-pretrained (synthetic)' backbone" in " ".join(pretrained["cannot"])


def test_demo_scope_says_when_the_stage_projections_show_groups(tmp_path, monkeypatch):
    def structure(cache_dir, task):
        silhouettes = {"mtc": [0.27, 0.26], "mtl": [0.16, 0.31]}[task]
        return pd.DataFrame({"task": task, "mode": ["imagenet", "sequential"], "n_classes": 5,
                             "silhouette": silhouettes, "centroid_shift": 0.2})

    monkeypatch.setattr(selection, "stage_structure", structure)
    scope = results.demo_scope(tmp_path, {"training": "demo", "weights": "afm-pretrained"})
    assert ("Figure 5's class structure: every arm's stage projection shows the materials as groups (MtC at 5 "
            "classes: silhouette AFM-pretrained (synthetic) 0.27, Sequential 0.26; /sequential)") in scope["can"]
    assert ("clear material groups in every stage projection of Figure 5 (MtL at 5 classes: silhouette "
            "AFM-pretrained (synthetic) 0.16, Sequential 0.31; groups show from about 0.25)") in scope["cannot"]


def test_base_arm_is_named_by_what_it_started_from():
    assert results.base_arm_title("imagenet-v1") == "ImageNet"
    assert results.base_arm_title("none") == "Scratch"
    assert results.base_arm_title("/lab/backbone.pt") == "Pretrained (backbone.pt)"


@pytest.mark.parametrize("page", ["physical", "performance", "sequential"])
def test_empty_store_shows_what_is_missing_and_the_command(app_context, tmp_path, page):
    import importlib

    module = importlib.import_module(f"pages.{page}")
    previous = app_context.app.server.config["TMDAFM_CACHE"]
    app_context.configure(app_context.app, tmp_path / "empty")
    try:
        text = _text(module.layout())
    finally:
        app_context.app.server.config["TMDAFM_CACHE"] = previous
    assert "tmdafm" in text and "precompute" in text
    assert "Traceback" not in text


def test_broken_file_shows_an_error_card_not_a_traceback(app_context, store, tmp_path):
    from pages import performance

    cache = tmp_path / "broken"
    (cache / "runs" / "mtc").mkdir(parents=True)
    (cache / "runs" / "mtc" / "metrics.json").write_text("{")
    previous = app_context.app.server.config["TMDAFM_CACHE"]
    app_context.configure(app_context.app, cache)
    try:
        text = _text(performance.layout())
    finally:
        app_context.app.server.config["TMDAFM_CACHE"] = previous
    assert "could not be read" in text and "metrics.json: unreadable" in text



def test_metrics_table_shows_the_papers_mtl_rule_beside_ours(app_context, tmp_path):
    def block(value):
        return {s: {"mean": value, "std": 0.01, "std_paper": 0.009} for s in ("train", "val", "test")}

    metrics = {"task": "mtl", "classes": ["MoS2", "WS2"], "elements": ["Mo", "W", "S"], "folds": 2,
               "accuracy": block(0.9), "f1_macro": block(0.88), "confusion_test_percent": [[50, 0], [0, 50]],
               "per_fold": [], "paper_rule": {"accuracy": block(0.8), "f1_macro": block(0.7),
                                              "confusion_test_percent": [[45, 0, 5], [0, 45, 5]],
                                              "columns": ["MoS2", "WS2", "unknown"]}}
    (tmp_path / "runs" / "mtl").mkdir(parents=True)
    (tmp_path / "runs" / "mtl" / "metrics.json").write_text(json.dumps(metrics))
    table = results.metrics_table(tmp_path)
    assert list(table["task"]) == ["MtL"] * 3 + ["MtL (paper rule)"] * 3
    assert table.loc[5, "f1_mean"] == pytest.approx(0.7)
    from pages import performance

    assert performance.scores_rows(table)[5]["f1"] == "70.0 ± 1.0"


def test_performance_says_an_imported_model_has_no_scores_instead_of_missing(app_context, tmp_path):
    from pages import performance

    (tmp_path / "runs" / "mtc").mkdir(parents=True)
    (tmp_path / "runs" / "mtc" / "config.json").write_text(json.dumps({"mode": "imported", "task": "mtc",
                                                                         "source": "/models/paper_mtc.pth"}))
    text = _text(performance.performance_body(tmp_path))
    assert "imported with `tmdafm import-model` and not evaluated here" in text
    assert "imported from /models/paper_mtc.pth" in text
    assert "MtC run (material classes)" not in text  # not offered for building as if it were missing
