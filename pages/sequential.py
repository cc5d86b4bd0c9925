"""Sequential training (``/sequential``): F1 against the training volume of the newly added class, ImageNet against
Sequential starting weights, MtC and MtL, for each class count (paper Figure 4), and the latent space of each stage
(paper Figure 5) when the store has the per-stage projections."""

from __future__ import annotations

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html

from pages import _export, _ui
from tmdafm_core import figures, results, selection
from tmdafm_core.embeddings import VISIBLE_GROUPS, last_stage

dash.register_page(__name__, path="/sequential", name="Sequential training", title="Sequential training · tmdafm",
                   order=40)

_export.register("sequential-f1", "tmdafm_sequential_f1_test")
_export.register("stage-panels", "tmdafm_stages_mtc_sequential")


# --- page data (plain functions) --------------------------------------------------------------------------------

def sequential_rows(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """One row per task x class count x volume: the new class, its training images, F1 ``mean ± std`` (%) per
    mode, Sequential minus ImageNet (percentage points, mean of the per-fold differences) with its 95 % interval,
    and whether the interval excludes 0 (``supported``)."""
    part = table[table["split"].astype(str) == split]
    order = {v: i for i, v in enumerate(results.volume_order(part["volume"]))}
    rows = []
    for (task, n, volume), group in part.groupby(["task", "n_classes", "volume"], sort=False):
        by_mode = group.set_index("mode")
        row = {"task": results.TASK_NAMES.get(task, task), "n_classes": int(n), "volume": str(volume),
               "new_class": by_mode["new_class"].iloc[0] if "new_class" in by_mode else "",
               "new_class_train_images": round(float(by_mode["new_class_train_images"].iloc[0]), 1)
               if "new_class_train_images" in by_mode else None}
        for mode in ("imagenet", "sequential"):
            row[mode] = (f"{100 * by_mode.loc[mode, 'f1_mean']:.1f} ± {100 * by_mode.loc[mode, 'f1_std']:.1f}"
                         if mode in by_mode.index else "–")
        if {"imagenet", "sequential"} <= set(by_mode.index):
            row["gain"] = round(100 * (by_mode.loc["sequential", "f1_mean"] - by_mode.loc["imagenet", "f1_mean"]), 1)
            low, high = (by_mode.loc["sequential", c] if c in by_mode else float("nan")
                         for c in ("diff_low", "diff_high"))
            if low == low and high == high:
                row["interval"] = f"{100 * low:+.1f} to {100 * high:+.1f}"
                row["supported"] = "yes" if low > 0 or high < 0 else "no"
        rows.append(row)
    out = pd.DataFrame(rows, columns=["task", "n_classes", "volume", "new_class", "new_class_train_images",
                                      "imagenet", "sequential", "gain", "interval", "supported"])
    return out.sort_values(["task", "n_classes", "volume"], key=lambda c: c.map(order) if c.name == "volume" else c,
                           kind="stable").reset_index(drop=True)


def supported_sentence(rows: pd.DataFrame) -> str:
    """How many Sequential − base-arm differences the study supports, in words."""
    judged = rows["supported"].dropna() if "supported" in rows else pd.Series(dtype=object)
    if judged.empty:
        return "No intervals: the study's runs lack per-fold scores (rebuild with `tmdafm precompute`)."
    supported = rows[rows["supported"] == "yes"]
    text = f"{len(supported)} of {len(judged)} differences are supported (the interval excludes 0)"
    if len(supported):
        text += ": " + "; ".join(f"{r.task} {r.n_classes} classes, volume {r.volume} ({r.gain:+.1f} pp)"
                                 for r in supported.itertuples())
    return text + ". The others are within what the fold-to-fold spread allows: no finding either way."


def stage_panels(cache, task: str, mode: str):
    """Per-stage latent panels of one task and mode (:func:`tmdafm_core.selection.stage_panels`)."""
    return selection.stage_panels(cache, task, mode)


def structure_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per task x stage: silhouette and centroid shift of each mode side by side (2 decimals)."""
    wide = table.pivot_table(index=["task", "n_classes"], columns="mode", values=["silhouette", "centroid_shift"],
                             dropna=False)
    rows = pd.DataFrame({"task": [results.TASK_NAMES.get(t, t) for t, _ in wide.index],
                         "n_classes": [int(n) for _, n in wide.index]})
    for value in ("silhouette", "centroid_shift"):
        for mode in selection.SEQUENTIAL_MODES:
            column = (value, mode)
            rows[f"{value}_{mode}"] = (wide[column].round(2).to_numpy() if column in wide.columns
                                       else float("nan"))
    return rows


def structure_sentence(table: pd.DataFrame, titles: dict, *, goal: float = VISIBLE_GROUPS) -> str:
    """What the stage projections show, in words: class separation at the last stage and whether Sequential
    training keeps classes in place better than restarting from the base weights (mean centroid shift)."""
    parts = []
    for task, part in table.groupby("task", sort=False):
        name = results.TASK_NAMES.get(task, task)
        last, grouped = last_stage(part, goal=goal)
        separation = ", ".join(f"{titles[r.mode]} {r.silhouette:.2f}" for r in last.itertuples())
        shifts = part.groupby("mode")["centroid_shift"].mean()
        sentence = f"{name}: silhouette at {int(last['n_classes'].iloc[0])} classes {separation}"
        sentence += (" (visible groups)" if grouped else
                     f" (below {goal}: the classes overlap in the plotted plane)")
        if {"imagenet", "sequential"} <= set(shifts.dropna().index):
            kept = shifts["sequential"] < shifts["imagenet"]
            sentence += (f"; classes move {shifts['sequential']:.2f} (Sequential) against {shifts['imagenet']:.2f} "
                         f"({titles['imagenet']}) of the stage's spread per stage on average: "
                         + ("Sequential keeps them in place better, as the paper's Figure 5." if kept else
                            "Sequential does not keep them in place better here."))
        parts.append(sentence)
    return " ".join(p if p.endswith(".") else p + "." for p in parts)


# --- layout -----------------------------------------------------------------------------------------------------

def _study_facts(cache, table: pd.DataFrame):
    classes = results.sequential_order(cache, table)
    semantics = results.sequential_semantics(cache)
    head = ("with a fresh output layer, as the paper's code" if semantics["head"] == "reset"
            else "keeping the output rows of the known classes")
    volume = ("images of the newly added class kept for training and validation together, drawn at random (the "
              "paper's); its test images and the other classes stay whole" if semantics["volume_mode"] == "paper"
              else "training images kept of the newly added class, whole samples first (its validation and test "
                   "images and the other classes stay whole)")
    base = results.mode_titles(cache)["imagenet"]
    start = {"ImageNet": "the ImageNet weights", "Scratch": "random weights (the demo cannot download ImageNet "
             "weights, so this arm is the paper's ImageNet arm without its pretraining)"}.get(base, "the base weights")
    return _ui.caption(
        f"Classes added in this order: {' → '.join(classes)}. {base}: every stage starts from {start}; "
        "Sequential: each stage starts from the fold model of the stage with "
        f"one class fewer, trained at full volume, {head}. Volume: {volume}. Error bars: sample standard "
        "deviation over folds.")


#: Header tooltips of the study's table: what each column holds, with its unit.
_TIPS = {"n_classes": "classes in the stage", "volume": "training volume of the newly added class ('full': all)",
         "new_class_train_images": "training images of the new class per fold", "imagenet": "macro-F1 in %, mean ± "
         "std over folds", "sequential": "macro-F1 in %, mean ± std over folds", "gain": "mean of the per-fold "
         "differences, in percentage points", "interval": "95 % Student-t interval over folds, percentage points",
         "supported": "whether that interval excludes 0"}


def _figure4(cache, table: pd.DataFrame):
    splits = [s for s in ("test", "val", "train") if s in set(table["split"])]
    titles = results.mode_titles(cache)
    base = titles["imagenet"]
    graph = dcc.Graph(id="sequential-f1", figure=figures.sequential_figure(table, split=splits[0], mode_titles=titles),
                      config=_export.graph_config(f"tmdafm_sequential_f1_{splits[0]}"))
    rows = sequential_rows(table, splits[0])
    names = {"task": "task", "n_classes": "classes", "volume": "volume", "new_class": "new class",
             "new_class_train_images": "its training images", "imagenet": f"{base} F1 (%)",
             "sequential": "Sequential F1 (%)", "gain": f"Sequential − {base} (pp)",
             "interval": "95 % interval (pp)", "supported": "interval excludes 0"}
    return [
        _ui.card("F1 against training volume (Figure 4)", html.Div(className="controls", children=[html.Label([
            "partition ", dcc.RadioItems(id="sequential-split", value=splits[0], inline=True, className="radio",
                                         options=[{"label": figures.SPLIT_NAMES[s], "value": s} for s in splits])],
            className="control")]), _export.figure_panel(graph, data=table), _study_facts(cache, table),
            id="figure4"),
        _ui.card("The study in numbers", _ui.data_grid("sequential-table", rows, [
            _ui.column(c, names[c], left=c in ("task", "new_class"), tooltip=_TIPS.get(c),
                       colour_when={"parseFloat(params.value) > 0": "#1b7f5a", "parseFloat(params.value) < 0":
                                    "#b4232c"} if c == "gain" else None)
            for c in rows.columns], export_name="tmdafm_sequential"),
            _ui.caption(f"Macro-F1 mean ± std over folds in the chosen partition. Sequential − {base} is the "
                        "mean of the per-fold differences (both arms train on the same folds), with a 95 % "
                        "Student-t interval over folds. " + supported_sentence(rows)), id="sequential-numbers"),
    ]


def _stages(cache):
    tasks = [t for t in results.TASKS if any(selection.stage_models(cache, t, m) for m in selection.SEQUENTIAL_MODES)]
    if not tasks:
        return _ui.card("Latent space of each stage (Figure 5)", _ui.caption([
            "The per-stage projections (latent/sequential/<task>/<mode>/<n>cls/projection.csv) are not in the "
            "store. Build them with ", html.Code(results.precompute_command(cache)), "."]), id="stages")
    modes = [m for m in selection.SEQUENTIAL_MODES if selection.stage_models(cache, tasks[0], m)]
    titles = results.mode_titles(cache)
    figure, data = stage_panels(cache, tasks[0], modes[0])
    graph = dcc.Graph(id="stage-panels", figure=figure,
                      config=_export.graph_config(f"tmdafm_stages_{tasks[0]}_{modes[0]}"))
    return _ui.card("Latent space of each stage (Figure 5)", html.Div(className="controls", children=[
        html.Label(["task ", dcc.RadioItems(id="stage-task", value=tasks[0], inline=True, className="radio",
                                            options=[{"label": results.TASK_NAMES[t], "value": t} for t in tasks])],
                   className="control"),
        html.Label(["mode ", dcc.RadioItems(id="stage-mode", value=modes[0], inline=True, className="radio",
                                            options=[{"label": titles[m], "value": m}
                                                     for m in selection.SEQUENTIAL_MODES])], className="control"),
    ]), _export.figure_panel(graph, data=data), _ui.caption(
        "Each stage's images in its own latent projection, aligned stage to stage so a class keeps its place as "
        "classes are added. The /latent page shows any stage in full."), *_structure(cache, tasks), id="stages")


def _structure(cache, tasks) -> list:
    tables = [t for t in (selection.stage_structure(cache, task) for task in tasks) if t is not None]
    if not tables:
        return []
    table = pd.concat(tables, ignore_index=True)
    rows = structure_rows(table)
    titles = {"silhouette": "silhouette", "centroid_shift": "centroid shift"}
    arms = results.mode_titles(cache)
    tips = {"silhouette": "silhouette of the material labels on the plotted axes (−1..1, no unit)",
            "centroid_shift": "mean move of a class centre since the previous stage, in units of that stage's spread"}
    columns = [_ui.column("task", "task", left=True), _ui.column("n_classes", "classes")]
    columns += [_ui.group(titles[v], *[_ui.column(f"{v}_{m}", arms[m], tooltip=tips[v])
                                       for m in selection.SEQUENTIAL_MODES]) for v in titles]
    return [html.H3("Class structure per stage"),
            _ui.data_grid("stage-structure", rows, columns, export_name="tmdafm_stage_structure"),
            _ui.caption("Silhouette of the material labels on the plotted axes (−1..1; above 0.25 the classes form "
                        "visible groups). Centroid shift: mean distance a class centre moved since the previous "
                        "stage, in units of that stage's spread. " + structure_sentence(table, arms))]


def sequential_body(cache) -> list:
    table = results.sequential_results(cache)
    if table is None or table.empty:
        return [_ui.needs_card(cache, ["sequential"], title="The sequential study is not in the store yet",
                               card_id="sequential-missing",
                               what="This page shows the sequential-training study (classes added one at a time, "
                                    "ImageNet against Sequential starting weights, a training-volume sweep). "
                                    f"Build it with the command below, or everything with "
                                    f"`{results.precompute_command(cache)}`.")]
    return [*_figure4(cache, table), _stages(cache)]


def layout(**_query):
    cache = _ui.cache_dir()
    try:
        body = sequential_body(cache)
    except ValueError as exc:
        body = [_ui.error_card("The sequential study could not be read", str(exc),
                               results.precompute_command(cache))]
    return html.Div(id="sequential-body", children=body)


# --- callbacks --------------------------------------------------------------------------------------------------

@dash.callback(Output("sequential-f1", "figure"), Output("sequential-f1", "config"),
               Output("sequential-table", "rowData"), Input("sequential-split", "value"),
               State("sequential-f1", "config"), prevent_initial_call=True)
def _on_split(split, config):
    table = results.sequential_results(_ui.cache_dir())
    config = {**(config or {}), "toImageButtonOptions": {**(config or {}).get("toImageButtonOptions", {}),
                                                         "filename": f"tmdafm_sequential_f1_{split}"}}
    return (figures.sequential_figure(table, split=split, mode_titles=results.mode_titles(_ui.cache_dir())), config,
            sequential_rows(table, split).to_dict("records"))


@dash.callback(Output("stage-panels", "figure"), Output("stage-panels", "config"),
               Output(_export.data_store_id("stage-panels"), "data"),
               Input("stage-task", "value"), Input("stage-mode", "value"), State("stage-panels", "config"),
               prevent_initial_call=True)
def _on_stage(task, mode, config):
    figure, data = stage_panels(_ui.cache_dir(), task, mode)
    if figure is None:
        return dash.no_update, dash.no_update, dash.no_update
    config = {**(config or {}), "toImageButtonOptions": {**(config or {}).get("toImageButtonOptions", {}),
                                                         "filename": f"tmdafm_stages_{task}_{mode}"}}
    return figure, config, _export.table_data(data)
