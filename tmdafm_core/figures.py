"""Plotly figure builders shared by the app and the CLI's export: data in, ``go.Figure`` out.

One palette for materials everywhere (:func:`material_colours`): Okabe & Ito's colour-blind-safe set, in a fixed
order for the paper's materials so a class keeps its colour across pages and figures.
"""

from __future__ import annotations

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
