"""Figure export (no Dash here): a figure and its data as one ZIP of interactive HTML, PNG/SVG/PDF and CSV.

Static images are drawn by kaleido in a headless Chromium-family browser (Debian's ``/usr/bin/chromium``). Where
none is found the ZIP still holds the HTML and the data, and its ``README.txt`` says why the images are missing and
how to get them (:func:`find_browser` is the one place that looks).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pandas as pd

STATIC_FORMATS = ("png", "svg", "pdf")
#: Print scale of PNGs: 3 x the on-screen size (about 300 dpi for a figure shown 8 cm wide).
PRINT_SCALE = 3
_BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF", "svg": b"<svg"}
NO_BROWSER_HELP = ("Install a Chromium browser (Debian/Ubuntu: `apt-get install chromium`) or point BROWSER_PATH at "
                   "one, then export again; the interactive HTML in this ZIP can also save PNGs from its toolbar.")


class StaticExportUnavailable(RuntimeError):
    """No browser to draw static images with, or the browser failed; the message says which and what to do."""


def find_browser() -> str | None:
    """Path of the Chromium-family browser kaleido will use: ``$BROWSER_PATH``, else the first on ``PATH``."""
    explicit = os.environ.get("BROWSER_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) else None
    for name in _BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def safe_name(name: str) -> str:
    """A file stem made of letters, digits, ``-`` and ``_`` (``"PC1 vs PC2 / grain"`` -> ``PC1_vs_PC2_grain``)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_")
    if not stem:
        raise ValueError(f"figure name {name!r} has no letters or digits; give a name such as 'confusion_mtc'")
    return stem[:120]


def _figure_size(figure) -> tuple[int, int]:
    layout = figure.layout
    return int(layout.width or 900), int(layout.height or 500)


def static_images(figure, formats=STATIC_FORMATS, *, scale: float = PRINT_SCALE, browser: str | None = None,
                  timeout: float = 60) -> dict[str, bytes]:
    """Draw ``figure`` as static images with one browser session.

    Parameters
    ----------
    figure : plotly Figure or dict
    formats : sequence of {"png", "svg", "pdf", "jpeg", "webp"}
    scale : float
        Pixel multiplier of raster formats (PNG).
    browser : str, optional
        Browser executable; default :func:`find_browser`.
    timeout : float
        Seconds to wait for one image.

    Returns
    -------
    dict of format -> bytes

    Raises
    ------
    StaticExportUnavailable
        No browser was found, or it failed to draw.
    """
    import asyncio

    import kaleido
    import plotly.graph_objects as go

    formats = list(formats)
    bad = [f for f in formats if f not in ("png", "svg", "pdf", "jpeg", "webp")]
    if bad:
        raise ValueError(f"unsupported image format(s) {bad}; use png, svg, pdf, jpeg or webp")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    browser = browser or find_browser()
    if browser is None:
        raise StaticExportUnavailable("no Chromium browser found for static export (PNG, SVG, PDF). "
                                      + NO_BROWSER_HELP)
    figure = go.Figure(figure)
    width, height = _figure_size(figure)

    async def draw() -> dict[str, bytes]:
        # mathjax=False: no CDN fetch (the app works offline); plotly.js comes from the plotly package.
        async with kaleido.Kaleido(n=1, timeout=timeout, mathjax=False, path=browser) as renderer:
            return {fmt: await renderer.calc_fig(figure, opts=dict(format=fmt, width=width, height=height,
                                                                   scale=scale if fmt in ("png", "jpeg", "webp")
                                                                   else 1))
                    for fmt in formats}

    # A fresh event loop in its own thread: callers (a Dash callback, a notebook) may already run a loop.
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["images"] = asyncio.run(draw())
        except Exception as exc:  # noqa: BLE001 - reported to the caller below with the browser named
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="kaleido-export")
    worker.start()
    worker.join()
    if "error" in outcome:
        error = outcome["error"]
        raise StaticExportUnavailable(f"static export with {browser} failed: {type(error).__name__}: {error}. "
                                      + NO_BROWSER_HELP) from error
    return outcome["images"]


def figure_html(figure, *, title: str | None = None) -> str:
    """The figure as a self-contained interactive HTML page (plotly.js inlined: opens offline)."""
    import html

    import plotly.graph_objects as go

    figure = go.Figure(figure)
    return figure.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False},
                          div_id="figure", default_width="100%",
                          default_height=f"{_figure_size(figure)[1]}px") \
        .replace("<head>", f"<head><title>{html.escape(title or 'tmdafm figure')}</title>", 1)


def without_external_sources(figure):
    """The figure with every layout image that is not an inline ``data:`` URI removed.

    A figure sent back by a browser may name ``file://`` or ``http://`` sources; the server's Chromium would read
    them into the exported PNG/SVG (a local file or an internal URL leaking into a download).
    """
    import plotly.graph_objects as go

    figure = go.Figure(figure)
    kept = [image for image in figure.layout.images
            if isinstance(image.source, str) and image.source.startswith("data:")]
    figure.layout.images = kept
    return figure


def _plain(value):
    """A trace array as plotly.py holds it: lists, numpy arrays, or the typed-array dicts plotly.js and Dash send
    (``{"dtype": "f8", "bdata": base64, "shape": "5, 5"}``) decoded to numpy."""
    import base64

    import numpy as np

    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]).newbyteorder("<"))
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(part) for part in str(shape).split(",")])
        return array
    return value


