"""Classify (``/classify``): drop AFM images (TIFF 8/16-bit/float, PNG, JPEG) or instrument files (Bruker, Gwyddion,
JPK, Igor, ...: levelled, central 1 µm crop) to classify them with the store's
models: material, class and element probabilities, activation map, descriptors against the data set, the image
as a star in the latent scatter and its nearest neighbours. Results download as CSV.

Uploads are decoded in memory by :mod:`tmdafm_core.classify` (type from content, limits checked first, nothing
written to disk, nothing unpickled); a bad file gets its own message while the others classify.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html

from pages import _ui
from tmdafm_core import classify, figures, selection

dash.register_page(__name__, path="/classify", name="Classify", title="Classify · tmdafm", order=5)


def _cache() -> Path:
    return Path(dash.get_app().server.config["TMDAFM_CACHE"])


# --- plain functions behind the callbacks -----------------------------------------------------------------------

def run_uploads(cache, contents, names):
    """Classify the files of one upload event: ``(results, error)``; ``error`` is a store-level message."""
    if not contents:
        return [], None
    contents = contents if isinstance(contents, list) else [contents]
    names = names if isinstance(names, list) else [names] * len(contents)
    try:
        return classify.classify_uploads(cache, list(zip(names, contents, strict=True))), None
    except (FileNotFoundError, ValueError) as exc:
        return [], str(exc)


def _descriptor_rows(result):
    rows = []
    for name, entry in result["descriptors"].items():
        percentile = entry["percentile"]
        bar = html.Div(className="pbar", title="percentile among the data set's images", children=[
            html.Div(className="pbar-fill", style={"width": f"{0 if percentile != percentile else percentile:.0f}%"}),
            html.Span("—" if percentile != percentile else f"{percentile:.0f}", className="pbar-label")])
        rows.append(html.Tr([html.Th(selection.descriptor_label(name), scope="row"),
                             html.Td(f"{entry['value']:.4g}", className="num"), html.Td(bar)]))
    return html.Table(className="data compact", children=[
        html.Thead(html.Tr([html.Th("descriptor"), html.Th("value", className="num"),
                            html.Th("percentile", title="percentile among the data set's images")])), html.Tbody(rows)])


def _scan_panel(result) -> list:
    """The levelled instrument scan with the crop box, and what was done to it (instrument files only)."""
    scan = result.get("scan")
    if not scan:
        return []
    return [html.H3("levelled scan"), html.Img(src=scan["overview_uri"], className="view scan-overview",
                                               alt="levelled scan with the classified crop"),
            html.P(f"{scan['format']} file, channel {scan['channel']}, scan {scan['scan_width_um']:.3g} × "
                   f"{scan['scan_height_um']:.3g} µm; levelled ({scan['levelling']}); red box: the classified crop, "
                   f"x {scan['crop_x0_um']:.3g}–{scan['crop_x1_um']:.3g} µm, y {scan['crop_y0_um']:.3g}–"
                   f"{scan['crop_y1_um']:.3g} µm.", className="caption scan-caption")]


def result_card(cache, result, index: int, colours: dict):
    """One file's result as a card (or its refusal message)."""
    if not result["ok"]:
        return html.Section(className="card failed", children=[
            html.H2([html.Span(f"{index + 1}", className="result-number"), result["name"]]),
            html.P(result["message"], className="refused file-message")])
    material = result["material"]
    unfamiliar = bool(result["unfamiliar"])
    probs = figures.probability_figure(result["class_probabilities"], title="MtC class probability",
                                       colours=colours)
    graphs = [dcc.Graph(figure=probs, config={"displayModeBar": False}, className="probabilities")]
    if result["element_probabilities"]:
        graphs.append(dcc.Graph(figure=figures.probability_figure(result["element_probabilities"],
                                                                  title="MtL element probability"),
                                config={"displayModeBar": False}, className="probabilities"))
    graphs.append(html.P(classify.trust_sentence(result), className="caption agreement"))
    atlas = selection.thumbnail_atlas(cache, [n["image"] for n in result["neighbours"]])
    neighbours = [html.Figure(className="thumb", children=[
        html.Img(src=atlas.get(n["image"], ""), alt=n["image"], title=n["image"]),
        html.Figcaption(f"d = {n['distance']:.3g}")]) for n in result["neighbours"]]
    return html.Section(className="card result-card" + (" unfamiliar" if unfamiliar else ""), id=f"result-{index}",
                        children=[
        html.H2([html.Span(f"{index + 1}", className="result-number"), result["name"], " → ",
                 html.Span(material, className="material-badge predicted-material",
                           style={"backgroundColor": "#9aa5b1" if unfamiliar else colours.get(material, "#52606d")}),
                 *([html.Span(classify.UNFAMILIAR_BADGE, className="unfamiliar-badge", role="alert")]
                   if unfamiliar else [])]),
        html.Div(className="result", children=[
            html.Div([html.H3("image" if "scan" not in result else "classified crop"),
                      html.Img(src=result["image_uri"], className="view", alt=result["name"]),
                      html.P(f"{result['width']} × {result['height']} px · {result['pixel_size_nm']:.3g} nm/px",
                             className="caption"), *_scan_panel(result)]),
            html.Div([html.H3("activation map (MtC)"), *(
                [html.Img(src=result["cam_uri"], className="view", alt="class activation map"),
                 html.P("bright = regions that drove the prediction", className="caption")] if result["cam_uri"]
                else [html.P(result["cam_note"], className="caption cam-note")])]),
            html.Div([*graphs, html.H3("nearest images in the latent space"),
                      html.Div(neighbours, className="neighbours"),
                      html.P(f"Euclidean distance in the {result['neighbour_space']}.", className="caption")]),
            html.Div([html.H3("physical descriptors"), _descriptor_rows(result)]),
        ]),
    ])


