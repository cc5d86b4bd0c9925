"""Performance (``/performance``): scores per partition, MtC and MtL test confusion matrices (paper Figure 3) whose
cells list their test images, training curves, and the architecture comparison when the store has one."""

from __future__ import annotations

import dash
import pandas as pd
from dash import Input, Output, State, ctx, dcc, html

from pages import _export, _ui
from tmdafm_core import figures, results, selection

dash.register_page(__name__, path="/performance", name="Performance", title="Performance · tmdafm", order=30)

for _task in results.TASKS:
    _export.register(f"confusion-{_task}", f"tmdafm_confusion_{_task}")
_export.register("scores-chart", "tmdafm_scores")
_export.register("training-curves", "tmdafm_training_curves_mtc")


# --- page data (plain functions) --------------------------------------------------------------------------------

def scores_rows(metrics: pd.DataFrame) -> list[dict]:
    """Score table rows: task, partition, accuracy and macro-F1 as ``mean ± std`` in percent."""
    return [{"task": row.task, "partition": figures.SPLIT_NAMES.get(row.split, row.split),
             "accuracy": f"{100 * row.accuracy_mean:.1f} ± {100 * row.accuracy_std:.1f}",
             "f1": f"{100 * row.f1_mean:.1f} ± {100 * row.f1_std:.1f}", "folds": int(row.folds)}
            for row in metrics.itertuples()]


def cell_selection(cache, task: str, click) -> tuple[dict | None, pd.DataFrame | None, str]:
    """What a click on a confusion cell selects: ``(selection document, images table, message)``."""
    try:
        point = click["points"][0]
        true, predicted = point["y"], point["x"]
    except (TypeError, KeyError, IndexError):
        return None, None, "Click a cell of a confusion matrix to list its test images."
    table = results.predictions(cache, task)
    name = results.TASK_NAMES[task]
    if table is None:
        return None, None, (f"No per-image predictions for {name} (latent/{task}/predictions.csv) in the store; "
                            f"build them with `{results.precompute_command(cache)}`.")
    chosen = results.cell_images(table, true, predicted)
    source = f"{name} confusion cell: true {true}, predicted {predicted} (test images)"
    return selection.make_selection(chosen["image"], source), chosen, source


