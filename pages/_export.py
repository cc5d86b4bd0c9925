"""Export for every figure of the app, and for the shared selection (not a page: Dash skips ``_`` modules).

Use, in a page module::

    from pages import _export

    _export.register("confusion-mtc", "tmdafm_confusion_mtc", data_id="confusion-mtc-data")  # at import time

    def layout(**_):
        return _export.figure_panel(dcc.Graph(id="confusion-mtc", figure=..., config=_export.graph_config(
            "tmdafm_confusion_mtc")), data=table)                                            # in the layout

* The graph's modebar camera saves a PNG at print scale (3x) named after the figure.
* The panel's toolbar saves an SVG or PNG in the browser (plotly.js, no server round trip) and makes an Export ZIP
  on the server (:func:`tmdafm_core.export.export_zip`: interactive HTML, PNG/SVG/PDF, CSV of the data).
* A page may change the file name with the graph's ``config.toImageButtonOptions.filename``; every export uses it.
* ``data`` (a DataFrame) is kept in a ``dcc.Store`` (id ``<graph id>-export-data``, or ``data_id``) and exported as
  ``<name>_data.csv``; a callback may update that store when the figure changes.

:func:`selection_tools` is the shared selection's summary with a CSV download of the selected images.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dash
import pandas as pd
from dash import Input, Output, State, dcc, html

from tmdafm_core import export, layout, selection

SELECTION_STORE = "selection"  # app.py's shared selection
_REGISTERED: dict[str, str] = {}


def graph_config(filename: str, *, remove=("select2d", "lasso2d", "autoScale2d"), scale: int = export.PRINT_SCALE) \
        -> dict:
    """``dcc.Graph`` config: the modebar camera saves ``<filename>.png`` at print scale, no plotly logo."""
    return {"displaylogo": False, "modeBarButtonsToRemove": list(remove),
            "toImageButtonOptions": {"format": "png", "filename": export.safe_name(filename), "scale": scale}}


def data_store_id(graph_id: str) -> str:
    return f"{graph_id}-export-data"


def table_data(table: pd.DataFrame | None) -> dict | None:
    """A DataFrame as the export store's data (column order kept)."""
    if table is None:
        return None
    return {"columns": [str(c) for c in table.columns], "rows": table.astype(object).where(table.notna(), None)
            .to_numpy().tolist()}


def _table(data) -> pd.DataFrame | None:
    if not isinstance(data, dict) or "columns" not in data:
        return None
    return pd.DataFrame(data.get("rows", []), columns=data["columns"])


def toolbar(graph_id: str) -> html.Div:
    """Buttons under a figure: SVG, PNG (in the browser) and Export ZIP (HTML, PNG, SVG, PDF, CSV)."""
    return html.Div(className="export-bar", children=[
        html.Button("SVG", id=f"{graph_id}-svg", className="export-button", title="save the figure as SVG"),
        html.Button("PNG", id=f"{graph_id}-png", className="export-button",
                    title=f"save the figure as PNG at {export.PRINT_SCALE}x (print) scale"),
        html.Button("Export ZIP", id=f"{graph_id}-zip", className="export-button primary",
                    title="interactive HTML, PNG, SVG, PDF and the data as CSV in one ZIP"),
        dcc.Loading(html.Span(id=f"{graph_id}-export-status", className="export-status"), type="dot",
                    parent_className="export-loading"),
        dcc.Download(id=f"{graph_id}-download"),
        html.Span(id=f"{graph_id}-browser-save", hidden=True),
    ])


def figure_panel(graph: dcc.Graph, *, data: pd.DataFrame | None = None, data_id: str | None = None) -> html.Div:
    """A registered graph with its export toolbar and its data store."""
    store_id = data_id or data_store_id(graph.id)
    return html.Div(className="figure-panel", children=[
        graph, toolbar(graph.id), dcc.Store(id=store_id, data=table_data(data)),
    ])


def _filename(config, fallback: str) -> str:
    try:
        return export.safe_name(config["toImageButtonOptions"]["filename"])
    except (KeyError, TypeError, ValueError):
        return fallback


def export_figure(n_clicks, figure, config, data, *, fallback: str) -> tuple:
    """The Export ZIP callback as a plain function: ``(download dict or no_update, status message)``."""
    if not n_clicks or not figure:
        return dash.no_update, dash.no_update
    name = _filename(config, fallback)
    result = export.export_zip(figure, name, data=_table(data))
    download = {"content": base64.b64encode(result.content).decode("ascii"), "filename": result.filename,
                "base64": True, "type": "application/zip"}
    if result.notes:
        return download, html.Span(className="export-warning", children=[
            f"{result.filename}: HTML and CSV only. ", result.notes[0]])
    return download, f"{result.filename}: HTML, PNG, SVG, PDF, CSV"


