"""The shared selection, the latent view's points, and the latent page's callbacks as plain functions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tmdafm_core import figures, pipeline, selection
from tmdafm_core.features import FEATURE_COLUMNS
from tmdafm_core.layout import StoreLayout

TINY = pipeline.Profile("tiny", n=40, size=32, n_folds=2)


def write_latent(cache, manifest, *, folder="mtc", predictions=True, seed=0):
    """A latent folder as the precompute writes it (random coordinates: the page only draws them)."""
    rng = np.random.default_rng(seed)
    out = cache / "latent" / folder
    out.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"image": manifest["image"], "sample_id": manifest["sample_id"],
                          "label": manifest["material"]})
    for i in range(10):
        frame[f"PC{i + 1}"] = rng.normal(size=len(frame))
    frame["UMAP1"], frame["UMAP2"] = rng.normal(size=(2, len(frame)))
    frame.to_csv(out / "projection.csv", index=False)
    ratio = np.linspace(0.3, 0.01, 10)
    pd.DataFrame({"component": [f"PC{i + 1}" for i in range(10)], "ratio": ratio,
                  "cumulative": ratio.cumsum()}).to_csv(out / "explained_variance.csv", index=False)
    if predictions:
        predicted = manifest["material"].to_numpy().copy()
        predicted[::3] = "MoS2"
        novelty = np.linspace(0.2, 1.5, len(manifest))
        pd.DataFrame({"image": manifest["image"], "material": manifest["material"], "split": manifest["split"],
                      "predicted": predicted, "correct": predicted == manifest["material"].to_numpy(),
                      "novelty": novelty, "unfamiliar": novelty > 1}).to_csv(out / "predictions.csv", index=False)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cache = tmp_path_factory.mktemp("store")
    pipeline.complete_store(cache, profile=TINY)
    manifest = pipeline.load_manifest(cache)
    rng = np.random.default_rng(1)
    features = pd.DataFrame(rng.random((len(manifest), len(FEATURE_COLUMNS))), columns=list(FEATURE_COLUMNS))
    features.insert(0, "image", manifest["image"])
    features.to_csv(cache / "features.csv", index=False)
    write_latent(cache, manifest)
    write_latent(cache, manifest, folder="sequential/mtc/imagenet/2cls", predictions=False)
    write_latent(cache, manifest, folder="sequential/mtc/imagenet/3cls", predictions=False)
    return cache


@pytest.fixture(scope="module")
def latent_page():
    import app as app_module

    app_module.app.server.test_client().get("/")  # Dash imports the pages on the first request
    from pages import latent

    return latent


def test_make_selection_keeps_order_and_drops_duplicates():
    chosen = selection.make_selection(["b", "a", "b"], "lasso")
    assert chosen == {"images": ["b", "a"], "source": "lasso"}
    assert selection.selected_images(chosen) == ["b", "a"]


def test_make_selection_needs_a_source():
    with pytest.raises(ValueError, match="source"):
        selection.make_selection(["a"], "")


def test_make_selection_refuses_huge_selections():
    with pytest.raises(ValueError, match="select fewer"):
        selection.make_selection(map(str, range(selection.MAX_SELECTION + 1)), "lasso")


@pytest.mark.parametrize("document", [None, {}, {"images": "a"}, []])
def test_malformed_selection_reads_as_empty(document):
    assert selection.selected_images(document) == []


def test_points_join_manifest_projection_predictions_and_descriptors(store):
    points = selection.load_points(store, "mtc")
    manifest = pipeline.load_manifest(store)
    assert list(points["image"]) == list(manifest["image"])
    assert list(points["material"]) == list(manifest["material"])
    assert points.attrs["coords"]["pca"] == [f"PC{i + 1}" for i in range(10)]
    assert points.attrs["coords"]["umap2"] == ["UMAP1", "UMAP2"]
    assert points.attrs["descriptors"] == list(FEATURE_COLUMNS)
    assert points.attrs["explained"]["PC1"] == pytest.approx(0.3)
    assert set(points["correct"].dropna()) <= {"correct", "incorrect"}
    assert points["novelty"].iloc[-1] == pytest.approx(1.5) and points["unfamiliar"].iloc[-1] == "unfamiliar"
    assert points["unfamiliar"].iloc[0] == "familiar"
    mos2 = points[points["material"] == "MoS2"].iloc[0]
    assert (mos2["has_Mo"], mos2["has_W"], mos2["has_S"], mos2["has_Se"]) == (True, False, True, False)
    assert points.attrs["notes"] == []


def test_points_without_predictions_say_so(store):
    points = selection.load_points(store, "seq/mtc/imagenet/2")
    assert points["predicted"].isna().all()
    assert any("predictions.csv" in note for note in points.attrs["notes"])


def test_models_list_runs_then_sequential_stages(store):
    keys = [m.key for m in selection.latent_models(store)]
    assert keys == ["mtc", "seq/mtc/imagenet/2", "seq/mtc/imagenet/3"]
    with pytest.raises(FileNotFoundError, match="tmdafm precompute"):
        selection.find_model(store, "mtl")


def test_descriptor_summary_matches_numpy(store):
    features = selection.read_features(store)
    chosen = list(features["image"][:7])
    summary = selection.descriptor_summary(features, chosen + ["not-an-image"]).set_index("descriptor")
    values = features["grain_density"].to_numpy()[:7]
    row = summary.loc["grain_density"]
    assert row["n"] == 7 and row["unit"] == "1/µm²"
    assert row["median"] == pytest.approx(np.median(values))
    assert row["std"] == pytest.approx(values.std(ddof=1))
    assert row["all_median"] == pytest.approx(features["grain_density"].median())
    every = np.sort(features["grain_density"].to_numpy())
    assert row["percentile"] == pytest.approx(100 * np.mean(every < np.median(values))
                                              + 50 * np.mean(every == np.median(values)))


def test_percentile_of_counts_ties_half():
    assert selection.percentile_of(np.array([1.0, 2.0, 2.0, 3.0]), 2.0) == 50.0
    assert np.isnan(selection.percentile_of(np.array([]), 1.0))


def test_gallery_and_atlas(store):
    points = selection.load_points(store, "mtc")
    items = selection.gallery(store, points["image"][:5], points=points, limit=3)
    assert [item["image"] for item in items] == list(points["image"][:3])
    assert all(item["uri"].startswith("data:image/png;base64,") for item in items)
    assert items[0]["material"] == points["material"].iat[0]
    atlas_path = StoreLayout(store).atlas
    atlas_path.write_text(json.dumps({points["image"].iat[0]: "data:image/png;base64,AAAA"}))
    try:
        assert selection.thumbnail_atlas(store, points["image"][:2]) == {points["image"].iat[0]:
                                                                         "data:image/png;base64,AAAA"}
    finally:
        atlas_path.unlink()


def test_missing_store_names_what_and_how(tmp_path):
    missing = selection.missing_for_latent(tmp_path)
    assert [what.split(" (")[0] for what, _ in missing] == ["data set", "MtC latent space", "MtL latent space"]
    assert all(command.startswith("tmdafm precompute --out ") for _, command in missing)


# --- the page's callbacks as plain functions ----------------------------------------------------------------------

def _state(**changes):
    state = dict(model="mtc", kind="pca", dims=2, x="PC1", y="PC2", z="PC3", colour_by="material", materials=[],
                 splits=[], chosen=None)
    state.update(changes)
    return state


def test_first_draw_builds_the_figure_and_sends_hover_metadata(store, latent_page):
    figure, meta = latent_page.figure_update(store, None, **_state())
    assert figure.data[0].type == "scattergl" and len(figure.data[0].x) == 40
    assert figure.layout.xaxis.title.text == "PC1 score (30.0 % of variance)"
    assert meta["image"] == list(selection.load_points(store, "mtc")["image"])
    names = [t.name for t in figure.data[2:] if t.visible]
    assert names == ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"]


def test_colour_filter_and_selection_are_patches(store, latent_page):
    from dash import Patch, no_update

    patch, meta = latent_page.figure_update(store, "latent-colour", **_state(colour_by="descriptor:grain_size"))
    assert isinstance(patch, Patch) and meta is no_update
    operations = {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}
    assert operations[("data", 0, "marker", "showscale")] is True
    assert operations[("data", 0, "marker", "colorbar")]["title"]["text"] == "grain size (nm)"
    assert {"novelty", "unfamiliar"} <= {o["value"] for o in latent_page.colour_options(
        selection.load_points(store, "mtc"))}
    patch, _ = latent_page.figure_update(store, "latent-colour", **_state(colour_by="unfamiliar"))
    operations = {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}
    assert [operations[("data", i, "name")] for i in (2, 3)] == ["familiar", "unfamiliar"]
    patch, _ = latent_page.figure_update(store, "latent-materials", **_state(materials=["WS2"]))
    ops = {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}
    opacity = ops[("data", 0, "marker", "opacity")]
    points = selection.load_points(store, "mtc")
    assert np.array_equal(np.array(opacity) == latent_page.SHOWN, (points["material"] == "WS2").to_numpy())
    chosen = selection.make_selection(points["image"][[3, 5]], "test")
    patch, _ = latent_page.figure_update(store, "selection", **_state(chosen=chosen))
    ops = {tuple(op["location"]): op["params"]["value"] for op in patch.to_plotly_json()["operations"]}
    assert ops[("data", 1, "x")] == pytest.approx(points["PC1"].to_numpy()[[3, 5]].tolist())


def test_lasso_sets_the_shared_selection_without_filtered_points(store, latent_page):
    points = latent_page.points_for(store, "mtc")
    event = {"points": [{"curveNumber": 0, "customdata": i} for i in (0, 1, 2)] + [{"curveNumber": 1}],
             "lassoPoints": {"x": [0], "y": [0]}}
    chosen = latent_page.selection_from_event(points, event, materials=[], splits=[], model_title="MtC",
                                              kind="pca")
    assert chosen == {"images": list(points["image"][:3]), "source": "lasso in the latent view (MtC, PCA)"}
    only = points["material"].iat[0]
    chosen = latent_page.selection_from_event(points, event, materials=[only], splits=[], model_title="MtC",
                                              kind="pca")
    assert set(chosen["images"]) == set(points["image"][:3][points["material"][:3] == only])
    assert latent_page.selection_from_event(points, None, materials=[], splits=[], model_title="MtC",
                                            kind="pca") is None


def test_umap_3d_and_stage_panels(store, latent_page):
    points = latent_page.points_for(store, "mtc")
    assert latent_page.axes_for(points, "umap", 2, "PC1", "PC2", "PC3") == ["UMAP1", "UMAP2"]
    figure, _ = latent_page.figure_update(store, "latent-dims", **_state(dims=3))
    assert figure.data[0].type == "scatter3d" and figure.layout.scene.zaxis.title.text.startswith("PC3")
    panels = latent_page.stages_view(store, "seq/mtc/imagenet/3", "pca", "PC1", "PC2")
    assert len(panels) == 2 and panels[1].figure.layout.annotations[0].text == "2 classes"


def test_selection_panel_shows_gallery_and_summary(store, latent_page):
    points = latent_page.points_for(store, "mtc")
    children = latent_page.selection_panel(store, selection.make_selection(points["image"][:4], "test"), "mtc")
    ids = {getattr(child, "id", None) for child in children}
    assert {"selection-source", "selection-gallery", "latent-selection-summary"} <= ids
    assert "Draw a lasso" in latent_page.selection_panel(store, None, "mtc")[0].children


def test_ten_thousand_points_build_and_a_colour_change_is_a_small_patch(latent_page):
    import plotly.io as pio

    rng = np.random.default_rng(0)
    n = 10_000
    points = pd.DataFrame({"image": [f"img{i}.tif" for i in range(n)], "sample_id": "s", "split": "train",
                           "material": rng.choice(["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"], n),
                           "predicted": "MoS2", "correct": "correct",
                           "PC1": rng.normal(size=n), "PC2": rng.normal(size=n),
                           "grain_size": rng.random(n)})
    points.attrs = {"coords": {"pca": ["PC1", "PC2"]}, "explained": {}, "classes": list(figures.PAPER_MATERIALS),
                    "elements": [], "descriptors": ["grain_size"], "notes": []}
    figure = latent_page.build_figure(points, kind="pca", dims=2, x="PC1", y="PC2", z=None,
                                      colour_by="material", materials=[], splits=[], chosen=None)
    full = len(pio.to_json(figure))
    patch = len(json.dumps(latent_page.colour_patch(points, "predicted").to_plotly_json()))
    assert len(figure.data[0].x) == n and patch < full / 8


@pytest.mark.parametrize("damage", [b"", b"\xff\xfe garbage \x00\x01", b"image,sample_id\nx,y\n"])
def test_a_damaged_projection_says_rebuild_instead_of_failing(store, tmp_path, latent_page, damage):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(store, cache)
    (cache / "latent" / "mtc" / "projection.csv").write_bytes(damage)
    with pytest.raises(ValueError, match=r"projection.csv: damaged .*tmdafm precompute --out"):
        selection.load_points(cache, "mtc")
    import app as app_module

    app_module.configure(app_module.app, cache)
    try:
        with app_module.app.server.app_context():
            page = latent_page.layout()
    finally:
        app_module.configure(app_module.app, None)
    text = json.dumps(page.to_plotly_json(), default=str)
    assert "could not read the store" in text and "damaged" in text
