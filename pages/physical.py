"""Physical descriptors (``/physical``): how the latent space relates to what a microscopist measures.

Table 5 (strongest negative and positive Pearson R per descriptor with bootstrap CIs, p and q, regression R), the
Pearson heatmap descriptors x PCs, cosine heatmaps (descriptors x PCs, regression directions), the PC-pair scatter
coloured by a descriptor (paper Figure 7) and the percentile galleries (Figure 8), which set the shared selection.
"""

from __future__ import annotations

import dash
import pandas as pd
from dash import Input, Output, State, ctx, dcc, html

from pages import _export, _ui
from tmdafm_core import figures, results, selection

dash.register_page(__name__, path="/physical", name="Physical features", title="Physical features · tmdafm",
                   order=20)

for _graph, _name in (("pearson-heatmap", "tmdafm_pearson_descriptors_pcs"),
                      ("cosine-pcs", "tmdafm_cosine_descriptors_pcs"),
                      ("cosine-directions", "tmdafm_cosine_regression_directions"),
                      ("descriptor-scatter", "tmdafm_pc_scatter")):
    _export.register(_graph, _name)

DEFAULT_DESCRIPTOR = "grain_density"


# --- page data (plain functions) --------------------------------------------------------------------------------

def physical_data(cache, task: str = "mtc") -> dict:
    """What the page draws for one model: latent tables, the feature table, and what is missing.

    Returns ``{"tables": dict or None, "features": DataFrame or None, "missing": [store steps], "task"}``.
    """
    tables = results.latent_tables(cache, task)
    features = selection.read_features(cache)
    lacking = [] if features is not None else ["descriptors"]
    if tables is None or "table5" not in tables:
        lacking += ([] if results.run_metrics(cache, task) is not None else [task]) + [f"latent-{task}"]
    return {"tables": tables, "features": features, "missing": lacking, "task": task}


def table5_records(tables: dict) -> pd.DataFrame:
    """Table 5 as the page shows it (with q-values)."""
    return results.with_q_values(results.table5_display(tables["table5"]), tables["table5"],
                                 tables.get("correlation"))


def descriptor_options(tables: dict) -> list[dict]:
    names = list(tables["table5"]["descriptor"]) if "table5" in tables else []
    return [{"label": selection.descriptor_label(n), "value": n} for n in names]


def pc_options(tables: dict) -> list[dict]:
    explained = {}
    if "explained_variance" in tables:
        ev = tables["explained_variance"]
        explained = dict(zip(ev["component"], ev["ratio"], strict=True))
    pcs = [c for c in tables["projection"].columns if c.startswith("PC") and c[2:].isdigit()]
    return [{"label": f"{pc} ({100 * explained[pc]:.1f} %)" if pc in explained else pc, "value": pc} for pc in pcs]


def scatter(cache, task: str, descriptor: str, x: str, y: str):
    """The Figure 7 scatter, its data table and its export file name."""
    data = physical_data(cache, task)
    tables = data["tables"]
    points = results.pc_descriptor_points(tables, data["features"], descriptor)
    explained = dict(zip(tables["explained_variance"]["component"], tables["explained_variance"]["ratio"],
                         strict=True)) if "explained_variance" in tables else None
    figure = figures.descriptor_scatter_figure(points, x=x, y=y, descriptor=descriptor,
                                               label=selection.descriptor_label(descriptor), explained=explained)
    return figure, points, f"tmdafm_{task}_{x}_{y}_{descriptor}"


def gallery_sides(cache, task: str, descriptor: str) -> dict:
    """Both percentile galleries of a descriptor: per side its threshold, every qualifying image, thumbnails."""
    data = physical_data(cache, task)
    entry = results.percentile_gallery(data["tables"]["galleries"], descriptor)
    projected = data["tables"]["projection"]["image"]
    sides = {"status": entry["status"]}
    for side in ("high", "low"):
        part = entry[side]
        images = [] if part["threshold"] is None else results.percentile_images(
            data["features"], descriptor, side, part["threshold"], images=projected) \
            if data["features"] is not None else list(part["images"])
        shown = list(part["images"])
        values = dict(zip(shown, part["values"], strict=True))
        sides[side] = {"threshold": part["threshold"], "count": part["count"], "images": images, "shown": shown,
                       "values": values}
    return sides


