"""Figure export: ZIP contents with and without a browser, the data tables, and the page-side callback."""

from __future__ import annotations

import base64
import io
import zipfile

import pandas as pd
import plotly.graph_objects as go
import pytest

from tmdafm_core import export

NEEDS_BROWSER = pytest.mark.skipif(export.find_browser() is None,
                                   reason="static export needs chromium (Debian: apt-get install chromium)")


def _figure() -> go.Figure:
    figure = go.Figure(go.Heatmap(z=[[10.0, 5.0], [0.0, 85.0]], x=["MoS2", "WS2"], y=["MoS2", "WS2"]))
    figure.add_trace(go.Scatter(x=[1, 2], y=[3, 4], name="line", error_y=dict(array=[0.1, 0.2])))
    figure.update_layout(title="Confusion (%)", width=500, height=400)
    return figure


def _archive(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


@pytest.fixture(scope="module")
def exported():
    """One real export (kaleido draws PNG, SVG and PDF in one browser session, ~3 s)."""
    if export.find_browser() is None:
        pytest.skip("static export needs chromium (Debian: apt-get install chromium)")
    data = pd.DataFrame({"true": ["MoS2", "WS2"], "MoS2": [10.0, 0.0], "WS2": [5.0, 85.0]})
    return export.export_zip(_figure(), "confusion mtc", data=data)


@NEEDS_BROWSER
def test_zip_holds_html_static_images_and_csv(exported):
    files = _archive(exported.content)
    assert exported.filename == "confusion_mtc.zip" and exported.notes == []
    assert set(files) == {"confusion_mtc.html", "confusion_mtc.png", "confusion_mtc.svg", "confusion_mtc.pdf",
                          "confusion_mtc_data.csv", "confusion_mtc_traces.csv", "README.txt"}
    assert all(files[name] for name in files)
    for fmt in ("png", "pdf"):
        assert files[f"confusion_mtc.{fmt}"].startswith(export.MAGIC[fmt])
    assert export.MAGIC["svg"] in files["confusion_mtc.svg"][:200]
    assert b"<title>Confusion (%)</title>" in files["confusion_mtc.html"]


@NEEDS_BROWSER
def test_png_is_at_print_scale(exported):
    from PIL import Image

    image = Image.open(io.BytesIO(_archive(exported.content)["confusion_mtc.png"]))
    assert image.size == (500 * export.PRINT_SCALE, 400 * export.PRINT_SCALE)


def test_html_works_offline():
    html = export.figure_html(_figure())
    assert "cdn.plot.ly/plotly" not in html and "<script src=\"http" not in html
    assert len(html) > 1_000_000  # plotly.js inlined


def test_without_a_browser_the_zip_says_so(monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    result = export.export_zip(_figure(), "scores", data=pd.DataFrame({"a": [1]}))
    files = _archive(result.content)
    assert set(files) == {"scores.html", "scores_data.csv", "scores_traces.csv", "README.txt"}
    readme = files["README.txt"].decode()
    assert "Static images (PNG, SVG, PDF) are not included: no Chromium browser found" in readme
    assert "apt-get install chromium" in readme
    assert result.notes and "no Chromium browser" in result.notes[0]


def test_static_images_without_a_browser_raise(monkeypatch):
    monkeypatch.setattr(export, "find_browser", lambda: None)
    with pytest.raises(export.StaticExportUnavailable, match="no Chromium browser found"):
        export.static_images(_figure(), ["png"])


def test_browser_path_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "nowhere"))
    assert export.find_browser() is None
    fake = tmp_path / "chromium"
    fake.write_text("")
    monkeypatch.setenv("BROWSER_PATH", str(fake))
    assert export.find_browser() == str(fake)


def test_static_images_refuse_unknown_formats():
    with pytest.raises(ValueError, match="unsupported image format"):
        export.static_images(_figure(), ["eps"])


def test_static_images_refuse_a_bad_scale():
    with pytest.raises(ValueError, match="scale must be positive"):
        export.static_images(_figure(), ["png"], scale=0)


def test_safe_name():
    assert export.safe_name("PC1 vs PC2 / grain") == "PC1_vs_PC2_grain"
    with pytest.raises(ValueError, match="no letters or digits"):
        export.safe_name(" / ")