def register(graph_id: str, filename: str, *, data_id: str | None = None) -> None:
    """Register the export callbacks of the graph ``graph_id`` (call once, at import time of the page)."""
    if graph_id in _REGISTERED:
        return
    _REGISTERED[graph_id] = filename
    fallback = export.safe_name(filename)
    for fmt in ("svg", "png"):
        # In the browser: plotly.js draws the figure as shown (zoom included), nothing goes to the server.
        dash.clientside_callback(
            f"""function(n, config) {{
                if (!n) {{ return window.dash_clientside.no_update; }}
                const holder = document.getElementById({graph_id!r});
                const plot = holder && holder.querySelector('.js-plotly-plot');
                if (!plot) {{ return 'no figure to save'; }}
                const opts = (config && config.toImageButtonOptions) || {{}};
                Plotly.downloadImage(plot, {{format: '{fmt}', filename: opts.filename || {fallback!r},
                                             scale: {export.PRINT_SCALE if fmt == 'png' else 1}}});
                return '{fmt}:' + n;
            }}""",
            Output(f"{graph_id}-browser-save", "children", allow_duplicate=True),
            Input(f"{graph_id}-{fmt}", "n_clicks"), State(graph_id, "config"),
            prevent_initial_call=True,
        )

    @dash.callback(
        Output(f"{graph_id}-download", "data"), Output(f"{graph_id}-export-status", "children"),
        Input(f"{graph_id}-zip", "n_clicks"), State(graph_id, "figure"), State(graph_id, "config"),
        State(data_id or data_store_id(graph_id), "data"),
        running=[(Output(f"{graph_id}-zip", "disabled"), True, False)],
        prevent_initial_call=True,
    )
    def _export_zip(n_clicks, figure, config, data):
        return export_figure(n_clicks, figure, config, data, fallback=fallback)


# --- the shared selection ---------------------------------------------------------------------------------------

def selection_tools() -> html.Div:
    """The shared selection in one line (count and where it came from) with a CSV download."""
    return html.Div(className="selection-bar", children=[
        html.Span("No images selected.", id="selection-summary", className="selection-summary"),
        html.Button("Selection as CSV", id="selection-export", className="export-button", disabled=True,
                    title="the selected images with material, split, prediction and descriptors"),
        html.Button("Clear", id="selection-clear", className="export-button", disabled=True,
                    title="clear the selection"),
        dcc.Download(id="selection-download"),
    ])


def selection_summary(data) -> tuple[str, bool]:
    images = selection.selected_images(data)
    if not images:
        return "No images selected.", True
    source = data.get("source") or "unknown"
    return f"{len(images)} image{'s' if len(images) != 1 else ''} selected ({source}).", False


def selection_csv(cache: Path, data) -> dict | None:
    """The selection's CSV download: one row per selected image with what the store knows about it."""
    images = selection.selected_images(data)
    if not images:
        return None
    try:
        manifest = layout.load_manifest(cache)
    except (FileNotFoundError, ValueError):
        manifest = None
    predictions_path = cache / "latent" / "mtc" / "predictions.csv"
    predictions = pd.read_csv(predictions_path, dtype={"image": str}) if predictions_path.is_file() else None
    table = export.selection_table(images, manifest=manifest, features=selection.read_features(cache),
                                   predictions=predictions)
    return {"content": table.to_csv(index=False), "filename": "tmdafm_selection.csv", "type": "text/csv"}


@dash.callback(Output("selection-summary", "children"), Output("selection-export", "disabled"),
               Output("selection-clear", "disabled"), Input(SELECTION_STORE, "data"))
def _show_selection(data):
    text, empty = selection_summary(data)
    return text, empty, empty


@dash.callback(Output("selection-download", "data"), Input("selection-export", "n_clicks"),
               State(SELECTION_STORE, "data"), prevent_initial_call=True)
def _download_selection(n_clicks, data):
    if not n_clicks:
        return dash.no_update
    return selection_csv(Path(dash.get_app().server.config["TMDAFM_CACHE"]), data) or dash.no_update


@dash.callback(Output(SELECTION_STORE, "data", allow_duplicate=True), Input("selection-clear", "n_clicks"),
               prevent_initial_call=True)
def _clear_selection(n_clicks):
    return None if n_clicks else dash.no_update