# --- layout -----------------------------------------------------------------------------------------------------

def _table5(tables: dict):
    table = table5_records(tables)
    n_images = sorted(set(table["n_images"]))
    table = table.drop(columns=["n_images"] + (["status"] if (table["status"] == "ok").all() else []))
    r_tip = "Pearson R of the descriptor (scaled to 0–1 by its maximum) and the PC scores (−1..1, no unit)"

    def side(prefix: str, title: str, strong: str) -> dict:
        return _ui.group(title, _ui.column(f"{prefix}_r", "R", tooltip=r_tip, digits=3, bold_when=strong),
                         _ui.column(f"{prefix}_pc", "PC", tooltip="principal component of the latent features"),
                         _ui.column(f"{prefix}_r_ci", "95 % CI", tooltip="percentile-bootstrap interval of R"),
                         _ui.column(f"{prefix}_r_p", "p", tooltip="t-test p-value of R", digits=2, exponent=True),
                         _ui.column(f"{prefix}_r_q", "q", tooltip="Benjamini–Hochberg q-value over all descriptor "
                                    "× PC pairs", digits=2, exponent=True))

    columns = [{**_ui.column("descriptor", "descriptor", tooltip="physical descriptor (hover a name for its unit)",
                             left=True), "tooltipField": "unit", "pinned": "left"},
               side("min", "most negative", "params.value <= -0.4"),
               side("max", "most positive", "params.value >= 0.4"),
               _ui.group("linear regression on PCs",
                         _ui.column("regression_r", "R", tooltip="R of the descriptor's linear regression on all "
                                    "PCs, in-sample", digits=3),
                         _ui.column("regression_r_cv", "R (cross-val.)", tooltip="the same regression R, "
                                    "cross-validated", digits=3))]
    if "status" in table.columns:
        columns.append(_ui.column("status", "status", left=True, colour_when={"params.value !== 'ok'": "#b4232c"}))
    rows = table.assign(descriptor=[selection.descriptor_label(d) for d in table["descriptor"]],
                        unit=[f"unit: {u}" for u in table["unit"]])
    note = tables["table5"].attrs.get("notes") or []
    return _ui.card("Descriptors and principal components (Table 5)",
                    _ui.data_grid("table5", rows, columns, export_name="tmdafm_table5"),
                    _ui.caption(["For each descriptor (scaled to 0–1 by its maximum) the principal component of "
                                 "the latent features with the most negative and the most positive Pearson R, the "
                                 "percentile-bootstrap 95 % interval, the t-test p-value and the Benjamini–Hochberg "
                                 "q-value over all descriptor × PC pairs; then R of a linear regression of the "
                                 "descriptor on all PCs, in-sample and cross-validated. "
                                 f"{', '.join(map(str, n_images))} images. Click a header to sort; its menu filters. "]
                                + [f"{n} " for n in note]), id="table5-card")


def _graph(graph_id: str, figure, filename: str):
    return dcc.Graph(id=graph_id, figure=figure, config=_export.graph_config(filename))


