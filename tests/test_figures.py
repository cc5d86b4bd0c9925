"""Figure builders: the material palette and the class-balance chart."""

from __future__ import annotations

import pandas as pd
import pytest

from tmdafm_core import figures


def test_paper_materials_keep_their_colours_in_any_order():
    forward = figures.material_colours(["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"])
    backward = figures.material_colours(["Mo-WSe2", "MoSe2", "WSe2", "WS2", "MoS2"])
    assert forward == backward
    assert len(set(forward.values())) == 5
    assert set(forward.values()) <= set(figures.OKABE_ITO)
    assert figures.material_colours(["WS2"]) == {"WS2": forward["WS2"]}


def test_other_materials_get_the_remaining_colours():
    colours = figures.material_colours(["MoS2", "NbSe2", "ReS2", "MoS2"])
    assert list(colours) == ["MoS2", "NbSe2", "ReS2"]
    assert len(set(colours.values())) == 3
    assert colours["NbSe2"] == figures.OKABE_ITO[5]


def _table():
    return pd.DataFrame({"train_mean": [343.2, 131.2, 737.6], "val_mean": [85.8, 32.8, 184.4],
                         "test": [47, 18, 104]}, index=["MoS2", "WS2", "total"])


def test_split_counts_figure_stacks_the_partitions_per_material():
    figure = figures.split_counts_figure(_table())
    bars = [t for t in figure.data if t.showlegend is False]
    assert [t.name for t in bars] == ["train / fold", "val / fold", "test"]
    stacked = [sum(t.y[i] for t in bars) for i in range(2)]
    assert stacked == pytest.approx([343.2 + 85.8 + 47, 131.2 + 32.8 + 18])
    assert list(bars[0].x) == ["MoS2", "WS2"]  # the total row is not a material
    assert list(bars[0].marker.color) == [figures.material_colours(["MoS2", "WS2"])[m] for m in ("MoS2", "WS2")]
    assert figure.layout.barmode == "stack"
    assert figure.layout.xaxis.title.text == "material"
    assert figure.layout.yaxis.title.text == "images (count)"


def test_split_counts_figure_needs_a_split_table():
    with pytest.raises(ValueError, match="split_table"):
        figures.split_counts_figure(pd.DataFrame({"train": [1]}, index=["MoS2"]))


def test_latent_points_carry_row_numbers_as_plain_json_list():
    # dcc.Graph copies a point's customdata into hover/click/selection events only when it is a plain JSON list.
    import json

    import pandas as pd

    from tmdafm_core.figures import colour_spec, latent_scatter_figure

    points = pd.DataFrame({"PC1": [0.0, 1.0, 2.0], "PC2": [1.0, 0.0, 1.0], "material": ["MoS2", "WS2", "MoS2"]})
    figure = latent_scatter_figure(points, x="PC1", y="PC2", colour=colour_spec(points["material"], kind="category"))
    assert json.loads(figure.to_json())["data"][0]["customdata"] == [0, 1, 2]
