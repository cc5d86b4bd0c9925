"""Layout pieces shared by the analysis pages (/physical, /performance, /sequential); not a page."""

from __future__ import annotations

from pathlib import Path

import dash
import dash_ag_grid as dag
from dash import dcc, html

from pages import _build
from tmdafm_core import figures
from tmdafm_core.build import read_status
from tmdafm_core.layout import StoreLayout


def cache_dir() -> Path:
    return Path(dash.get_app().server.config["TMDAFM_CACHE"])


def column(field: str, header: str, *, tooltip: str | None = None, digits: int | None = None,
           exponent: bool = False, left: bool = False, bold_when: str | None = None,
           colour_when: dict | None = None) -> dict:
    """One column of :func:`data_grid` (an AG Grid column definition).

    ``tooltip``: what the column holds and its unit, shown on the header; ``digits``: fixed decimals (``exponent``:
    scientific notation below 0.001); ``left``: text columns; ``bold_when``: a JavaScript condition on
    ``params.value`` that sets the cell in bold; ``colour_when``: ``{condition: CSS colour}``.
    """
    definition = {"field": field, "headerName": header, "headerTooltip": tooltip or header,
                  "cellStyle": {"textAlign": "left" if left else "right"}}
    if digits is not None:
        plain = f"d3.format('.{digits}f')(params.value)"
        text = f"(Math.abs(params.value) < 0.001 && params.value !== 0 ? d3.format('.{digits}e')(params.value) : " \
               f"{plain})" if exponent else plain
        definition["valueFormatter"] = {"function": f"params.value == null ? '' : {text}"}
        definition["filter"] = "agNumberColumnFilter"
    conditions = [{"condition": bold_when, "style": {"fontWeight": 700}}] if bold_when else []
    conditions += [{"condition": condition, "style": {"color": colour}} for condition, colour in
                   (colour_when or {}).items()]
    if conditions:
        definition["cellStyle"] = {"styleConditions": conditions, "defaultStyle": definition["cellStyle"]}
    return definition


def group(header: str, *children: dict) -> dict:
    """A header spanning ``children`` columns."""
    return {"headerName": header, "children": list(children), "headerClass": "grid-group"}


def data_grid(grid_id: str, rows, columns: list[dict], *, export_name: str) -> html.Div:
    """A table the user can sort, filter (header menus) and download as CSV, with column tooltips (dash-ag-grid).

    ``rows``: a DataFrame or records; ``columns``: :func:`column` / :func:`group` definitions.
    """
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    return html.Div(className="data-grid", children=[
        dag.AgGrid(id=grid_id, rowData=records, columnDefs=columns,
                   defaultColDef={"sortable": True, "filter": True, "resizable": True, "suppressHeaderMenuButton":
                                  False, "wrapHeaderText": True, "autoHeaderHeight": True},
                   columnSize="autoSize", dashGridOptions={"domLayout": "autoHeight", "tooltipShowDelay": 300,
                                                           "enableCellTextSelection": True},
                   style={"height": None, "fontFamily": figures.FONT_FAMILY}),
        html.Button("Download CSV", className="export-button grid-export", type="button",
                    **{"data-grid-export": grid_id, "data-file-name": f"{export_name}.csv"}),
    ])


def card(title, *children, class_name="card", **kwargs) -> html.Section:
    return html.Section(className=class_name, children=[html.H2(title), *children], **kwargs)


def caption(text) -> html.P:
    return html.P(text, className="caption")


def needs_card(cache, steps, *, title: str, what: str, card_id: str) -> html.Section:
    """What a page cannot show yet: while the app's build is making ``steps`` (store steps), a calm card with the
    whole build's progress; otherwise each missing artifact with the command that builds it (copyable). Either
    card's id is ``card_id`` (ending in ``-missing``: the page reloads when a step it waits for lands)."""
    waiting = _build.waiting_card(read_status(cache), steps, title=title, card_id=card_id)
    return waiting or missing_card(title, StoreLayout(cache).missing(steps), what=what, card_id=card_id)


def missing_card(title: str, items: list[tuple[str, str]], *, what: str, card_id: str) -> html.Section:
    """What a page cannot show yet, each missing artifact with the command that builds it (copyable)."""
    rows = []
    for index, (name, command) in enumerate(items):
        code_id = f"{card_id}-cmd-{index}"
        rows.append(html.Tr([html.Th(name, scope="row"), html.Td(className="command", children=[
            html.Code(command, id=code_id),
            dcc.Clipboard(target_id=code_id, title="copy the command", className="copy")])]))
    return card(title, html.P(what), html.Table(className="data store missing-table", children=[
        html.Thead(html.Tr([html.Th("missing"), html.Th("command that builds it")])), html.Tbody(rows)]),
        class_name="card missing-card", id=card_id)


def error_card(title: str, message: str, command: str) -> html.Section:
    return card(title, html.P(message, className="error"),
                html.P(["Rebuild it from a terminal: ", html.Code(command)]), class_name="card failed")


def swatch(colour: str) -> html.Span:
    return html.Span(className="swatch", style={"backgroundColor": colour})


def thumbnails(items: list[dict], *, captions=None, empty: str = "No images.") -> html.Div:
    """A wrapping strip of thumbnails; ``items`` from :func:`tmdafm_core.selection.gallery`."""
    if not items:
        return html.Div(empty, className="caption")
    colours = figures.material_colours([i["material"] for i in items if i.get("material")])
    tiles = []
    for index, item in enumerate(items):
        lines = captions[index] if captions is not None else [item.get("material") or "", item.get("split") or ""]
        image = html.Img(src=item["uri"], alt=f"AFM image {item['image']}", title=item["image"]) \
            if item.get("uri") else html.Div("no thumbnail", className="no-thumb", title=item["image"])
        border = colours.get(item.get("material") or "", "#d9dee4")
        tiles.append(html.Figure(className="thumb", style={"--material": border}, children=[
            image, html.Figcaption([part for line in lines for part in (line, html.Br())][:-1])]))
    return html.Div(tiles, className="thumb-grid")