def _heatmaps(tables: dict):
    pearson = _graph("pearson-heatmap", figures.correlation_heatmap(tables["correlation"]),
                     "tmdafm_pearson_descriptors_pcs")
    cos_pcs = _graph("cosine-pcs", figures.cosine_heatmap(tables["cosine_descriptors_pcs"],
                                                          x_title="principal component"),
                     "tmdafm_cosine_descriptors_pcs")
    cos_dir = _graph("cosine-directions", figures.cosine_heatmap(tables["cosine_regression_directions"],
                                                                 x_title="regression direction of descriptor"),
                     "tmdafm_cosine_regression_directions")
    return [
        _ui.card("Pearson R: descriptors × principal components", _export.figure_panel(
            pearson, data=tables["correlation"]), _ui.caption(
            "Blue negative, red positive, white zero. * marks q < 0.05 (Benjamini–Hochberg). Hover a cell for its "
            "95 % interval and p-value."), id="pearson-card"),
        _ui.card("Cosine similarity: descriptors × PCs", _export.figure_panel(
            cos_pcs, data=tables["cosine_descriptors_pcs"]), _ui.caption(
            "Uncentred cosine between each scaled descriptor and each PC's scores, as in the paper: the sign of R, "
            "shrunk by how far the descriptor sits from zero."), id="cosine-pcs-card"),
        _ui.card("Cosine similarity of regression directions", _export.figure_panel(
            cos_dir, data=tables["cosine_regression_directions"]), _ui.caption(
            "Cosine between the descriptors' regression directions in PC space: descriptors the latent space "
            "encodes along the same direction score near +1."), id="cosine-directions-card"),
    ]


def _figure7(cache, task: str, tables: dict, descriptor: str):
    options = pc_options(tables)
    pcs = [o["value"] for o in options]
    x, y = pcs[0], pcs[1] if len(pcs) > 1 else pcs[0]
    figure, points, filename = scatter(cache, task, descriptor, x, y)
    controls = html.Div(className="controls", children=[
        html.Label(["descriptor", dcc.Dropdown(id="physical-descriptor", options=descriptor_options(tables),
                                               value=descriptor, clearable=False)], className="control wide"),
        html.Label(["x axis", dcc.Dropdown(id="physical-pc-x", options=options, value=x, clearable=False)],
                   className="control"),
        html.Label(["y axis", dcc.Dropdown(id="physical-pc-y", options=options, value=y, clearable=False)],
                   className="control"),
    ])
    graph = dcc.Graph(id="descriptor-scatter", figure=figure, config=_export.graph_config(filename))
    return _ui.card("Latent space coloured by a descriptor (Figure 7)", controls,
                    _export.figure_panel(graph, data=points),
                    _ui.caption("Every image at its scores on two principal components of the latent features, "
                                "coloured by the descriptor's raw value in its own unit."), id="figure7")


def _figure8_body(cache, task: str, descriptor: str):
    sides = gallery_sides(cache, task, descriptor)
    label = selection.descriptor_label(descriptor)
    unit = results.descriptor_unit(descriptor)
    if sides["status"] != "ok":
        return [_ui.caption(f"No galleries for {figures.readable(descriptor)}: {sides['status']}.")]
    blocks = []
    for side, title in (("high", "≥ 75th percentile"), ("low", "≤ 25th percentile")):
        part = sides[side]
        items = selection.gallery(cache, part["shown"], limit=len(part["shown"]),
                                  points=_manifest_points(cache))
        captions = [[item["material"] or "", f"{part['values'][item['image']]:.3g} {unit}".strip()]
                    for item in items]
        threshold = "–" if part["threshold"] is None else f"{part['threshold']:.4g} {unit}".strip()
        blocks.append(html.Div(className="gallery-side", id=f"gallery-{side}", children=[
            html.Div(className="gallery-head", children=[
                html.Strong(f"{title} of {figures.readable(descriptor)}"),
                html.Span(f" (threshold {threshold}; {len(part['images'])} images, {len(items)} shown)",
                          className="caption"),
                html.Button(f"Select these {len(part['images'])} images", id=f"gallery-select-{side}",
                            className="export-button", title=f"set the shared selection to every image {title}"),
            ]),
            _ui.thumbnails(items, captions=captions, empty="No images."),
        ]))
    return [html.P(f"Images at the ends of {label}: a seeded random subset of each side, sorted by value.",
                   className="caption"), *blocks]


def _manifest_points(cache):
    try:
        from tmdafm_core.layout import load_manifest

        return load_manifest(cache)[["image", "material", "split"]].assign(predicted=None)
    except (FileNotFoundError, ValueError):
        return None


