"""Plotly figure builders shared by the app and the CLI's export: data in, ``go.Figure`` out.

One palette for materials everywhere (:func:`material_colours`): Okabe & Ito's colour-blind-safe set, in a fixed
order for the paper's materials so a class keeps its colour across pages and figures.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .data import PAPER_MATERIALS

#: Okabe & Ito (2008) colour-blind-safe palette without yellow, which is unreadable on white.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000")
FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
# Patterns tell partitions apart without relying on colour (colour encodes the material).
PARTITION_PATTERNS = {"train": "", "val": "/", "test": "x"}
PARTITION_LABELS = {"train": "train / fold", "val": "val / fold", "test": "test"}


def material_colours(materials) -> dict[str, str]:
    """Colour of each material: the paper's five in their fixed order, others after them in the order given.

    More materials than colours reuse the palette in turn (a legend then names them).
    """
    materials = list(dict.fromkeys(str(m) for m in materials))
    colours = {m: OKABE_ITO[i] for i, m in enumerate(PAPER_MATERIALS) if m in materials}
    others = [m for m in materials if m not in colours]
    for i, material in enumerate(others):
        colours[material] = OKABE_ITO[(len(PAPER_MATERIALS) + i) % len(OKABE_ITO)]
    return {m: colours[m] for m in materials}


def base_layout(figure: go.Figure, *, title: str | None = None, height: int = 360) -> go.Figure:
    """The house style: white background, light grid, readable fonts, legend above the plot."""
    figure.update_layout(
        template="plotly_white",
        height=height,
        font=dict(family=FONT_FAMILY, size=13, color="#1f2933"),
        title=dict(text=title, x=0, xanchor="left", font=dict(size=15)) if title else None,
        margin=dict(l=60, r=40, t=70 if title else 40, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0.0),
        hoverlabel=dict(font_family=FONT_FAMILY),
        modebar=dict(orientation="v"),  # keeps the toolbar clear of the legend above the plot
    )
    return figure


def split_counts_figure(table: pd.DataFrame, *, title: str | None = "Images per material and partition") \
        -> go.Figure:
    """Stacked bars of train, validation (means per fold) and test images per material.

    Parameters
    ----------
    table : DataFrame
        :func:`tmdafm_core.pipeline.split_table`: one row per material (a ``total`` row is ignored) with columns
        ``train_mean``, ``val_mean`` and ``test``.
    """
    missing = {"train_mean", "val_mean", "test"} - set(table.columns)
    if missing:
        raise ValueError(f"split table lacks column(s) {sorted(missing)}; build it with pipeline.split_table")
    rows = table.drop(index="total", errors="ignore")
    materials = [str(m) for m in rows.index]
    colours = material_colours(materials)
    figure = go.Figure()
    for partition, column in (("train", "train_mean"), ("val", "val_mean"), ("test", "test")):
        values = rows[column].astype(float).to_numpy()
        figure.add_trace(go.Bar(
            x=materials, y=values, name=PARTITION_LABELS[partition], legendgroup=partition, showlegend=False,
            marker=dict(color=[colours[m] for m in materials], line=dict(color="white", width=1),
                        pattern=dict(shape=PARTITION_PATTERNS[partition], fgcolor="white", solidity=0.35)),
            customdata=[PARTITION_LABELS[partition]] * len(materials),
            hovertemplate="%{x} · %{customdata}: %{y:.1f} images<extra></extra>",
        ))
        # Legend swatch in neutral grey: the bars' colour is the material, the legend explains only the pattern.
        figure.add_trace(go.Bar(
            x=[None], y=[None], name=PARTITION_LABELS[partition], legendgroup=partition, hoverinfo="skip",
            marker=dict(color="#7b8794", pattern=dict(shape=PARTITION_PATTERNS[partition], fgcolor="white",
                                                      solidity=0.35)),
        ))
    figure.update_layout(barmode="stack", bargap=0.35)
    figure.update_xaxes(title_text="material", categoryorder="array", categoryarray=materials)
    figure.update_yaxes(title_text="images (count)", rangemode="tozero")
    return base_layout(figure, title=title)


# --- latent view and classification (pages /latent and /classify) ----------------------------------------------

#: Continuous colour scale for descriptors: perceptually uniform and readable with colour-vision deficiencies.
CONTINUOUS_SCALE = "Viridis"
MISSING_COLOUR = "#bcc3cb"
#: Fixed number of legend entries in the latent scatter, so a colour change patches them instead of rebuilding.
LEGEND_SLOTS = 12
_BINARY_COLOURS = {"present": OKABE_ITO[0], "absent": OKABE_ITO[1], "correct": OKABE_ITO[2],
                   "incorrect": OKABE_ITO[4], "train": OKABE_ITO[5], "test": OKABE_ITO[4]}


def colour_spec(values, *, kind: str, order=None, title: str = "") -> dict:
    """How to colour points by one column: integer codes on a stepped scale (categories) or values on a scale.

    Parameters
    ----------
    values : sequence
        One value per point (NA allowed: such points are grey and listed as "not available").
    kind : {"category", "continuous"}
    order : sequence of str, optional
        Category order (e.g. the MtC classes); categories not in it follow in sorted order.
    title : str
        Legend or colour-bar title (with units for descriptors).

    Returns
    -------
    dict
        ``kind``, ``color`` (list: codes or floats, None for NA), ``colorscale``, ``cmin``, ``cmax``, ``legend``
        (list of ``(name, colour)``) and ``title``. Codes keep the patch of a colour change small (one small
        integer per point instead of a colour string).
    """
    series = pd.Series(list(values), dtype=object)
    missing = series.isna().to_numpy()
    if kind == "continuous":
        numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64)
        finite = np.isfinite(numbers)
        low, high = (float(numbers[finite].min()), float(numbers[finite].max())) if finite.any() else (0.0, 1.0)
        return {"kind": kind, "color": [float(v) if ok else None for v, ok in zip(numbers, finite, strict=True)],
                "colorscale": CONTINUOUS_SCALE, "cmin": low, "cmax": high if high > low else low + 1.0,
                "legend": [], "title": title}
    if kind != "category":
        raise ValueError(f"kind must be 'category' or 'continuous', got {kind!r}")
    labels = series.where(~missing, None).map(lambda v: None if v is None else str(v))
    present = sorted({v for v in labels if v is not None})
    order = [str(v) for v in (order or []) if str(v) in present]
    categories = order + [v for v in present if v not in order]
    colours = category_colours(categories)
    if missing.any():
        categories, colours = categories + ["not available"], {**colours, "not available": MISSING_COLOUR}
    index = {name: i for i, name in enumerate(categories)}
    codes = [index["not available"] if v is None else index[v] for v in labels]
    n = max(len(categories), 1)
    scale = []
    for i, name in enumerate(categories):
        scale += [[i / n, colours[name]], [(i + 1) / n, colours[name]]]
    return {"kind": kind, "color": codes, "colorscale": scale or [[0, MISSING_COLOUR], [1, MISSING_COLOUR]],
            "cmin": -0.5, "cmax": n - 0.5, "legend": [(name, colours[name]) for name in categories],
            "title": title}


def category_colours(categories) -> dict[str, str]:
    """Colours of categories: materials keep their palette colours, known binary labels fixed ones, others the
    Okabe-Ito palette in turn."""
    categories = [str(c) for c in categories]
    if all(c in _BINARY_COLOURS for c in categories):
        return {c: _BINARY_COLOURS[c] for c in categories}
    return material_colours(categories)


def colour_marker(spec: dict) -> dict:
    """The marker properties a colour spec sets (the same keys a colour-change patch assigns)."""
    continuous = spec["kind"] == "continuous"
    return {"color": spec["color"], "colorscale": spec["colorscale"], "cmin": spec["cmin"], "cmax": spec["cmax"],
            "showscale": continuous,
            "colorbar": dict(title=dict(text=spec["title"], side="right"), thickness=14, len=0.9)}


def legend_slots(spec: dict, *, slots: int = LEGEND_SLOTS) -> list[dict]:
    """Name, colour and visibility of each legend slot trace for a colour spec (unused slots hidden)."""
    entries = list(spec["legend"])
    if len(entries) > slots:
        entries = entries[:slots - 1] + [(f"… {len(entries) - slots + 1} more", MISSING_COLOUR)]
    return [{"name": entries[i][0], "color": entries[i][1], "visible": True} if i < len(entries)
            else {"name": "", "color": MISSING_COLOUR, "visible": False} for i in range(slots)]


def axis_title(column: str, explained: dict | None = None) -> str:
    """Axis title of a projection column: ``PC1 score (34.2 % of variance)``, ``UMAP 1 (arbitrary units)``."""
    if column.startswith("PC"):
        ratio = (explained or {}).get(column)
        return f"{column} score" + (f" ({100 * ratio:.1f} % of variance)" if ratio is not None else "")
    number = column.split("_")[-1] if column.startswith("UMAP3D_") else column[4:]
    return f"UMAP {number} (arbitrary units)"


def latent_scatter_figure(points: pd.DataFrame, *, x: str, y: str, z: str | None = None, colour: dict,
                          highlight=None, explained: dict | None = None, title: str | None = None,
                          opacity=None, height: int = 560) -> go.Figure:
    """The latent scatter: every image once in a WebGL trace, a highlight trace, and fixed legend slots.

    Traces, in this order (pages patch them by index): 0 the points (``customdata`` = row number, colours from
    ``colour``), 1 the highlighted points (hollow circles), 2.. the :data:`LEGEND_SLOTS` legend entries. With
    ``z`` the figure is 3-D (``Scatter3d``, WebGL too).

    Parameters
    ----------
    points : DataFrame
        Coordinates in columns ``x``, ``y`` (and ``z``).
    colour : dict
        :func:`colour_spec` of the points.
    highlight : sequence of int, optional
        Row positions drawn as hollow circles (the shared selection).
    explained : dict, optional
        ``{PC: explained variance ratio}`` for the axis titles.
    opacity : sequence of float, optional
        Per-point opacity (filtered-out points faint); default 0.85 everywhere.
    """
    columns = [c for c in (x, y, z) if c is not None]
    unknown = [c for c in columns if c not in points.columns]
    if unknown:
        raise ValueError(f"points lack coordinate column(s) {unknown}; choose among the projection's columns")
    three_d = z is not None
    trace_type = go.Scatter3d if three_d else go.Scattergl
    coords = {axis: points[c].to_numpy(dtype=np.float64) for axis, c in zip("xyz", columns, strict=False)}
    marker = colour_marker(colour)
    marker.update(size=4 if three_d else 7, opacity=0.85 if opacity is None else list(opacity),
                  line=dict(width=0))
    figure = go.Figure()
    figure.add_trace(trace_type(**coords, mode="markers", name="images", showlegend=False, marker=marker,
                                customdata=np.arange(len(points)), hoverinfo="none"))
    rows = np.asarray(list(highlight or []), dtype=int)
    figure.add_trace(trace_type(**{axis: values[rows] for axis, values in coords.items()}, mode="markers",
                                name="selection", showlegend=len(rows) > 0, hoverinfo="skip",
                                marker=dict(size=7 if three_d else 12, color="rgba(0,0,0,0)",
                                            line=dict(color="#1f2933", width=1.6))))
    for slot in legend_slots(colour):
        figure.add_trace(trace_type(**{axis: [None] for axis in coords}, mode="markers", name=slot["name"],
                                    visible=slot["visible"], hoverinfo="skip", legendgroup=slot["name"],
                                    marker=dict(size=10, color=slot["color"])))
    titles = [axis_title(c, explained) for c in columns]
    if three_d:
        figure.update_scenes(xaxis_title_text=titles[0], yaxis_title_text=titles[1], zaxis_title_text=titles[2])
    else:
        figure.update_xaxes(title_text=titles[0], zeroline=False)
        figure.update_yaxes(title_text=titles[1], zeroline=False)
    base_layout(figure, title=title, height=height)
    figure.update_layout(dragmode="lasso" if not three_d else "orbit", hovermode="closest", uirevision="latent",
                         legend=dict(title=dict(text=colour["title"])))
    return figure


def stage_panels_figure(stages, *, x: str, y: str, colours: dict | None = None, height: int = 320) -> go.Figure:
    """One panel per sequential stage (paper Figure 5): the stage's images in its aligned projection by material.

    Parameters
    ----------
    stages : sequence of (str, DataFrame)
        Panel title and the stage's points (``material`` and the coordinate columns), fewest classes first.
    x, y : str
        Coordinate columns (the same in every panel, so aligned stages keep each class in place).
    """
    from plotly.subplots import make_subplots

    stages = list(stages)
    if not stages:
        raise ValueError("no sequential stages to draw; build them with `tmdafm precompute` (sequential step)")
    materials = [m for _, frame in stages for m in frame["material"].dropna().astype(str)]
    colours = colours or material_colours(dict.fromkeys(materials))
    figure = make_subplots(rows=1, cols=len(stages), subplot_titles=[t for t, _ in stages], shared_xaxes=True,
                           shared_yaxes=True, horizontal_spacing=0.03)
    shown = set()
    for col, (_, frame) in enumerate(stages, start=1):
        for material, part in frame.groupby(frame["material"].astype(str), sort=False):
            figure.add_trace(go.Scattergl(x=part[x], y=part[y], mode="markers", name=material,
                                          legendgroup=material, showlegend=material not in shown,
                                          marker=dict(size=5, color=colours.get(material, MISSING_COLOUR),
                                                      opacity=0.8),
                                          hovertemplate=f"{material}<extra></extra>"), row=1, col=col)
            shown.add(material)
    figure.update_xaxes(title_text=axis_title(x), zeroline=False)
    figure.update_yaxes(title_text=axis_title(y), zeroline=False, col=1)
    return base_layout(figure, height=height)


def probability_figure(probabilities: dict[str, float], *, title: str, colours: dict | None = None,
                       height: int = 200) -> go.Figure:
    """Horizontal bars of probabilities (0..100 %) per class or element, in the given order."""
    names = list(probabilities)
    values = [100.0 * float(probabilities[n]) for n in names]
    colours = colours or {}
    figure = go.Figure(go.Bar(x=values, y=names, orientation="h", text=[f"{v:.1f} %" for v in values],
                              textposition="auto", cliponaxis=False,
                              marker=dict(color=[colours.get(n, OKABE_ITO[0]) for n in names]),
                              hovertemplate="%{y}: %{x:.1f} %<extra></extra>"))
    figure.update_xaxes(title_text="probability (%)", range=[0, 100])
    figure.update_yaxes(autorange="reversed", title_text=None)
    base_layout(figure, title=title, height=height)
    figure.update_layout(margin=dict(l=80, r=20, t=40 if title else 10, b=45), showlegend=False)
    return figure


def placed_images_figure(points: pd.DataFrame, placed: pd.DataFrame, *, x: str, y: str, colour: dict,
                         explained: dict | None = None, height: int = 460) -> go.Figure:
    """The latent scatter of the data set with new images placed on it as labelled stars.

    ``placed`` holds ``name`` and the same coordinate columns (from the saved projection; nothing is refitted).
    """
    figure = latent_scatter_figure(points, x=x, y=y, colour=colour, explained=explained, height=height,
                                   opacity=[0.55] * len(points))
    figure.add_trace(go.Scattergl(x=placed[x], y=placed[y], mode="markers+text", name="uploaded",
                                  text=[str(n) for n in placed["name"]], textposition="top center",
                                  marker=dict(symbol="star", size=18, color="#1f2933",
                                              line=dict(color="white", width=1.2)),
                                  hovertemplate="%{text}<extra>uploaded</extra>"))
    figure.update_layout(dragmode="zoom")
    return figure
