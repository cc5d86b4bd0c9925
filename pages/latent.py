"""Latent space (``/latent``): the models' 100-d latent features projected by PCA (any two or three of the PCs) or
UMAP, coloured by material, element, split, prediction, novelty or any physical descriptor.

The points and thumbnails reach the browser once; hovering shows a thumbnail client side (assets/latent.js);
colour, filter and the highlighted selection change the figure through ``Patch()``. A lasso or box selection
becomes the app's shared selection, shown below as a gallery with a descriptor summary.
"""

from __future__ import annotations

import functools
from pathlib import Path

import dash
import numpy as np
import pandas as pd
from dash import ClientsideFunction, Input, Output, Patch, State, ctx, dcc, html, no_update

from pages import _export, _ui
from tmdafm_core import classify, figures, results, selection

dash.register_page(__name__, path="/latent", name="Latent space", title="Latent space · tmdafm", order=1)
_export.register("latent-graph", "tmdafm_latent_space")

SELECTION_STORE = "selection"
FADED = 0.06
SHOWN = 0.85
GALLERY_LIMIT = 48


def _cache() -> Path:
    return Path(dash.get_app().server.config["TMDAFM_CACHE"])


# --- data (cached per store file version) -----------------------------------------------------------------------

def _stamp(cache: Path, model: str) -> tuple:
    folder = selection.find_model(cache, model).folder
    files = [folder / "projection.csv", folder / "predictions.csv", cache / "features.csv",
             cache / "dataset" / "manifest.parquet"]
    return tuple(f.stat().st_mtime_ns if f.is_file() else 0 for f in files)


@functools.lru_cache(maxsize=16)
def _points_cached(cache: str, model: str, stamp: tuple):
    return selection.load_points(cache, model)


def points_for(cache: Path, model: str):
    """The latent points of a model (read once per version of the store's files)."""
    return _points_cached(str(cache), model, _stamp(cache, model))


# --- plain functions behind the callbacks -----------------------------------------------------------------------

def colour_options(points) -> list[dict]:
    """Dropdown options of the colour-by control for these points."""
    options = [{"label": "true material", "value": "material"}]
    if points["predicted"].notna().any():
        options += [{"label": "predicted material", "value": "predicted"},
                    {"label": "correct / incorrect", "value": "correct"}]
    if points["novelty"].notna().any():
        options += [{"label": "novelty (vs the training images)", "value": "novelty"},
                    {"label": "familiar / unfamiliar", "value": "unfamiliar"}]
    options.append({"label": "split (train / test)", "value": "split"})
    options += [{"label": f"{e} present", "value": f"has_{e}"} for e in points.attrs["elements"]]
    options += [{"label": f"descriptor: {selection.descriptor_label(d)}", "value": f"descriptor:{d}"}
                for d in points.attrs["descriptors"]]
    return options


def colour_for(points, colour_by: str) -> dict:
    """The :func:`figures.colour_spec` of a colour-by choice (unknown choices fall back to the true material)."""
    if colour_by and colour_by.startswith("descriptor:") and colour_by.split(":", 1)[1] in points:
        name = colour_by.split(":", 1)[1]
        return figures.colour_spec(points[name], kind="continuous", title=selection.descriptor_label(name))
    if colour_by and colour_by.startswith("has_") and colour_by in points:
        values = points[colour_by].map({True: "present", False: "absent"})
        return figures.colour_spec(values, kind="category", order=["present", "absent"],
                                   title=f"{colour_by[4:]} in the material")
    if colour_by == "novelty":
        return figures.colour_spec(points["novelty"], kind="continuous", title="novelty (1 = held-out threshold)")
    if colour_by in ("predicted", "correct", "split", "unfamiliar"):
        titles = {"predicted": "predicted material", "correct": "prediction", "split": "split",
                  "unfamiliar": "vs the training images"}
        order = {"predicted": points.attrs["classes"], "correct": ["correct", "incorrect"],
                 "split": ["train", "test"], "unfamiliar": ["familiar", "unfamiliar"]}[colour_by]
        return figures.colour_spec(points[colour_by], kind="category", order=order, title=titles[colour_by])
    return figures.colour_spec(points["material"], kind="category", order=points.attrs["classes"],
                               title="material")


def axes_for(points, kind: str, dims: int, x: str, y: str, z: str) -> list[str]:
    """The coordinate columns to draw for the chosen projection and dimensions."""
    coords = points.attrs["coords"]
    if kind == "umap" and f"umap{dims}" in coords:
        return coords[f"umap{dims}"]
    pcs = coords.get("pca", [])
    chosen = [c if c in pcs else pcs[min(i, len(pcs) - 1)] for i, c in enumerate((x, y, z)[:dims])]
    return chosen