def physical_body(cache, task: str = "mtc") -> list:
    data = physical_data(cache, task)
    tables = data["tables"]
    if tables is None or "table5" not in tables or data["features"] is None:
        return [_ui.needs_card(cache, data["missing"], title="The descriptor analysis is not in the store yet",
                               card_id="physical-missing",
                               what="This page needs the physical descriptors of every image and the latent "
                                    "analysis of a trained model. Build them with the commands below, or "
                                    f"everything at once with `{results.precompute_command(cache)}`.")]
    names = list(tables["table5"]["descriptor"])
    descriptor = DEFAULT_DESCRIPTOR if DEFAULT_DESCRIPTOR in names else names[0]
    return [
        _table5(tables),
        *_heatmaps(tables),
        _figure7(cache, task, tables, descriptor),
        _ui.card("Images at the ends of a descriptor (Figure 8)", _export.selection_tools(),
                 html.Div(id="gallery-body", children=_figure8_body(cache, task, descriptor)), id="figure8"),
    ]


def _model_choice(cache, tasks):
    return html.Div(className="controls", hidden=len(tasks) < 2, children=[html.Label([
        "latent features of ", dcc.RadioItems(id="physical-task", value=tasks[0], inline=True, className="radio",
                                              options=[{"label": results.TASK_NAMES[t] + " model", "value": t}
                                                       for t in tasks])], className="control")])


def layout(**_query):
    cache = _ui.cache_dir()
    tasks = results.analysed_tasks(cache) or ["mtc"]
    try:
        body = physical_body(cache, tasks[0])
    except ValueError as exc:
        body = [_ui.error_card("The descriptor analysis could not be read", str(exc),
                               results.precompute_command(cache))]
    return html.Div([_model_choice(cache, tasks), html.Div(id="physical-body", children=body)])


# --- callbacks --------------------------------------------------------------------------------------------------

@dash.callback(Output("physical-body", "children"), Input("physical-task", "value"), prevent_initial_call=True)
def _on_task(task):
    return physical_body(_ui.cache_dir(), task)


@dash.callback(Output("descriptor-scatter", "figure"), Output("descriptor-scatter", "config"),
               Output(_export.data_store_id("descriptor-scatter"), "data"), Output("gallery-body", "children"),
               Input("physical-descriptor", "value"), Input("physical-pc-x", "value"), Input("physical-pc-y", "value"),
               State("physical-task", "value"), State("descriptor-scatter", "config"), prevent_initial_call=True)
def _on_scatter(descriptor, x, y, task, config):
    cache = _ui.cache_dir()
    figure, points, filename = scatter(cache, task, descriptor, x, y)
    config = {**(config or {}), "toImageButtonOptions": {**(config or {}).get("toImageButtonOptions", {}),
                                                         "filename": filename}}
    gallery = _figure8_body(cache, task, descriptor) if ctx.triggered_id == "physical-descriptor" else dash.no_update
    return figure, config, _export.table_data(points), gallery


def select_side(cache, task: str, descriptor: str, side: str) -> dict:
    """The shared selection for one side of a descriptor's percentile gallery (plain function)."""
    sides = gallery_sides(cache, task, descriptor)
    title = "≥ 75th" if side == "high" else "≤ 25th"
    return selection.make_selection(sides[side]["images"],
                                    f"{figures.readable(descriptor)} {title} percentile ({task.upper()} latent)")


@dash.callback(Output("selection", "data", allow_duplicate=True),
               Input("gallery-select-high", "n_clicks"), Input("gallery-select-low", "n_clicks"),
               State("physical-descriptor", "value"), State("physical-task", "value"), prevent_initial_call=True)
def _on_gallery_select(high, low, descriptor, task):
    if not (high or low) or ctx.triggered_id is None:
        return dash.no_update
    side = "high" if ctx.triggered_id == "gallery-select-high" else "low"
    return select_side(_ui.cache_dir(), task, descriptor, side)