def figure_table(figure) -> pd.DataFrame:
    """The data drawn in a figure, long: one row per point of every trace (trace, name, x, y, z, text, ...).

    Heatmaps give one row per cell (x, y, z). This is what is on screen; a page's own table, when it has one,
    is exported beside it as ``data.csv``.
    """
    import numpy as np
    import plotly.graph_objects as go

    figure = go.Figure(figure)
    frames = []
    for index, trace in enumerate(figure.data):
        name = trace.name if getattr(trace, "name", None) is not None else f"trace {index}"
        columns = {}
        if trace.type == "heatmap" and trace.z is not None:
            z = np.asarray(_plain(trace.z), dtype=object)
            rows, cols = z.shape
            xs = list(_plain(trace.x)) if trace.x is not None else list(range(cols))
            ys = list(_plain(trace.y)) if trace.y is not None else list(range(rows))
            columns = {"x": [xs[j] for i in range(rows) for j in range(cols)],
                       "y": [ys[i] for i in range(rows) for j in range(cols)], "z": z.ravel().tolist()}
        else:
            for key in ("x", "y", "z", "text", "customdata"):
                value = _plain(getattr(trace, key, None))
                if value is not None and not isinstance(value, str):
                    array = np.asarray(value, dtype=object)
                    columns[key] = [v if not isinstance(v, (list, tuple, np.ndarray)) else "; ".join(map(str, v))
                                    for v in (array if array.ndim == 1 else array.tolist())]
            marker_colour = _plain(getattr(getattr(trace, "marker", None), "color", None))
            if marker_colour is not None and not isinstance(marker_colour, str):
                columns["colour_value"] = list(marker_colour)
            error = _plain(getattr(getattr(trace, "error_y", None), "array", None))
            if error is not None:
                columns["error_y"] = list(error)
        if not columns:
            continue
        length = max(len(v) for v in columns.values())
        frame = pd.DataFrame({k: list(v) + [None] * (length - len(v)) for k, v in columns.items()})
        frame.insert(0, "trace", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trace"])


@dataclass
class ExportResult:
    """An export ZIP and what went into it: ``files`` (names), ``notes`` (one line each, e.g. no browser)."""

    content: bytes
    filename: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_zip(figure, name: str, *, data: pd.DataFrame | None = None, formats=STATIC_FORMATS,
               scale: float = PRINT_SCALE, browser: str | None = None, description: str = "") -> ExportResult:
    """One figure as a ZIP: ``<name>.html`` (interactive, offline), ``<name>.png/.svg/.pdf``, ``<name>_data.csv``
    (the page's table, when given), ``<name>_traces.csv`` (:func:`figure_table`) and ``README.txt``.

    Static images need a browser (:func:`static_images`); without one the ZIP has the rest and ``README.txt``
    (and ``notes``) says what is missing and how to fix it.
    """
    import plotly.graph_objects as go

    stem = safe_name(name)
    figure = without_external_sources(go.Figure(figure))
    title = figure.layout.title.text if figure.layout.title and figure.layout.title.text else stem
    files: dict[str, bytes] = {f"{stem}.html": figure_html(figure, title=title).encode()}
    notes = []
    try:
        images = static_images(figure, formats, scale=scale, browser=browser)
    except StaticExportUnavailable as exc:
        notes.append(f"Static images (PNG, SVG, PDF) are not included: {exc}")
    else:
        files.update({f"{stem}.{fmt}": content for fmt, content in images.items()})
    if data is not None:
        files[f"{stem}_data.csv"] = data.to_csv(index=False).encode()
    files[f"{stem}_traces.csv"] = figure_table(figure).to_csv(index=False).encode()
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    readme = [f"tmdafm figure export: {title}", f"made {stamp}", ""]
    if description:
        readme += [description, ""]
    readme += ["Files:", f"  {stem}.html        interactive figure; opens offline in any browser (plotly.js inlined)"]
    for fmt in formats:
        if f"{stem}.{fmt}" in files:
            what = f"raster image at {scale:g}x screen size" if fmt in ("png", "jpeg", "webp") else "vector image"
            readme.append(f"  {stem}.{fmt}         {what}")
    if data is not None:
        readme.append(f"  {stem}_data.csv    the table the figure was drawn from")
    readme.append(f"  {stem}_traces.csv  every plotted point or cell, one row each (trace, x, y, ...)")
    if notes:
        readme += ["", "Not included:"] + [f"  {note}" for note in notes]
    files["README.txt"] = ("\n".join(readme) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for filename, content in files.items():
            archive.writestr(filename, content)
    return ExportResult(buffer.getvalue(), f"{stem}.zip", list(files), notes)


def selection_table(images, *, manifest: pd.DataFrame | None = None, features: pd.DataFrame | None = None,
                    predictions: pd.DataFrame | None = None) -> pd.DataFrame:
    """The selected images, one row each in selection order, with what the store knows about them.

    ``image`` first, then the manifest's ``sample_id``, ``material``, ``split``, ``fold``, ``pixel_size_nm``, the
    predictions' ``predicted`` and ``correct``, then the physical descriptors. Unknown ids keep an empty row.
    """
    table = pd.DataFrame({"image": [str(image) for image in images]})
    if manifest is not None:
        keep = [c for c in ("image", "sample_id", "material", "split", "fold", "pixel_size_nm", "height", "width")
                if c in manifest.columns]
        table = table.merge(manifest[keep].astype({"image": str}), on="image", how="left")
    if predictions is not None:
        keep = [c for c in ("image", "predicted", "correct") if c in predictions.columns]
        table = table.merge(predictions[keep].astype({"image": str}), on="image", how="left")
    if features is not None:
        table = table.merge(features.astype({"image": str}), on="image", how="left")
    return table