def architecture_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The architecture table with percentages: arch, weights, task, ImageNet top-1, accuracy and F1 per split."""
    out = table[["arch", "weights", "task"]].copy()
    out["task"] = out["task"].map(results.TASK_NAMES).fillna(out["task"])
    out["imagenet_top1"] = table["imagenet_top1"].map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")
    for split in ("val", "test"):
        for metric in ("accuracy", "f1"):
            mean, std = table.get(f"{metric}_{split}_mean"), table.get(f"{metric}_{split}_std")
            if mean is not None:
                out[f"{metric}_{split}"] = [f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in zip(mean, std, strict=True)]
    return out


# --- layout -----------------------------------------------------------------------------------------------------

def _scores(cache, metrics: pd.DataFrame):
    folds = sorted(set(metrics["folds"]))
    table = _ui.data_grid("scores-table", scores_rows(metrics), [
        _ui.column("task", "task", tooltip="MtC: material classes; MtL: element labels", left=True),
        _ui.column("partition", "partition", left=True),
        _ui.column("accuracy", "accuracy (%)", tooltip="share of images whose material is right, in %: mean ± std "
                   "over the fold models"),
        _ui.column("f1", "macro-F1 (%)", tooltip="F1 averaged over the classes, in %: mean ± std over the fold models"),
        _ui.column("folds", "folds", tooltip="fold models averaged")], export_name="tmdafm_scores")
    graph = dcc.Graph(id="scores-chart", figure=figures.metrics_figure(metrics),
                      config=_export.graph_config("tmdafm_scores"))
    return _ui.card("Scores per partition", html.Div(className="grid two", children=[
        html.Div([table, _ui.caption(
            f"Mean ± sample standard deviation (ddof 1; metrics.json also holds the paper's np.std, ddof 0) over "
            f"the {', '.join(map(str, folds))} cross-validation fold models. "
            "Validation is each fold's held-out part; test is the held-out test set, scored by every fold model. "
            "MtL decodes to the most likely valid material; \"MtL (paper rule)\" scores the same models by the "
            "paper's rule: elements with probability > 0.5, the material with exactly those elements, else "
            "\"unknown\", counted as an error."), *_task_comparison(cache)]),
        _export.figure_panel(graph, data=metrics)]), id="scores")


def _task_comparison(cache) -> list:
    sentence = results.task_comparison(cache)
    if sentence is None:
        return []
    return [html.P(sentence + " Per-fold paired differences (MtC and MtL train on the same folds), Student-t "
                   "interval over folds.", className="caption task-comparison")]


def _confusion(cache, task: str):
    matrix = results.confusion(cache, task)
    name = results.TASK_NAMES[task]
    if matrix is None:
        imported = results.imported_run(cache, task)
        note = (f"The {name} model was imported from {imported.get('source')} and not evaluated here: no scores."
                if imported else f"No {name} run in the store.")
        # The hidden graph keeps the click callback's inputs in the layout.
        return _ui.card(f"{name} confusion matrix", _ui.caption(note),
                        dcc.Graph(id=f"confusion-{task}", style={"display": "none"}))
    graph = dcc.Graph(id=f"confusion-{task}", figure=figures.confusion_figure(matrix),
                      config=_export.graph_config(f"tmdafm_confusion_{task}",
                                                  remove=("select2d", "lasso2d", "zoom2d", "pan2d", "autoScale2d")))
    what = "material classes" if task == "mtc" else "element labels, decoded to the nearest material"
    return _ui.card(f"{name} test confusion matrix ({what})", _export.figure_panel(
        graph, data=matrix.reset_index().rename(columns={"true": "true \\ predicted"})), id=f"confusion-card-{task}")


def _curves(cache, tasks):
    history = results.history(cache, tasks[0])
    options = [{"label": results.TASK_NAMES[t], "value": t} for t in tasks]
    graph = dcc.Graph(id="training-curves", figure=figures.training_curves_figure(history),
                      config=_export.graph_config(f"tmdafm_training_curves_{tasks[0]}"))
    return _ui.card("Training curves", dcc.RadioItems(id="curves-task", options=options, value=tasks[0],
                                                      inline=True, className="radio"),
                    _export.figure_panel(graph, data=history),
                    _ui.caption(results.curves_note(cache, tasks)), id="curves")


_CALIBRATION_NAMES = {"task": "task", "temperature": "temperature (mean, range)",
                      "ece_val": "val ECE (before → after)", "ece_test": "test ECE (before → after)",
                      "ece_test_floor": "test ECE sampling alone explains",
                      "brier_test": "test Brier (before → after)",
                      "flagged": "flagged unfamiliar, val / test (%)"}
_CALIBRATION_TIPS = {"temperature": "the fold models' fitted temperatures (no unit; 1 leaves the outputs as they are)",
                     "ece_val": "expected calibration error over 15 confidence bins (0..1; 0 is perfect)",
                     "ece_test": "expected calibration error over 15 confidence bins (0..1; 0 is perfect)",
                     "ece_test_floor": "the ECE a perfectly calibrated model would show on this few test images",
                     "brier_test": "mean squared error of the probability vector (0..2; 0 is perfect)",
                     "flagged": "share of images the novelty score calls unfamiliar, in %"}


def calibration_rows(table: pd.DataFrame) -> list[dict]:
    """The calibration table as shown: before → after pairs to 3 decimals, flagged shares in percent."""
    def number(value, scale=1.0, digits=3):
        return "—" if value != value else f"{scale * value:.{digits}f}"

    return [{"task": row["task"], "temperature": row["temperature"],
             **{key: f"{number(row[key + '_uncalibrated'])} → {number(row[key])}"
                for key in ("ece_val", "ece_test", "brier_test")},
             "ece_test_floor": f"≤ {number(row['ece_test_floor'])}",
             "flagged": f"{number(row['flagged_val'], 100, 1)} / {number(row['flagged_test'], 100, 1)}"}
            for _, row in table.iterrows()]


def _calibration(cache):
    table = results.calibration_table(cache)
    if table.empty:
        return _ui.card("Calibration and novelty", _ui.caption(
            "The store's runs were trained before tmdafm kept calibration and novelty references: probabilities are "
            f"uncalibrated and novelty unknown. Rebuild them with `{results.precompute_command(cache)}`."),
            id="calibration")
    reliability = results.reliability_table(cache)
    quantile = table.attrs["novelty_quantile"]
    graph = dcc.Graph(id="reliability-chart", figure=figures.reliability_figure(reliability),
                      config=_export.graph_config("tmdafm_reliability"))
    grid = _ui.data_grid("calibration-table", calibration_rows(table), [
        _ui.column(key, name, tooltip=_CALIBRATION_TIPS.get(key), left=key == "task")
        for key, name in _CALIBRATION_NAMES.items()], export_name="tmdafm_calibration")
    verdicts = html.Ul([html.Li(sentence) for sentence in results.calibration_verdicts(table)],
                       className="calibration-verdicts")
    return _ui.card("Calibration and novelty", grid, verdicts, html.Div(className="grid two", children=[
        html.Div([_ui.caption(
            "Each fold model divides its outputs by a temperature fitted on its own validation images (never the "
            "test set); the app and `tmdafm predict` show these calibrated probabilities. ECE: expected "
            "calibration error over 15 confidence bins (0 is perfect); Brier: mean squared error of the probability "
            "vector (0 is perfect). Both are means over folds. Novelty compares an image's texture statistics with "
            f"the fold's training images; its threshold is the {100 * quantile:.0f} % line of the fold's validation "
            f"images, so {100 * (1 - quantile):.0f} % of those are flagged by design; the test images, of samples no "
            "model saw, are the honest check.")]),
        _export.figure_panel(graph, data=reliability)]), id="calibration")


def _architectures(cache):
    table = results.architectures(cache)
    if table is None:
        return _ui.card("Architecture comparison", _ui.caption([
            "Not in the store. Compare ResNet18–152 with ImageNet V1/V2 weights (paper Tables 3 and 4) with ",
            html.Code(f"tmdafm compare-archs DATA --out {cache / 'architectures'}"),
            " (a GPU is advised)."]), id="architectures")
    rows = architecture_rows(table)
    names = {"arch": "architecture", "weights": "weights", "task": "task", "imagenet_top1": "ImageNet top-1 (%)",
             "accuracy_val": "val accuracy (%)", "f1_val": "val macro-F1 (%)", "accuracy_test": "test accuracy (%)",
             "f1_test": "test macro-F1 (%)"}
    return _ui.card("Architecture comparison", _ui.data_grid(
        "architecture-table", rows, [_ui.column(c, names.get(c, c), left=c in ("arch", "weights", "task"))
                                     for c in rows.columns], export_name="tmdafm_architectures"),
        _ui.caption("Mean ± std over folds, all runs on one shared split."), id="architectures")


def ablation_rows(table: pd.DataFrame) -> list[dict]:
    """Table 2 with percentages: arm, then val/test macro-F1 and accuracy as mean ± std over folds."""
    rows = []
    for row in table.to_dict("records"):
        out = {"arm": row["title"]}
        for split in ("val", "test"):
            for metric in ("f1", "accuracy"):
                out[f"{metric}_{split}"] = (f"{100 * row[f'{metric}_{split}_mean']:.1f} ± "
                                            f"{100 * row[f'{metric}_{split}_std']:.1f}")
        rows.append(out)
    return rows


def _ablation(cache):
    table = results.ablation(cache)
    title = "Transfer learning: fine-tuning vs feature extraction vs scratch (paper Table 2)"
    if table is None:
        return _ui.card(title, _ui.caption([
            "Not in the store. Train the two other arms on the store's data and folds (its MtC run is the "
            "fine-tuning arm; a few minutes on the demo) with ", html.Code(f"tmdafm ablation --store {cache}"),
            ", then reload this page."]), id="ablation")
    names = {"arm": "arm", "f1_val": "val macro-F1 (%)", "accuracy_val": "val accuracy (%)",
             "f1_test": "test macro-F1 (%)", "accuracy_test": "test accuracy (%)"}
    rows = ablation_rows(table)
    grid = _ui.data_grid("ablation-table", rows, [_ui.column(c, names[c], left=c == "arm") for c in names],
                         export_name="tmdafm_table2")
    return _ui.card(title, grid, _ui.caption(
        "MtC, mean ± std over the fold models, every arm on the store's folds and test set. Paired fold "
        "differences, Student-t 95 % interval over folds:"),
        html.Ul([html.Li(sentence) for sentence in results.ablation_comparisons(cache)], className="caption"),
        id="ablation")


def performance_body(cache) -> list:
    metrics = results.metrics_table(cache)
    tasks = [t for t in results.TASKS if results.run_metrics(cache, t) is not None]
    imported = [t for t in results.TASKS if t not in tasks and results.imported_run(cache, t)]
    missing = [t for t in results.TASKS if t not in tasks and t not in imported]
    notes = [_ui.card("Imported models", _ui.caption(
        f"{', '.join(results.TASK_NAMES[t] for t in imported)}: imported with `tmdafm import-model` and not "
        "evaluated here, so they have no cross-validated scores; their predictions and latent space are on the "
        "other pages."), id="performance-imported")] if imported else []
    if metrics.empty and imported:
        return notes + [html.Div(className="grid two", children=[_confusion(cache, t) for t in results.TASKS])]
    if metrics.empty:
        return [_ui.needs_card(cache, missing, title="No trained models in the store yet",
                               card_id="performance-missing",
                               what="This page shows the cross-validated MtC and MtL runs. Build them with the "
                                    f"commands below, or everything at once with "
                                    f"`{results.precompute_command(cache)}`.")]
    sections = list(notes)
    if missing:
        sections.append(_ui.needs_card(cache, missing, title="Partly built", card_id="performance-missing",
                                       what="Some runs are not in the store yet:"))
    sections += [
        _scores(cache, metrics),
        html.Div(className="grid two", children=[_confusion(cache, t) for t in results.TASKS]),
        _ui.caption("Percent of all test images, averaged over the fold models (the paper's Figure 3); the "
                    "diagonal sums to the test accuracy. Click a cell to list its test images as classified by "
                    "the model of the latent view (the best fold)."),
        _ui.card("Test images in the chosen cell", _export.selection_tools(),
                 html.Div(id="cell-gallery", children=_ui.caption(
                     "Click a cell of a confusion matrix to list its test images.")), id="cell-images"),
        _curves(cache, tasks),
        _calibration(cache),
        _ablation(cache),
        _architectures(cache),
    ]
    return sections


def layout(**_query):
    cache = _ui.cache_dir()
    try:
        body = performance_body(cache)
    except ValueError as exc:
        body = [_ui.error_card("A run in the store could not be read", str(exc), results.precompute_command(cache))]
    return html.Div(id="performance-body", children=body)


# --- callbacks --------------------------------------------------------------------------------------------------

def show_cell(cache, task: str, click) -> tuple:
    """Gallery children and selection for a confusion-matrix click (plain function behind the callback)."""
    chosen, table, message = cell_selection(cache, task, click)
    if chosen is None:
        return _ui.caption(message), dash.no_update
    items = selection.gallery(cache, chosen["images"], points=table, limit=96)
    captions = [[item["material"] or "", f"→ {item['predicted']}"] for item in items]
    more = len(chosen["images"]) - len(items)
    return [html.P(f"{message}: {len(chosen['images'])} image(s)" + (f", first {len(items)} shown" if more > 0
                                                                      else ""), className="cell-title"),
            _ui.thumbnails(items, captions=captions, empty="No test image falls in this cell for the best-fold "
                                                            "model (the matrix averages all fold models).")], chosen


@dash.callback(Output("cell-gallery", "children"), Output("selection", "data", allow_duplicate=True),
               Input("confusion-mtc", "clickData"), Input("confusion-mtl", "clickData"),
               prevent_initial_call=True)
def _on_cell(click_mtc, click_mtl):
    task = "mtl" if ctx.triggered_id == "confusion-mtl" else "mtc"
    return show_cell(_ui.cache_dir(), task, click_mtl if task == "mtl" else click_mtc)


@dash.callback(Output("training-curves", "figure"), Output("training-curves", "config"),
               Output(_export.data_store_id("training-curves"), "data"),
               Input("curves-task", "value"), State("training-curves", "config"), prevent_initial_call=True)
def _on_curves_task(task, config):
    history = results.history(_ui.cache_dir(), task)
    if history is None:
        return dash.no_update, dash.no_update, dash.no_update
    config = dict(config or {})
    config["toImageButtonOptions"] = {**config.get("toImageButtonOptions", {}),
                                      "filename": f"tmdafm_training_curves_{task}"}
    return figures.training_curves_figure(history), config, _export.table_data(history)