def visible_mask(points, materials, splits) -> np.ndarray:
    """Points kept by the material and split filters (None or empty filter keeps everything)."""
    keep = np.ones(len(points), dtype=bool)
    if materials:
        keep &= points["material"].astype(str).isin(materials).to_numpy()
    if splits:
        keep &= points["split"].astype(str).isin(splits).to_numpy()
    return keep


def highlight_rows(points, chosen) -> list[int]:
    """Row positions of the shared selection's images among these points."""
    wanted = set(selection.selected_images(chosen))
    return [int(i) for i in np.flatnonzero(points["image"].isin(wanted).to_numpy())] if wanted else []


def point_meta(points) -> dict:
    """Per-point labels for the clientside hover card (column arrays, sent once per model)."""
    text = lambda column: [None if pd.isna(v) else str(v) for v in points[column].astype(object)]
    return {"image": points["image"].tolist(), "material": text("material"), "predicted": text("predicted"),
            "split": text("split"), "sample_id": text("sample_id")}


def build_figure(points, *, kind, dims, x, y, z, colour_by, materials, splits, chosen):
    """The full latent figure for the current controls."""
    columns = axes_for(points, kind, dims, x, y, z)
    opacity = np.where(visible_mask(points, materials, splits), SHOWN, FADED)
    return figures.latent_scatter_figure(
        points, x=columns[0], y=columns[1], z=columns[2] if len(columns) > 2 else None,
        colour=colour_for(points, colour_by), highlight=highlight_rows(points, chosen),
        explained=points.attrs["explained"], opacity=opacity.tolist())


def colour_patch(points, colour_by: str) -> Patch:
    """Patch of a colour change: the marker's colour keys and the legend slots; nothing else is sent."""
    spec = colour_for(points, colour_by)
    patch = Patch()
    for key, value in figures.colour_marker(spec).items():
        patch["data"][0]["marker"][key] = value
    for i, slot in enumerate(figures.legend_slots(spec), start=2):
        patch["data"][i]["name"] = slot["name"]
        patch["data"][i]["legendgroup"] = slot["name"]
        patch["data"][i]["visible"] = slot["visible"]
        patch["data"][i]["marker"]["color"] = slot["color"]
    patch["layout"]["legend"]["title"]["text"] = spec["title"]
    return patch


def filter_patch(points, materials, splits, dims: int) -> Patch:
    patch = Patch()
    opacity = np.where(visible_mask(points, materials, splits), SHOWN, FADED)
    for key, value in figures.faded_marker(opacity, len(points), three_d=dims == 3).items():
        patch["data"][0]["marker"][key] = value
    return patch


def highlight_patch(points, chosen, columns) -> Patch:
    rows = highlight_rows(points, chosen)
    patch = Patch()
    for axis, column in zip("xyz", columns, strict=False):
        patch["data"][1][axis] = points[column].to_numpy()[rows].tolist()
    patch["data"][1]["showlegend"] = bool(rows)
    return patch


_REBUILD = {"latent-model", "latent-kind", "latent-dims", "latent-x", "latent-y", "latent-z"}


def figure_update(cache, triggered, *, model, kind, dims, x, y, z, colour_by, materials, splits, chosen):
    """What the figure callback sends: a new figure (model, projection or axes changed; first draw) with the
    hover metadata, or a ``Patch`` (colour, filter, selection) and no new metadata."""
    points = points_for(cache, model)
    dims = int(dims)
    if triggered is None or triggered in _REBUILD:
        figure = build_figure(points, kind=kind, dims=dims, x=x, y=y, z=z, colour_by=colour_by,
                              materials=materials, splits=splits, chosen=chosen)
        return figure, point_meta(points)
    if triggered == "latent-colour":
        return colour_patch(points, colour_by), no_update
    if triggered in ("latent-materials", "latent-splits"):
        return filter_patch(points, materials, splits, dims), no_update
    return highlight_patch(points, chosen, axes_for(points, kind, dims, x, y, z)), no_update


