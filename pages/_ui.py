"""Layout pieces shared by the analysis pages (/physical, /performance, /sequential); not a page."""

from __future__ import annotations

from pathlib import Path

import dash
from dash import dcc, html

from tmdafm_core import figures


def cache_dir() -> Path:
    return Path(dash.get_app().server.config["TMDAFM_CACHE"])


#: DataTable styles in the house font (dash_table's default is monospace).
TABLE_STYLE = dict(
    style_as_list_view=True,
    style_cell={"fontFamily": figures.FONT_FAMILY, "fontSize": 13, "padding": "4px 10px", "textAlign": "right"},
    style_header={"fontWeight": 600, "color": "#52606d", "backgroundColor": "white"},
)


def card(title, *children, class_name="card", **kwargs) -> html.Section:
    return html.Section(className=class_name, children=[html.H2(title), *children], **kwargs)


def caption(text) -> html.P:
    return html.P(text, className="caption")


def needs_card(cache, steps, *, title: str, what: str, card_id: str) -> html.Section:
    """What a page cannot show yet: while the app's build is making ``steps`` (store steps), a calm card with the
    whole build's progress; otherwise each missing artifact with the command that builds it (copyable). Either
    card's id is ``card_id`` (ending in ``-missing``: the page reloads when a step it waits for lands)."""
    from pages import _build
    from tmdafm_core.build import read_status
    from tmdafm_core.layout import StoreLayout

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
