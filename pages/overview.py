"""Overview (``/``): the data set as the paper's Table 1, classes and element vectors, example images, and what
the store holds with the command that builds each missing piece. An empty store is filled with the synthetic demo
by a background callback whose progress is shown here."""

from __future__ import annotations

from pathlib import Path

import dash
from dash import dcc, html

from tmdafm_core import figures, results
from tmdafm_core.build import read_status
from tmdafm_core.layout import store_ready

dash.register_page(__name__, path="/", name="Overview", title="Overview · tmdafm", order=0)


def _cache() -> Path:
    return Path(dash.get_app().server.config["TMDAFM_CACHE"])


# --- pieces -----------------------------------------------------------------------------------------------------

def _card(title, *children, class_name="card", **kwargs):
    return html.Section(className=class_name, children=[html.H2(title), *children], **kwargs)


def _swatch(colour: str):
    return html.Span(className="swatch", style={"backgroundColor": colour})


def _fmt_count(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) and not float(value).is_integer() else f"{int(value)}"


def _synthetic_notice(info: dict):
    profile = info["profile"]
    scope = results.demo_scope(info["cache"], profile)
    return html.Div(className="notice", id="synthetic-notice", children=[
        html.Strong("Synthetic demo data. "),
        f"These {info['n_images']} images were made by tmdafm's synthetic TMD-AFM generator "
        f"(seed {profile.get('seed', 0)}, {profile.get('size', '?')} × {profile.get('size', '?')} px per 1 µm crop). "
        "They imitate the published AFM crops (triangular domains, terraces, particles, scan artefacts) but are not "
        "measurements. Load your own data with ", html.Code("tmdafm precompute DATA --out CACHE"), ".",
        html.Div(className="scope", children=[
            html.Div([html.Strong("This demo can show: "), "; ".join(scope["can"]) + "."], id="demo-can"),
            html.Div([html.Strong("It cannot show: "), "; ".join(scope["cannot"]) + "."], id="demo-cannot")]),
    ])


def _facts(info: dict):
    sizes = ", ".join(f"{h} × {w} px ({n})" for h, w, n in info["image_sizes"][:4])
    if len(info["image_sizes"]) > 4:
        sizes += f", … ({len(info['image_sizes'])} sizes)"
    low, median, high = info["pixel_size_nm"]
    pixel = f"{median:.3g} nm/px" if low == high else f"{low:.3g}–{high:.3g} nm/px (median {median:.3g})"
    source = ("synthetic demo (generated into the store)" if info["synthetic"]
              else f"{info['root']} ({info['layout']} layout)")
    rows = [
        ("source", source),
        ("images", f"{info['n_images']}"),
        ("physical samples", f"{info['n_samples']}"),
        ("image size", sizes),
        ("pixel size", pixel),
        ("scan size", f"{info['scan_size_nm'] / 1000:.3g} µm × {info['scan_size_nm'] / 1000:.3g} µm (median)"),
        ("cross-validation", f"{info['n_folds']} folds, stratified by material, grouped by sample"),
    ]
    if info["skipped"]:
        rows.append(("skipped files", f"{len(info['skipped'])} (see `tmdafm info`)"))
    return _card("Data set", html.Table(className="facts", children=[
        html.Tbody([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows])]), id="dataset-facts")


def _split_table(info: dict):
    table = info["table"]
    n_folds = info["n_folds"]
    colours = figures.material_colours(info["classes"])
    head = html.Thead([
        html.Tr([html.Th("", rowSpan=2), html.Th("Images", colSpan=5 + n_folds, className="group"),
                 html.Th("Samples", colSpan=3, className="group")]),
        html.Tr([html.Th("train pool"), html.Th("train / fold"), html.Th("val / fold")]
                + [html.Th(f"val fold {k}", className="fold") for k in range(n_folds)]
                + [html.Th("test"), html.Th("total"), html.Th("train pool"), html.Th("test"), html.Th("total")]),
    ])
    body = []
    for material, row in table.iterrows():
        is_total = material == "total"
        name = html.Th(["total"] if is_total else [_swatch(colours[material]), material], scope="row")
        cells = [row["train_pool"], row["train_mean"], row["val_mean"]]
        cells += [row[f"val_fold_{k}"] for k in range(n_folds)]
        cells += [row["test"], row["images"], row["samples_train"], row["samples_test"], row["samples"]]
        body.append(html.Tr([name] + [html.Td(_fmt_count(v), className="num") for v in cells],
                            className="total" if is_total else None))
    caption = ("Every split is by physical sample: no sample has images in two partitions. The test set is held "
               "out; the rest (train pool) is cut into validation folds, and each fold trains on the pool minus "
               "its validation images. train / fold and val / fold are means over the folds, the numbers the "
               "paper's Table 1 reports per class.")
    return _card("Images per material and partition (Table 1)",
                 html.Div(className="table-scroll", children=html.Table(
                     id="split-table", className="data", children=[head, html.Tbody(body)])),
                 html.P(caption, className="caption"), id="table1")