def selection_from_event(points, selected_data, *, materials, splits, model_title: str, kind: str):
    """The shared selection a lasso/box event sets (points hidden by the filters are left out)."""
    if not selected_data or not selected_data.get("points"):
        return None
    keep = visible_mask(points, materials, splits)
    rows = [p["customdata"] for p in selected_data["points"] if p.get("curveNumber") == 0 and "customdata" in p]
    rows = [int(r[0] if isinstance(r, list) else r) for r in rows]
    images = [points["image"].iat[r] for r in rows if 0 <= r < len(points) and keep[r]]
    how = "lasso" if selected_data.get("lassoPoints") else "box"
    return selection.make_selection(images, f"{how} in the latent view ({model_title}, {kind.upper()})")


def summary_table(features, images):
    """The descriptor summary of a selection as an HTML table (median, data-set median, percentile bar)."""
    table = selection.descriptor_summary(features, images)
    head = html.Thead(html.Tr([html.Th("descriptor"), html.Th("images", className="num"),
                               html.Th("selection median", className="num"), html.Th("mean ± sd", className="num"),
                               html.Th("all images median", className="num"),
                               html.Th("percentile of the selection median")]))
    rows = []
    for row in table.itertuples():
        percentile = 0.0 if row.percentile != row.percentile else row.percentile
        rows.append(html.Tr([
            html.Th(selection.descriptor_label(row.descriptor), scope="row"),
            html.Td(str(row.n), className="num"), html.Td(f"{row.median:.4g}", className="num"),
            html.Td(f"{row.mean:.4g} ± {row.std:.2g}" if row.std == row.std else f"{row.mean:.4g}",
                    className="num"),
            html.Td(f"{row.all_median:.4g}", className="num"),
            html.Td(html.Div(className="pbar", title=f"{percentile:.0f}th percentile", children=[
                html.Div(className="pbar-fill", style={"width": f"{percentile:.0f}%"}),
                html.Span(f"{percentile:.0f}", className="pbar-label")])),
        ]))
    return html.Table(className="data compact", id="latent-selection-summary", children=[head, html.Tbody(rows)])


def selection_panel(cache, chosen, model: str):
    """Gallery and descriptor summary of the shared selection (children of the selection card)."""
    images = selection.selected_images(chosen)
    if not images:
        return [html.P("Draw a lasso or a box around points (toolbar, top right of the plot) to select images; "
                       "the selection is shared with the other pages.", className="caption")]
    points = points_for(cache, model)
    tiles = [html.Figure(className="thumb", children=[
        html.Img(src=item["uri"] or "", alt=item["image"], title=item["image"]),
        html.Figcaption([item["material"] or "?", html.Br(), f"pred. {item['predicted'] or '—'}"])])
        for item in selection.gallery(cache, images, points=points, limit=GALLERY_LIMIT)]
    more = len(images) - GALLERY_LIMIT
    children = [html.P([html.Strong(f"{len(images)} images"), f" · from {chosen.get('source', '?')}"],
                       className="caption", id="selection-source"),
                html.Div(tiles, className="gallery", id="selection-gallery")]
    if more > 0:
        children.append(html.P(f"… and {more} more (the summary below covers all {len(images)}).",
                               className="caption"))
    features = selection.read_features(cache)
    if features is None:
        children.append(html.P("No physical descriptors in the store: run `tmdafm precompute` to add them.",
                               className="caption"))
    else:
        children.append(summary_table(features, images))
    return children


# --- layout -----------------------------------------------------------------------------------------------------

def _control(label, component):
    return html.Label(className="control", children=[html.Span(label, className="control-label"), component])