def scatter_of(cache, results):
    """The data set's latent scatter with the classified images as stars (None when nothing was classified)."""
    placed = [r for r in results if r["ok"]]
    if not placed:
        return None
    points = selection.load_points(cache, "mtc")
    coords = points.attrs["coords"]
    x, y = coords["umap2"] if "umap2" in coords else coords["pca"][:2]
    # Long file names would pile up on the plot: a star carries its card's number, the name shows on hover.
    stars = pd.DataFrame([{"name": r["name"], "label": str(number), **r["coordinates"]}
                          for number, r in enumerate(results, start=1) if r["ok"]])
    colour = figures.colour_spec(points["material"], kind="category", order=points.attrs["classes"],
                                 title="material")
    return figures.placed_images_figure(points, stars, x=x, y=y, colour=colour, explained=points.attrs["explained"])


# --- layout and callbacks ---------------------------------------------------------------------------------------

def _warm(cache) -> None:
    try:
        classify.classifier_for(cache)
    except (FileNotFoundError, ValueError, OSError):
        pass  # the classify callback reports the same problem to the user


def layout(**_query):
    cache = _cache()
    missing = classify.classify_needs(cache)
    if not missing:  # load the models while the user picks files (seconds on a cold start, once per process)
        threading.Thread(target=_warm, args=(cache,), daemon=True).start()
    limits = (f"Up to {classify.MAX_FILES} files of at most {classify.MAX_FILE_BYTES // 2**20} MiB, "
              f"{classify.MIN_SIDE_PX}–{classify.MAX_SIDE_PX} px per side. Files are read in memory and not kept.")
    return html.Div([
        html.Section(className="card", children=[
            html.H2("Classify new AFM images"),
            *([_ui.needs_card(cache, missing, title="Classification needs a trained model and a saved projection",
                              card_id="classify-missing", what=f"Store: {cache}.")] if missing else []),
            # The browser drops a file over max_size without a callback; assets/classify.js says so instead.
            html.Div(**{"data-max-bytes": str(classify.MAX_FILE_BYTES)}, children=dcc.Upload(
                id="classify-upload", multiple=True, max_size=classify.MAX_FILE_BYTES,
                className="upload-zone", disabled=bool(missing),
                children=html.Div([html.Strong("Drop images here"), " or click to choose: TIFF (8/16-bit, "
                                   "float), PNG, JPEG, or instrument files (.spm and numbered Bruker files, .gwy, "
                                   ".jpk, .ibw, ...: levelled, then the central 1 µm is classified)"]))),
            html.P(id="classify-upload-refused", className="upload-refused error", style={"whiteSpace": "pre-line"}),
            html.P(limits, className="caption"),
        ]),
        dcc.Loading(html.Div(id="classify-results"), type="dot"),
        html.Section(className="card", id="classify-table-card", children=[
            html.H2("Results table"),
            html.Button("download CSV", id="classify-download-button", className="button", disabled=True),
            dcc.Download(id="classify-download"), html.Div(id="classify-table")]),
        dcc.Store(id="classify-rows"),
    ])


@dash.callback(Output("classify-results", "children"), Output("classify-rows", "data"),
               Output("classify-download-button", "disabled"),
               Input("classify-upload", "contents"), State("classify-upload", "filename"),
               prevent_initial_call=True)
def classify_files(contents, names):
    cache = _cache()
    results, error = run_uploads(cache, contents, names)
    if error:
        return html.Section(className="card failed", children=[html.P(error, className="error")]), None, True
    colours = figures.material_colours(next((list(r["class_probabilities"]) for r in results if r["ok"]), []))
    cards = [result_card(cache, r, i, colours) for i, r in enumerate(results)]
    figure = scatter_of(cache, results)
    if figure is not None:
        cards.insert(0, html.Section(className="card", children=[
            html.H2("Where the images land in the latent space (MtC model; saved projection, no refit)"),
            dcc.Graph(figure=figure, id="classify-scatter",
                      config={"displaylogo": False,
                              "toImageButtonOptions": {"filename": "tmdafm_classified_in_latent", "scale": 3}})]))
    table = classify.results_table(results)
    return cards, table.to_dict("records"), table.empty


@dash.callback(Output("classify-table", "children"), Input("classify-rows", "data"))
def show_table(rows):
    if not rows:
        return html.P("Classified files are listed here.", className="caption")
    table = pd.DataFrame(rows)
    shown = [c for c in table.columns if c in ("file", "status", "material") or c.startswith("p_")]
    return html.Div(className="table-scroll", children=html.Table(className="data compact", id="results-table",
                                                                  children=[
        html.Thead(html.Tr([html.Th(c) for c in shown])),
        html.Tbody([html.Tr([html.Td(f"{v:.3f}" if isinstance(v, float) else str(v)) for v in row[shown]])
                    for _, row in table.iterrows()])]))


@dash.callback(Output("classify-download", "data"), Input("classify-download-button", "n_clicks"),
               State("classify-rows", "data"), prevent_initial_call=True)
def download_table(_clicks, rows):
    return dcc.send_data_frame(pd.DataFrame(rows or []).to_csv, "tmdafm_classified.csv", index=False)