@pytest.mark.parametrize("as_sent", [False, True])
def test_figure_table_lists_every_cell_and_point(as_sent):
    import json

    import numpy as np
    import plotly.io

    figure = _figure()
    if as_sent:  # the browser sends numpy data back as typed arrays (base64 with dtype and shape)
        figure = go.Figure(go.Heatmap(z=np.array([[10.0, 5.0], [0.0, 85.0]]), x=["MoS2", "WS2"], y=["MoS2", "WS2"]))
        figure.add_trace(go.Scatter(x=[1, 2], y=[3, 4], name="line", error_y=dict(array=np.array([0.1, 0.2]))))
        figure = json.loads(plotly.io.to_json(figure))
        assert "bdata" in figure["data"][0]["z"]
    table = export.figure_table(figure)
    cells = table[table["trace"] == "trace 0"]
    assert len(cells) == 4 and cells.iloc[3][["x", "y", "z"]].tolist() == ["WS2", "WS2", 85.0]
    line = table[table["trace"] == "line"]
    assert line["y"].tolist() == [3, 4] and line["error_y"].tolist() == [0.1, 0.2]


def test_selection_table_keeps_order_and_joins_what_the_store_knows():
    manifest = pd.DataFrame({"image": ["a.tif", "b.tif"], "material": ["MoS2", "WS2"], "split": ["train", "test"],
                             "sample_id": ["s1", "s2"], "path": ["/x/a.tif", "/x/b.tif"]})
    features = pd.DataFrame({"image": ["a.tif", "b.tif"], "grain_size": [10.0, 20.0]})
    predictions = pd.DataFrame({"image": ["b.tif"], "predicted": ["MoS2"], "correct": [False]})
    table = export.selection_table(["b.tif", "a.tif", "zzz.tif"], manifest=manifest, features=features,
                                   predictions=predictions)
    assert table["image"].tolist() == ["b.tif", "a.tif", "zzz.tif"]
    assert table.loc[0, "predicted"] == "MoS2" and table.loc[1, "grain_size"] == 10.0
    assert "path" not in table.columns and pd.isna(table.loc[2, "material"])


def test_export_callback_returns_a_zip_download(monkeypatch):
    from pages import _export

    monkeypatch.setattr(export, "find_browser", lambda: None)
    config = _export.graph_config("tmdafm confusion mtc")
    data = _export.table_data(pd.DataFrame({"x": [1, 2], "y": [None, 3.5]}))
    download, status = _export.export_figure(1, _figure().to_dict(), config, data, fallback="figure")
    assert download["filename"] == "tmdafm_confusion_mtc.zip" and download["base64"]
    files = _archive(base64.b64decode(download["content"]))
    assert pd.read_csv(io.BytesIO(files["tmdafm_confusion_mtc_data.csv"]))["y"].tolist()[1] == 3.5
    assert "HTML and CSV only" in str(status)
    assert _export.export_figure(0, _figure().to_dict(), config, data, fallback="figure")[0] is not None  # no_update


def test_graph_config_names_the_png_and_sets_print_scale():
    from pages import _export

    config = _export.graph_config("tmdafm_scores")
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "tmdafm_scores",
                                              "scale": export.PRINT_SCALE}
    assert config["displaylogo"] is False


def test_export_never_renders_sources_the_client_named_and_escapes_the_title():
    import plotly.graph_objects as go

    from tmdafm_core.export import figure_html, without_external_sources

    figure = go.Figure(go.Scatter(x=[1], y=[1]))
    figure.add_layout_image(source="file:///etc/passwd", x=0, y=0)
    figure.add_layout_image(source="http://169.254.169.254/latest/meta-data", x=0, y=0)
    figure.add_layout_image(source="data:image/png;base64,iVBORw0KGgo=", x=0, y=0)
    cleaned = without_external_sources(figure)
    assert [image.source for image in cleaned.layout.images] == ["data:image/png;base64,iVBORw0KGgo="]
    page = figure_html(figure, title="</title><script>alert(1)</script>")
    assert "<script>alert(1)</script>" not in page.split("</title>", 1)[0] + "</title>"
    assert "&lt;/title&gt;&lt;script&gt;" in page