def layout(**_query):
    cache = _cache()
    needs = selection.latent_needs(cache)
    if needs:
        return html.Div(_ui.needs_card(cache, needs, title="The latent view needs artifacts the store does not have "
                                       "yet", card_id="latent-missing",
                                       what=f"Store: {cache}. Pages fill in as the precompute writes its results."))
    try:
        models = selection.latent_models(cache)
        first = models[0].key
        points = points_for(cache, first)
        atlas = selection.thumbnail_atlas(cache, _all_images(cache, models))
    except (ValueError, OSError, KeyError) as exc:
        return html.Div(html.Section(className="card failed", children=[
            html.H2("The latent view could not read the store"), html.P(str(exc), className="error"),
            html.P(["Rebuild it: ", html.Code(f"tmdafm precompute --out {cache}")])]))
    pcs = points.attrs["coords"].get("pca", [])
    pc_options = [{"label": c, "value": c} for c in pcs]
    kinds = [{"label": "PCA", "value": "pca"},
             {"label": "UMAP", "value": "umap", "disabled": "umap2" not in points.attrs["coords"]}]
    controls = html.Div(className="controls", children=[
        _control("model", dcc.Dropdown(id="latent-model", options=[{"label": m.title, "value": m.key}
                                                                    for m in models],
                                       value=first, clearable=False, style={"minWidth": "260px"})),
        _control("projection", dcc.RadioItems(id="latent-kind", options=kinds, value="pca", inline=True)),
        _control("view", dcc.RadioItems(id="latent-dims", options=[{"label": "2-D", "value": 2},
                                                                   {"label": "3-D", "value": 3}],
                                        value=2, inline=True)),
        _control("x", dcc.Dropdown(id="latent-x", options=pc_options, value=pcs[0], clearable=False)),
        _control("y", dcc.Dropdown(id="latent-y", options=pc_options, value=pcs[min(1, len(pcs) - 1)],
                                   clearable=False)),
        _control("z (3-D)", dcc.Dropdown(id="latent-z", options=pc_options, value=pcs[min(2, len(pcs) - 1)],
                                         clearable=False)),
        _control("colour by", dcc.Dropdown(id="latent-colour", options=colour_options(points), value="material",
                                           clearable=False, style={"minWidth": "280px"})),
        _control("materials", dcc.Checklist(id="latent-materials", inline=True, value=[],
                                            options=points.attrs["classes"])),
        _control("split", dcc.Checklist(id="latent-splits", inline=True, value=[], options=["train", "test"])),
    ])
    config = {"displaylogo": False, "scrollZoom": True,
              "toImageButtonOptions": {"filename": "tmdafm_latent_space", "scale": 3}}
    notes = [html.P(note, className="caption") for note in points.attrs["notes"]]
    return html.Div([
        html.Section(className="card", children=[html.H2("Latent space of the trained models"), controls,
                                                 html.P("Filters fade the other points; an empty filter shows "
                                                        "all.", className="caption"), *notes]),
        html.Div(className="grid latent", children=[
            html.Section(className="card", children=[
                _export.figure_panel(dcc.Graph(id="latent-graph", config=config, style={"height": "580px"})),
                html.P("Hover a point to see the image; click it to pin it; lasso or box to select.",
                       className="caption")]),
            html.Div(className="side", children=[
                html.Section(className="card", id="hover-card", children=[
                    html.H2("Hovered image"),
                    html.Div(className="hover-frame", children=[
                        html.Img(id="hover-image", className="hover-thumb", alt="thumbnail of the hovered image")]),
                    html.Div(id="hover-name", className="mono small"),
                    html.Div("Hover a point to see its image and details here.", id="hover-meta",
                             className="hover-meta")]),
                html.Section(className="card", id="pinned-card", children=[
                    html.H2("Pinned image"),
                    dcc.Checklist(id="pinned-cam", options=[{"label": " class activation map (MtC)",
                                                             "value": "cam"}], value=[]),
                    html.Div(id="pinned-body", children=html.P("Click a point to pin its image.",
                                                               className="caption"))]),
            ]),
        ]),
        html.Section(className="card", id="stages-card", children=[
            html.H2("Sequential training: the stages' aligned projections (paper Figure 5)"),
            html.Div(id="stages-body")]),
        html.Section(className="card", id="selection-card", children=[
            html.H2("Selection"), _export.selection_tools(), html.Div(id="selection-body")]),
        dcc.Store(id="latent-meta"),
        dcc.Store(id="latent-atlas", data=atlas),
    ])


def _all_images(cache, models) -> list[str]:
    images = {}
    for model in models:
        images.update(dict.fromkeys(points_for(cache, model.key)["image"]))
    return list(images)


# --- callbacks --------------------------------------------------------------------------------------------------

@dash.callback(
    Output("latent-graph", "figure"), Output("latent-meta", "data"),
    Input("latent-model", "value"), Input("latent-kind", "value"), Input("latent-dims", "value"),
    Input("latent-x", "value"), Input("latent-y", "value"), Input("latent-z", "value"),
    Input("latent-colour", "value"), Input("latent-materials", "value"), Input("latent-splits", "value"),
    Input(SELECTION_STORE, "data"),
)
def update_figure(model, kind, dims, x, y, z, colour_by, materials, splits, chosen):
    triggered = ctx.triggered_id if ctx.triggered_id and len(ctx.triggered) == 1 else None
    return figure_update(_cache(), triggered, model=model, kind=kind, dims=dims, x=x, y=y, z=z,
                         colour_by=colour_by, materials=materials, splits=splits, chosen=chosen)