def _classes(info: dict):
    colours = figures.material_colours(info["classes"])
    head = html.Thead(html.Tr([html.Th("index"), html.Th("material")]
                              + [html.Th(e, className="num") for e in info["elements"]]))
    rows = [html.Tr([html.Td(str(i), className="num"), html.Td([_swatch(colours[m]), m])]
                    + [html.Td(str(v), className="num bit" + (" on" if v else "")) for v in vector])
            for i, (m, vector) in enumerate(zip(info["classes"], info["element_matrix"], strict=True))]
    caption = ("MtC (multi-class) predicts one of the classes in this order; MtL (multi-label) predicts the "
               f"presence of each element, the vector [{', '.join(info['elements'])}] on each row, parsed from the "
               "material name.")
    return _card("Classes and element vectors", html.Table(className="data compact", id="class-table",
                                                            children=[head, html.Tbody(rows)]),
                 html.P(caption, className="caption"))


def _chart(info: dict):
    figure = figures.split_counts_figure(info["table"], title=None)
    config = {"displaylogo": False, "toImageButtonOptions": {"filename": "tmdafm_split_counts", "scale": 3},
              "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"]}
    return _card("Class balance", dcc.Graph(figure=figure, config=config, id="split-chart"),
                 html.P("Bar colour is the material, the pattern the partition (train and validation are means "
                        "per fold).", className="caption"))


def _examples(cache: Path, info: dict):
    examples = results.example_thumbnails(cache, per_material=9)  # one row at the usual page width
    colours = figures.material_colours(info["classes"])
    rows = []
    for material, items in examples.items():
        tiles = [html.Figure(className="thumb", children=[
            html.Img(src=item["uri"], alt=f"{material} AFM image {item['image']}", title=item["image"]),
            html.Figcaption([item["sample_id"], html.Br(), item["split"]]),
        ]) for item in items]
        rows.append(html.Div(className="strip", children=[
            html.Div(className="strip-label", children=[_swatch(colours[material]), material]),
            html.Div(tiles, className="strip-tiles")]))
    scan = info["scan_size_nm"] / 1000
    caption = (f"One image per sample where possible. Each crop spans {scan:.3g} µm × {scan:.3g} µm; height is "
               "scaled to 0–1 per image (dark = low, bright = high), as the models see it.")
    return _card("Example images", *rows, html.P(caption, className="caption"), id="examples")


def _store(info: dict):
    build = read_status(info["cache"])
    building = build.get("steps", []) if build.get("state") == "running" else []
    rows = []
    for artifact in info["artifacts"]:
        if artifact.key in building and not artifact.present:
            current = artifact.key == build.get("step")
            status_cell = html.Td("being built now" if current else "queued", className="status building")
            action = html.Td(f"step {building.index(artifact.key) + 1} of {len(building)} of the app's build; "
                             f"by hand: {artifact.command}", className="caption")
            rows.append(html.Tr([html.Th(artifact.title, scope="row"), status_cell, action]))
            continue
        if artifact.present:
            status = html.Td("in store", className="status present")
            action = html.Td(html.Code(str(artifact.path), className="path"))
        else:
            status = html.Td("missing", className="status missing")
            action = html.Td(className="command", children=[
                html.Code(artifact.command, id=f"cmd-{artifact.key}"),
                dcc.Clipboard(target_id=f"cmd-{artifact.key}", title="copy the command", className="copy"),
            ])
        rows.append(html.Tr([html.Th(artifact.title, scope="row"), status, action]))
    head = html.Thead(html.Tr([html.Th("artifact"), html.Th("status"), html.Th("location, or the command that "
                                                                             "builds it")]))
    return _card("What the store holds", html.P(["Store: ", html.Code(info["cache"])], className="caption"),
                 html.Table(className="data store", id="store-table", children=[head, html.Tbody(rows)]),
                 id="store")


def overview_body(cache: Path) -> list:
    """The overview's sections for a store that holds a prepared data set."""
    info = results.dataset_overview(cache)
    if not info["prepared"]:
        return [_store(info)]
    sections = [_synthetic_notice(info)] if info["synthetic"] else []
    sections += [
        html.Div(className="grid three", children=[_facts(info), _classes(info), _chart(info)]),
        _split_table(info),
        _examples(cache, info),
        _store(info),
    ]
    return sections


def _preparing(cache: Path):
    return _card("Preparing the demo data set", html.P(
        f"The store {cache} holds no prepared data set yet, so tmdafm generates the synthetic TMD-AFM demo, "
        "assigns the splits and makes thumbnails (the banner above shows how far it got). This page fills in by "
        "itself when they are ready, in well under a minute; the models and analyses for the other pages follow. "
        "This happens once; later starts read everything from the store."), class_name="card preparing",
        id="overview-preparing")


def layout(**_query):
    cache = _cache()
    children = overview_body(cache) if store_ready(cache) else [_preparing(cache)]
    return html.Div(id="overview-body", children=children)
