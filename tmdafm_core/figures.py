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
    if not column.startswith("UMAP"):
        return column
    number = column.split("_")[-1] if column.startswith("UMAP3D_") else column[4:]
    return f"UMAP {number} (arbitrary units)"


def faded_marker(opacity, n_points: int, *, three_d: bool = False) -> dict:
    """Marker size and opacity that fade filtered-out points: per-point opacity in 2-D; in 3-D (where plotly takes
    one opacity per trace) faded points are drawn small instead."""
    opacity = np.full(n_points, 0.85) if opacity is None else np.asarray(list(opacity), dtype=np.float64)
    if three_d:
        return {"size": np.where(opacity >= 0.5, 4.0, 1.0).tolist(), "opacity": 0.85}
    return {"size": 7, "opacity": opacity.tolist()}


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
    marker.update(line=dict(width=0), **faded_marker(opacity, len(points), three_d=three_d))
    figure = go.Figure()
    # customdata as a plain list: a numpy array travels as a typed-array spec, and dcc.Graph's hover/click/selection
    # events then carry no row number.
    figure.add_trace(trace_type(**coords, mode="markers", name="images", showlegend=False, marker=marker,
                                customdata=list(range(len(points))), hoverinfo="none"))
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
    return legend_above_subplots(base_layout(figure, height=height))


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

    ``placed`` holds ``name`` (shown on hover), optionally a short ``label`` written beside the star (default: the
    name), and the same coordinate columns (from the saved projection; nothing is refitted).
    """
    figure = latent_scatter_figure(points, x=x, y=y, colour=colour, explained=explained, height=height,
                                   opacity=[0.55] * len(points))
    figure.add_trace(go.Scattergl(x=placed[x], y=placed[y], mode="markers+text", name="uploaded",
                                  text=[str(n) for n in placed.get("label", placed["name"])],
                                  textposition="top center", hovertext=[str(n) for n in placed["name"]],
                                  marker=dict(symbol="star", size=18, color="#1f2933",
                                              line=dict(color="white", width=1.2)),
                                  hovertemplate="%{hovertext}<extra>uploaded</extra>"))
    figure.update_layout(dragmode="zoom")
    return figure


# --- model performance, physical descriptors, sequential study (pages /performance, /physical, /sequential) --------

#: Diverging, colour-blind-safe scale for signed values in -1..1 (correlations, cosines): blue negative, red positive.
DIVERGING_SCALE = "RdBu_r"
#: Sequential scale for percentages (confusion matrices): light to dark blue, readable in grey print.
PERCENT_SCALE = "Blues"
TASK_COLOURS = {"MtC": OKABE_ITO[0], "MtL": OKABE_ITO[4], "MtL (paper rule)": OKABE_ITO[5]}
MODE_STYLES = {"imagenet": dict(name="ImageNet", color=OKABE_ITO[0], dash="solid", symbol="circle"),
               "sequential": dict(name="Sequential", color=OKABE_ITO[4], dash="dash", symbol="square")}
SPLIT_COLOURS = {"train": OKABE_ITO[0], "val": OKABE_ITO[1], "test": OKABE_ITO[4]}
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}


def readable(name: str) -> str:
    """``grain_density`` -> ``grain density``."""
    return str(name).replace("_", " ")


def legend_above_subplots(figure: go.Figure) -> go.Figure:
    """Room for the legend above the subplot titles (they sit where base_layout puts the legend)."""
    top = (figure.layout.margin.t or 40) + 30
    figure.update_layout(margin=dict(t=top), legend=dict(y=1.0, yref="container", yanchor="top", x=0.0))
    return figure


def metrics_figure(metrics: pd.DataFrame, *, title: str | None = None, height: int = 340) -> go.Figure:
    """Accuracy and macro-F1 (%, mean ± std over folds) per partition, MtC beside MtL.

    ``metrics`` is :func:`tmdafm_core.results.metrics_table` (task, split, accuracy_mean/std, f1_mean/std).
    """
    from plotly.subplots import make_subplots

    if metrics.empty:
        raise ValueError("no run metrics to draw; build the runs with `tmdafm precompute`")
    figure = make_subplots(rows=1, cols=2, subplot_titles=["accuracy", "macro-F1"], shared_yaxes=True,
                           horizontal_spacing=0.06)
    splits = [s for s in SPLIT_NAMES if s in set(metrics["split"])]
    for col, metric in enumerate(("accuracy", "f1"), start=1):
        for task, part in metrics.groupby("task", sort=False):
            part = part.set_index("split").loc[splits]
            figure.add_trace(go.Bar(
                x=[SPLIT_NAMES[s] for s in splits], y=100 * part[f"{metric}_mean"], name=task, legendgroup=task,
                showlegend=col == 1, marker_color=TASK_COLOURS.get(task, OKABE_ITO[2]),
                error_y=dict(type="data", array=100 * part[f"{metric}_std"], thickness=1.2, width=4),
                hovertemplate=f"{task} · %{{x}}: %{{y:.1f}} ± %{{error_y.array:.1f}} %<extra></extra>"),
                row=1, col=col)
    figure.update_yaxes(title_text="score (%, mean ± std over folds)", range=[0, 105], col=1)
    figure.update_yaxes(range=[0, 105], col=2)
    figure.update_xaxes(title_text="partition")
    figure.update_layout(barmode="group", bargap=0.3)
    return legend_above_subplots(base_layout(figure, title=title, height=height))


def reliability_figure(table: pd.DataFrame, *, title: str | None = None, height: int = 340) -> go.Figure:
    """Reliability diagram per task: accuracy against confidence of the test images' top probability, calibrated
    (solid) and uncalibrated (dotted); the diagonal is perfect calibration, marker area follows the bin's images.

    ``table`` is :func:`tmdafm_core.results.reliability_table`.
    """
    from plotly.subplots import make_subplots

    if table.empty:
        raise ValueError("no calibration in the store's runs; rebuild them with `tmdafm precompute`")
    tasks = list(dict.fromkeys(table["task"]))
    figure = make_subplots(rows=1, cols=len(tasks), subplot_titles=tasks, shared_yaxes=True, horizontal_spacing=0.06)
    largest = max(float(table["count"].max()), 1.0)
    for col, task in enumerate(tasks, start=1):
        figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#9aa5b1", width=1),
                                    name="perfect calibration", showlegend=col == 1, legendgroup="diagonal",
                                    hoverinfo="skip"), row=1, col=col)
        for kind, dash in (("uncalibrated", "dot"), ("calibrated", "solid")):
            part = table[(table["task"] == task) & (table["probabilities"] == kind)]
            colour = TASK_COLOURS.get(task, OKABE_ITO[2]) if kind == "calibrated" else "#7b8794"
            figure.add_trace(go.Scatter(
                x=part["confidence"], y=part["accuracy"], mode="lines+markers", name=kind, legendgroup=kind,
                showlegend=col == 1, line=dict(color=colour, dash=dash, width=1.6),
                marker=dict(color=colour, size=6 + 14 * np.sqrt(part["count"] / largest)),
                customdata=part[["count"]].to_numpy(),
                hovertemplate=f"{task} {kind}: confidence %{{x:.2f}}, accuracy %{{y:.2f}} "
                              "(%{customdata[0]} images)<extra></extra>"), row=1, col=col)
    figure.update_xaxes(title_text="confidence (top probability)", range=[0, 1.02])
    figure.update_yaxes(title_text="accuracy", range=[0, 1.02], col=1)
    return legend_above_subplots(base_layout(figure, title=title, height=height))


def confusion_figure(matrix: pd.DataFrame, *, title: str | None = None, height: int = 420) -> go.Figure:
    """Test confusion matrix in percent of all test images (paper Figure 3): rows true, columns predicted.

    Each cell carries ``customdata`` = [true, predicted] so a click can name the images behind it.
    """
    values = matrix.to_numpy(dtype=float)
    true = [str(c) for c in matrix.index]
    predicted = [str(c) for c in matrix.columns]
    top = max(float(np.nanmax(values)) if values.size else 0.0, 1e-9)
    text = [[f"{v:.1f}" for v in row] for row in values]
    custom = np.array([[[t, p] for p in predicted] for t in true], dtype=object)
    figure = go.Figure(go.Heatmap(
        z=values, x=predicted, y=true, colorscale=PERCENT_SCALE, zmin=0, zmax=top, text=text,
        texttemplate="%{text}", textfont=dict(size=13), customdata=custom, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="% of test images", side="right"), thickness=12),
        hovertemplate="true %{y} → predicted %{x}: %{z:.1f} % of test images<extra>click to list the images</extra>"))
    figure.update_xaxes(title_text="predicted material", side="bottom", tickangle=0)
    figure.update_yaxes(title_text="true material", autorange="reversed")
    base_layout(figure, title=title, height=height)
    figure.update_layout(margin=dict(l=80, r=20, t=50 if title else 20, b=60))
    return figure


def training_curves_figure(history: pd.DataFrame, *, title: str | None = None, height: int = 340) -> go.Figure:
    """Loss and macro-F1 per epoch, train against validation: the fold mean (thick) over each fold (thin).

    ``history`` is a run's ``history.csv`` (fold, epoch, split, loss, f1_macro). Loss is drawn on a log axis: one
    warm-up epoch's validation loss can be a hundred times the settled one and would flatten the rest.
    """
    from plotly.subplots import make_subplots

    needed = {"fold", "epoch", "split", "loss", "f1_macro"}
    if not needed <= set(history.columns):
        raise ValueError(f"history lacks column(s) {sorted(needed - set(history.columns))}; expected a run's "
                         "history.csv")
    figure = make_subplots(rows=1, cols=2, subplot_titles=["loss", "macro-F1"], horizontal_spacing=0.09)
    for col, (metric, scale) in enumerate((("loss", 1.0), ("f1_macro", 100.0)), start=1):
        for split in (s for s in ("train", "val") if s in set(history["split"])):
            part = history[history["split"] == split]
            colour = SPLIT_COLOURS[split]
            for fold, rows in part.groupby("fold"):
                figure.add_trace(go.Scatter(
                    x=rows["epoch"], y=scale * rows[metric], mode="lines", line=dict(color=colour, width=1),
                    opacity=0.35, name=f"{SPLIT_NAMES[split]} fold {fold}", legendgroup=split, showlegend=False,
                    hovertemplate=f"{SPLIT_NAMES[split]} fold {fold} · epoch %{{x}}: %{{y:.3g}}<extra></extra>"),
                    row=1, col=col)
            mean = part.groupby("epoch")[metric].mean()
            figure.add_trace(go.Scatter(
                x=mean.index, y=scale * mean.to_numpy(), mode="lines+markers", name=f"{SPLIT_NAMES[split]} (mean)",
                legendgroup=split, showlegend=col == 1, marker=dict(size=5, symbol="circle" if split == "train"
                                                                     else "diamond"),
                line=dict(color=colour, width=2.5, dash="solid" if split == "train" else "dash"),
                hovertemplate=f"{SPLIT_NAMES[split]} mean · epoch %{{x}}: %{{y:.3g}}<extra></extra>"), row=1, col=col)
    epochs = history["epoch"].to_numpy()
    figure.update_xaxes(title_text="epoch", tickformat="d", dtick=1 if epochs.max() - epochs.min() <= 12 else None,
                        range=[epochs.min() - 0.3, epochs.max() + 0.3])
    figure.update_yaxes(title_text="loss (per image, log)", type="log", col=1)
    figure.update_yaxes(title_text="macro-F1 (%)", range=[0, 102], col=2)
    return legend_above_subplots(base_layout(figure, title=title, height=height))


def correlation_heatmap(correlation: pd.DataFrame, *, title: str | None = None, height: int = 520) -> go.Figure:
    """Pearson R of each descriptor (rows) with each principal component (columns), zero at white.

    ``correlation`` is the long table of ``latent.analyse`` (descriptor, pc, r, ci_low, ci_high, p_value,
    q_value). Cells with q < 0.05 (Benjamini-Hochberg) are marked with an asterisk.
    """
    descriptors = list(dict.fromkeys(correlation["descriptor"]))
    pcs = list(dict.fromkeys(correlation["pc"]))
    wide = {key: correlation.pivot(index="descriptor", columns="pc", values=key).loc[descriptors, pcs]
            for key in ("r", "ci_low", "ci_high", "p_value", "q_value") if key in correlation.columns}
    r = wide["r"].to_numpy(dtype=float)
    q = wide["q_value"].to_numpy(dtype=float) if "q_value" in wide else np.ones_like(r)
    text = [[f"{v:+.2f}" + ("*" if qq < 0.05 else "") for v, qq in zip(row, qrow, strict=True)]
            for row, qrow in zip(r, q, strict=True)]
    extra = np.dstack([wide[k].to_numpy(dtype=float) if k in wide else np.full_like(r, np.nan)
                       for k in ("ci_low", "ci_high", "p_value", "q_value")])
    figure = go.Figure(go.Heatmap(
        z=r, x=pcs, y=[readable(d) for d in descriptors], zmin=-1, zmax=1, zmid=0, colorscale=DIVERGING_SCALE,
        text=text, texttemplate="%{text}", textfont=dict(size=11), customdata=extra, xgap=1, ygap=1,
        colorbar=dict(title=dict(text="Pearson R", side="right"), thickness=12),
        hovertemplate="%{y} × %{x}: R = %{z:.3f}<br>95 % CI [%{customdata[0]:.2f}, %{customdata[1]:.2f}]"
                      "<br>p = %{customdata[2]:.2g}, q = %{customdata[3]:.2g}<extra></extra>"))
    figure.update_xaxes(title_text="principal component of the latent features", side="bottom")
    figure.update_yaxes(title_text=None, autorange="reversed")
    base_layout(figure, title=title, height=height)
    figure.update_layout(margin=dict(l=130, r=20, t=50 if title else 20, b=60))
    return figure


def cosine_heatmap(table: pd.DataFrame, *, x_title: str, title: str | None = None, height: int = 520) -> go.Figure:
    """Cosine similarity heatmap of a wide table (``descriptor`` + one column per PC or per descriptor)."""
    descriptors = [str(d) for d in table["descriptor"]]
    columns = [c for c in table.columns if c != "descriptor"]
    values = table[columns].to_numpy(dtype=float)
    figure = go.Figure(go.Heatmap(
        z=values, x=[readable(c) for c in columns], y=[readable(d) for d in descriptors], zmin=-1, zmax=1, zmid=0,
        colorscale=DIVERGING_SCALE, text=[[f"{v:+.2f}" for v in row] for row in values], texttemplate="%{text}",
        textfont=dict(size=10), xgap=1, ygap=1,
        colorbar=dict(title=dict(text="cosine similarity", side="right"), thickness=12),
        hovertemplate="%{y} · %{x}: cosine %{z:.3f}<extra></extra>"))
    figure.update_xaxes(title_text=x_title, side="bottom", tickangle=-40 if len(columns) > 10 else 0)
    figure.update_yaxes(title_text=None, autorange="reversed")
    base_layout(figure, title=title, height=height)
    figure.update_layout(margin=dict(l=130, r=20, t=50 if title else 20, b=90 if len(columns) > 10 else 60))
    return figure


def descriptor_scatter_figure(points: pd.DataFrame, *, x: str, y: str, descriptor: str, label: str,
                              explained: dict | None = None, title: str | None = None,
                              height: int = 460) -> go.Figure:
    """Two principal components of every image coloured by one physical descriptor (paper Figure 7).

    ``points`` holds ``image``, ``material``, the PC columns and the descriptor's raw values; ``label`` names the
    descriptor with its unit (the colour bar's title). Images without a value are grey. ``customdata`` is the image
    id, for clicks.
    """
    values = points[descriptor].to_numpy(dtype=float)
    has = np.isfinite(values)
    figure = go.Figure()
    if (~has).any():
        rest = points[~has]
        figure.add_trace(go.Scattergl(x=rest[x], y=rest[y], mode="markers", name="no value",
                                      marker=dict(size=6, color=MISSING_COLOUR), customdata=rest["image"],
                                      hovertemplate="%{customdata}: no value<extra></extra>"))
    shown = points[has]
    materials = shown["material"].astype(str) if "material" in shown else pd.Series("", index=shown.index)
    figure.add_trace(go.Scattergl(
        x=shown[x], y=shown[y], mode="markers", name=label, showlegend=False, customdata=shown["image"],
        text=materials,
        marker=dict(size=7, color=values[has], colorscale=CONTINUOUS_SCALE, line=dict(width=0.4, color="white"),
                    colorbar=dict(title=dict(text=label, side="right"), thickness=12)),
        hovertemplate=f"%{{customdata}} (%{{text}})<br>{readable(descriptor)} = %{{marker.color:.4g}}"
                      "<extra></extra>"))
    figure.update_xaxes(title_text=axis_title(x, explained), zeroline=False)
    figure.update_yaxes(title_text=axis_title(y, explained), zeroline=False)
    base_layout(figure, title=title, height=height)
    figure.update_layout(showlegend=bool((~has).any()))
    return figure


def sequential_figure(results: pd.DataFrame, *, split: str = "test", n_classes=None, volumes=None,
                      height: int | None = None, mode_titles: dict | None = None) -> go.Figure:
    """Macro-F1 (%, mean ± std over folds) against the new class's training volume, ImageNet against Sequential
    starting weights, one panel per task (rows) and class count (columns): paper Figure 4.

    ``results`` is ``sequential/results.csv``; ``volumes`` the x order (default: numbers ascending, then full);
    ``mode_titles`` the legend names of the arms (:func:`tmdafm_core.results.mode_titles`; default ImageNet and
    Sequential).
    """
    from plotly.subplots import make_subplots

    part = results[results["split"].astype(str) == split]
    if part.empty:
        raise ValueError(f"sequential results have no rows for split {split!r}")
    tasks = [t for t in ("mtc", "mtl") if t in set(part["task"])] or sorted(set(part["task"]))
    counts = sorted(set(int(n) for n in part["n_classes"]))
    if n_classes is None:
        n_classes = [n for n in counts if n >= 3] or counts  # at 2 classes both modes are the same run
    volumes = volumes or sorted(set(part["volume"].astype(str)),
                                key=lambda v: (not v.isdigit(), int(v) if v.isdigit() else 0))
    titles = [f"{t.upper().replace('MT', 'Mt')} · {n} classes" for t in tasks for n in n_classes]
    figure = make_subplots(rows=len(tasks), cols=len(n_classes), subplot_titles=titles, shared_yaxes=True,
                           shared_xaxes=True, vertical_spacing=0.14, horizontal_spacing=0.04)
    for row, task in enumerate(tasks, start=1):
        for col, n in enumerate(n_classes, start=1):
            cell = part[(part["task"] == task) & (part["n_classes"].astype(int) == n)]
            for mode, style in MODE_STYLES.items():
                style = {**style, "name": (mode_titles or {}).get(mode, style["name"])}
                rows = cell[cell["mode"] == mode].set_index(cell[cell["mode"] == mode]["volume"].astype(str))
                rows = rows.reindex([v for v in volumes if v in rows.index])
                if rows.empty:
                    continue
                new = rows["new_class"].iloc[0] if "new_class" in rows else ""
                images = rows["new_class_train_images"] if "new_class_train_images" in rows \
                    else pd.Series(np.nan, index=rows.index)
                figure.add_trace(go.Scatter(
                    x=list(rows.index), y=100 * rows["f1_mean"],
                    error_y=dict(type="data", array=100 * rows["f1_std"].fillna(0), thickness=1.2, width=4),
                    mode="lines+markers", name=style["name"], legendgroup=mode,
                    showlegend=row == 1 and col == 1,
                    line=dict(color=style["color"], dash=style["dash"], width=2),
                    marker=dict(symbol=style["symbol"], size=8, color=style["color"]),
                    customdata=np.column_stack([images.to_numpy(dtype=float), [new] * len(rows)]),
                    hovertemplate=(f"{style['name']} · volume %{{x}} (%{{customdata[0]:.0f}} training images of "
                                   "%{customdata[1]})<br>macro-F1 %{y:.1f} ± %{error_y.array:.1f} %"
                                   "<extra></extra>")), row=row, col=col)
    figure.update_xaxes(type="category", categoryorder="array", categoryarray=list(volumes))
    figure.update_xaxes(title_text="training images of the new class", row=len(tasks))
    figure.update_yaxes(range=[0, 105])
    for row in range(1, len(tasks) + 1):
        figure.update_yaxes(title_text=f"{SPLIT_NAMES.get(split, split)} macro-F1 (%)", row=row, col=1)
    return legend_above_subplots(base_layout(figure, height=height or 300 * len(tasks) + 80))