@dash.callback(Output("latent-colour", "options"), Input("latent-model", "value"), prevent_initial_call=True)
def update_colour_options(model):
    return colour_options(points_for(_cache(), model))


dash.clientside_callback(
    ClientsideFunction(namespace="tmdafm", function_name="hoverCard"),
    Output("hover-image", "src"), Output("hover-name", "children"), Output("hover-meta", "children"),
    Input("latent-graph", "hoverData"), State("latent-meta", "data"), State("latent-atlas", "data"),
)


def pinned_view(cache, click_data, meta, cam: bool):
    """The pinned card's children for a clicked point."""
    if not click_data or not meta:
        return html.P("Click a point to pin its image.", className="caption")
    point = next((p for p in click_data.get("points", []) if p.get("curveNumber") == 0), None)
    if point is None:
        return no_update
    row = point["customdata"][0] if isinstance(point["customdata"], list) else point["customdata"]
    image = meta["image"][int(row)]
    try:
        view = classify.store_image_view(cache, image)
    except (ValueError, OSError) as exc:
        return html.P(f"{image}: {exc}", className="error")
    source = view["cam_uri"] if cam and view["cam_uri"] else view["uri"]
    caption = (f"{view['material'] or 'unlabelled'} · predicted {view['predicted'] or '—'} · {view['split'] or '—'}"
               f" · {view['width']} × {view['height']} px, {view['pixel_size_nm'] * view['width'] / 1000:.3g} µm "
               "across")
    notes = [] if view["cam_uri"] or not cam else [
        html.P(view["cam_note"] or "No MtC run in the store: no activation map.", className="caption")]
    return [html.Img(src=source, className="pinned", id="pinned-image", alt=image),
            html.Div(image, className="mono small"), html.P(caption, className="caption"), *notes]


@dash.callback(Output("pinned-body", "children"), Input("latent-graph", "clickData"), Input("pinned-cam", "value"),
               State("latent-meta", "data"), prevent_initial_call=True)
def pin_image(click_data, cam, meta):
    return pinned_view(_cache(), click_data, meta, "cam" in (cam or []))


@dash.callback(Output(SELECTION_STORE, "data", allow_duplicate=True), Input("latent-graph", "selectedData"),
               State("latent-model", "value"), State("latent-kind", "value"), State("latent-materials", "value"),
               State("latent-splits", "value"), prevent_initial_call=True)
def select_points(selected_data, model, kind, materials, splits):
    cache = _cache()
    points = points_for(cache, model)
    chosen = selection_from_event(points, selected_data, materials=materials, splits=splits,
                                  model_title=points.attrs["title"], kind=kind)
    return no_update if chosen is None else chosen


@dash.callback(Output("selection-body", "children"), Input(SELECTION_STORE, "data"), Input("latent-model", "value"))
def show_selection(chosen, model):
    return selection_panel(_cache(), chosen, model)


def stages_view(cache, model: str, kind: str, x: str, y: str):
    """The sequential stages' panels for the chosen model's task and mode (ImageNet when a run is chosen)."""
    chosen = selection.find_model(cache, model)
    task, mode = chosen.task, chosen.mode or "imagenet"
    panels = []
    for key_mode in ([mode] if chosen.mode else list(selection.SEQUENTIAL_MODES)):
        stages = selection.stage_models(cache, task, key_mode)
        if not stages:
            continue
        frames = [(s.title, points_for(cache, s.key)) for s in stages]
        columns = axes_for(frames[0][1], kind, 2, x, y, y)
        if not all(set(columns) <= set(frame.columns) for _, frame in frames):
            continue
        figure = figures.stage_panels_figure([(f"{s.n_classes} classes", frame) for s, (_, frame)
                                              in zip(stages, frames, strict=True)], x=columns[0], y=columns[1])
        panels += [html.H3(f"{results.mode_titles(cache)[key_mode]} · {task.upper()}"),
                   dcc.Graph(figure=figure, config={"displaylogo": False,
                                                    "toImageButtonOptions": {"filename": f"tmdafm_stages_{task}_"
                                                                                         f"{key_mode}", "scale": 3}})]
    if not panels:
        return html.P(["No sequential-training projections in the store for this task. They are built by ",
                       html.Code(f"tmdafm precompute --out {cache}"), " (sequential step)."], className="caption")
    return panels


@dash.callback(Output("stages-body", "children"), Input("latent-model", "value"), Input("latent-kind", "value"),
               Input("latent-x", "value"), Input("latent-y", "value"))
def show_stages(model, kind, x, y):
    return stages_view(_cache(), model, kind, x, y)
