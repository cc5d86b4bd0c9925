"""Latent analysis: every number against an independent computation (numpy, scipy, scikit-learn)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import GroupKFold, KFold, cross_val_predict

from tmdafm_core.cli import main
from tmdafm_core.embeddings import Projection, fit_projection, run_embeddings, stage_structure
from tmdafm_core.latent import (
    OUTPUT_FILES,
    TABLE5_COLUMNS,
    analyse,
    bootstrap_pearson,
    read_latent_outputs,
    write_latent_outputs,
)

from .conftest import write_tmd_afm_folder

N_IMAGES, N_DIMS, N_PCS = 60, 16, 5
NAMES = ["rms_roughness", "grain_density", "contrast", "correlation"]


def _data(seed=0, n=N_IMAGES, dims=N_DIMS):
    """Embeddings with decaying variance and descriptors tied to some of their directions."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, dims)) * np.linspace(3.0, 0.3, dims) + 5.0
    descriptors = pd.DataFrame({
        "image": [f"img{i:03d}.tif" for i in range(n)],
        "rms_roughness": 2.0 + embeddings[:, 0] + rng.normal(size=n),
        "grain_density": 1e-4 * (10.0 - embeddings[:, 1] + 0.5 * rng.normal(size=n)),
        "contrast": rng.gamma(2.0, size=n),
        "correlation": -0.5 + 0.1 * rng.normal(size=n),  # negative values: scaling must not flip signs
    })
    frame = pd.DataFrame(embeddings, columns=[f"latent{i + 1}" for i in range(dims)])
    frame.insert(0, "image", descriptors["image"])
    frame.insert(1, "sample_id", [f"s{i // 3}" for i in range(n)])
    frame.insert(2, "label", np.where(np.arange(n) % 2, "MoS2", "WS2"))
    return frame, descriptors


def _scaled(descriptors):
    values = descriptors[NAMES].to_numpy()
    return values / np.abs(values).max(axis=0)


@pytest.fixture(scope="module")
def result():
    frame, descriptors = _data()
    return analyse(frame, descriptors, n_components=N_PCS, n_boot=200, seed=3, gallery_size=5)


@pytest.fixture(scope="module")
def reference():
    frame, descriptors = _data()
    embeddings = frame.filter(like="latent").to_numpy()
    scores = PCA(n_components=N_PCS, svd_solver="full").fit_transform(embeddings)
    return embeddings, scores, _scaled(descriptors), descriptors


# --- projection -------------------------------------------------------------------------------------------------

def test_pca_scores_and_variance_match_eigendecomposition(result, reference):
    embeddings, scores, _, _ = reference
    pcs = [f"PC{i + 1}" for i in range(N_PCS)]
    np.testing.assert_allclose(result["projection"][pcs].to_numpy(), scores, atol=1e-10)
    eigenvalues = np.linalg.eigvalsh(np.cov(embeddings, rowvar=False))[::-1]
    np.testing.assert_allclose(result["explained_variance"]["ratio"], eigenvalues[:N_PCS] / eigenvalues.sum())
    np.testing.assert_allclose(result["explained_variance"]["cumulative"],
                               np.cumsum(eigenvalues[:N_PCS]) / eigenvalues.sum())
    assert list(result["projection"].columns[:3]) == ["image", "sample_id", "label"]
    assert result["projection"]["sample_id"].iloc[4] == "s1"


@pytest.mark.parametrize("solver", ["covariance_eigh", "randomized", "incremental"])
def test_scalable_pca_solvers_agree_with_full(solver, reference):
    embeddings, scores, _, _ = reference
    projection = fit_projection(embeddings, n_components=N_PCS, pca_solver=solver)
    # Principal axes are defined up to sign; compare absolute scores.
    np.testing.assert_allclose(np.abs(projection.transform(embeddings)), np.abs(scores), atol=1e-6)


def test_projection_places_new_points_like_training_points(tmp_path, reference):
    embeddings, scores, _, _ = reference
    projection = fit_projection(embeddings[:40], n_components=N_PCS)
    np.testing.assert_allclose(projection.transform(embeddings[:40]),
                               PCA(n_components=N_PCS).fit(embeddings[:40]).transform(embeddings[:40]), atol=1e-10)
    new = embeddings[40:]
    loaded = Projection.load(projection.save(tmp_path / "p.npz"))
    np.testing.assert_array_equal(loaded.transform(new), projection.transform(new))
    np.testing.assert_array_equal(loaded.explained_variance_ratio, projection.explained_variance_ratio)
    assert list(loaded.project(new[:3]).columns) == [f"PC{i + 1}" for i in range(N_PCS)]


def test_umap_layout_transform_and_pickle_free_reload(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=6.0, size=(3, 8))
    train = (centres[np.arange(120) % 3] + rng.normal(size=(120, 8))).astype(np.float32)
    new = (centres[np.arange(9) % 3] + rng.normal(size=(9, 8))).astype(np.float32)
    projection = fit_projection(train, n_components=3, umap=True, umap_components=(2, 3), umap_epochs=60, seed=5)
    assert projection.umap_embeddings[2].shape == (120, 2) and projection.umap_embeddings[3].shape == (120, 3)
    # The training set itself maps to its stored layout.
    np.testing.assert_array_equal(projection.transform_umap(train), projection.umap_embeddings[2])
    placed = projection.transform_umap(new)
    path = projection.save(tmp_path / "projection.npz")
    with np.load(path, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    loaded = Projection.load(path)
    # A fresh process places new points exactly where the fitting process did.
    np.testing.assert_allclose(loaded.transform_umap(new), placed, atol=1e-5)
    np.testing.assert_array_equal(loaded.transform_umap(train), projection.umap_embeddings[2])
    # New points land in their own cluster: their nearest training neighbour in the layout shares their centre.
    layout = projection.umap_embeddings[2]
    nearest = np.argmin(((placed[:, None, :] - layout[None]) ** 2).sum(-1), axis=1)
    assert (nearest % 3 == np.arange(9) % 3).all()
    # A training point passed among new ones is re-placed near (not exactly at) its stored coordinates.
    again = loaded.transform_umap(np.vstack([new[:2], train[:1]]))[2]
    spread = np.linalg.norm(layout - layout.mean(axis=0), axis=1).mean()
    assert np.linalg.norm(again - layout[0]) < 0.5 * spread
    table = loaded.project(new)
    assert list(table.columns[3:]) == ["UMAP1", "UMAP2", "UMAP3D_1", "UMAP3D_2", "UMAP3D_3"]


# --- correlation tables -----------------------------------------------------------------------------------------

def test_correlation_matches_corrcoef_and_pearsonr(result, reference):
    _, scores, y, _ = reference
    corr = result["correlation"]
    assert corr["descriptor"].tolist()[:N_PCS] == [NAMES[0]] * N_PCS
    r = corr["r"].to_numpy().reshape(len(NAMES), N_PCS)
    full = np.corrcoef(y.T, scores.T)[: len(NAMES), len(NAMES):]
    np.testing.assert_allclose(r, full, atol=1e-12)
    expected_p = [stats.pearsonr(y[:, i], scores[:, j]).pvalue for i in range(len(NAMES)) for j in range(N_PCS)]
    np.testing.assert_allclose(corr["p_value"], expected_p, rtol=1e-8, atol=1e-300)
    # Benjamini-Hochberg by hand.
    p = np.asarray(expected_p)
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.empty_like(p)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    np.testing.assert_allclose(corr["q_value"], q, rtol=1e-10)
    assert corr["defined"].all()


def test_table5_extremes_and_regression_match_sklearn(result, reference):
    _, scores, y, _ = reference
    table5 = result["table5"]
    assert tuple(table5.columns) == TABLE5_COLUMNS
    assert table5["descriptor"].tolist() == NAMES
    full = np.corrcoef(y.T, scores.T)[: len(NAMES), len(NAMES):]
    np.testing.assert_allclose(table5["min_r"], full.min(axis=1), atol=1e-12)
    np.testing.assert_allclose(table5["max_r"], full.max(axis=1), atol=1e-12)
    assert table5["min_pc"].tolist() == [f"PC{j + 1}" for j in full.argmin(axis=1)]
    assert table5["max_pc"].tolist() == [f"PC{j + 1}" for j in full.argmax(axis=1)]
    folds = KFold(n_splits=5, shuffle=True, random_state=3)
    for i, name in enumerate(NAMES):
        row = table5.iloc[i]
        fitted = LinearRegression().fit(scores, y[:, i])
        assert row["regression_r"] == pytest.approx(np.sqrt(fitted.score(scores, y[:, i])), abs=1e-10)
        out_of_fold = cross_val_predict(LinearRegression(), scores, y[:, i], cv=folds)
        assert row["regression_r_cv"] == pytest.approx(np.corrcoef(y[:, i], out_of_fold)[0, 1], abs=1e-10), name
    # Descriptors built from PC-dominant embedding directions correlate; the random one barely does.
    assert table5.set_index("descriptor").loc["rms_roughness", "regression_r"] > 0.7
    assert table5.set_index("descriptor").loc["grain_density", "regression_r_cv"] > 0.5
    assert (table5["status"] == "ok").all() and (table5["n_images"] == N_IMAGES).all()


def test_cross_validation_by_sample_matches_group_kfold(reference):
    frame, descriptors = _data()
    _, scores, y, _ = reference
    table5 = analyse(frame, descriptors, n_components=N_PCS, n_boot=0, cv_by_sample=True, seed=2)["table5"]
    folds = GroupKFold(n_splits=5, shuffle=True, random_state=2)
    groups = frame["sample_id"].to_numpy()
    for i in range(len(NAMES)):
        out_of_fold = cross_val_predict(LinearRegression(), scores, y[:, i], cv=folds, groups=groups)
        assert table5["regression_r_cv"].iloc[i] == pytest.approx(np.corrcoef(y[:, i], out_of_fold)[0, 1], abs=1e-10)


def test_bootstrap_equals_a_resampling_loop(reference):
    _, scores, y, _ = reference
    n_boot = 50
    boot = bootstrap_pearson(y, scores, n_boot=n_boot, seed=7, block=7 * N_IMAGES)  # several blocks
    draws = np.random.default_rng(7).integers(0, N_IMAGES, size=(n_boot, N_IMAGES))
    for b in range(n_boot):
        idx = draws[b]
        loop = np.corrcoef(y[idx].T, scores[idx].T)[: len(NAMES), len(NAMES):]
        np.testing.assert_allclose(boot[b], loop, atol=1e-9)


def test_confidence_intervals_are_bootstrap_percentiles(result, reference):
    _, scores, y, _ = reference
    boot = bootstrap_pearson(y, scores, n_boot=200, seed=3)
    low, high = np.quantile(boot, [0.025, 0.975], axis=0)
    corr = result["correlation"]
    np.testing.assert_allclose(corr["ci_low"], low.ravel(), atol=1e-12)
    np.testing.assert_allclose(corr["ci_high"], high.ravel(), atol=1e-12)
    assert (corr["ci_low"] <= corr["r"] + 0.05).all() and (corr["r"] - 0.05 <= corr["ci_high"]).all()
    table5 = result["table5"].set_index("descriptor")
    best = corr[(corr["descriptor"] == "rms_roughness") & (corr["pc"] == table5.loc["rms_roughness", "max_pc"])]
    assert table5.loc["rms_roughness", "max_r_ci_low"] == best["ci_low"].item()
    assert table5.loc["rms_roughness", "max_r_p"] == best["p_value"].item()


def test_cosine_similarities_match_plain_numpy(result, reference):
    _, scores, y, _ = reference
    cosine = result["cosine_descriptors_pcs"].set_index("descriptor")
    for i, name in enumerate(NAMES):
        for j in range(N_PCS):
            a, b = y[:, i], scores[:, j]
            assert cosine.loc[name, f"PC{j + 1}"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b),
                                                                   abs=1e-12)
    directions = np.stack([LinearRegression().fit(scores, y[:, i]).coef_ for i in range(len(NAMES))])
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    matrix = result["cosine_regression_directions"].set_index("descriptor")
    assert list(matrix.columns) == NAMES
    np.testing.assert_allclose(matrix.to_numpy(), unit @ unit.T, atol=1e-10)


def test_galleries_hold_the_percentile_tails(result, reference):
    _, _, _, descriptors = reference
    galleries = result["galleries"]
    for name in NAMES:
        raw = descriptors[name].to_numpy()
        values = pd.Series(raw, index=descriptors["image"])
        low_cut, high_cut = np.percentile(raw, [25, 75])
        low = galleries[(galleries["descriptor"] == name) & (galleries["side"] == "low")]
        high = galleries[(galleries["descriptor"] == name) & (galleries["side"] == "high")]
        assert len(low) == 5 and len(high) == 5  # capped at gallery_size
        assert low["count"].iloc[0] == (raw <= low_cut).sum() and high["count"].iloc[0] == (raw >= high_cut).sum()
        assert low["threshold"].iloc[0] == pytest.approx(low_cut)
        assert high["threshold"].iloc[0] == pytest.approx(high_cut)
        np.testing.assert_allclose(values[low["image"]].to_numpy(), low["value"])  # descriptor units, not scaled
        assert (low["value"] <= low_cut).all() and (high["value"] >= high_cut).all()
        assert low["value"].is_monotonic_increasing and high["value"].is_monotonic_decreasing
    frame, descriptors = _data()
    again = analyse(frame, descriptors, n_components=N_PCS, n_boot=0, seed=3, gallery_size=5)["galleries"]
    pd.testing.assert_frame_equal(again, galleries)


# --- joins and degenerate inputs --------------------------------------------------------------------------------

def test_descriptors_join_on_image_in_any_order_with_gaps(result):
    frame, descriptors = _data()
    shuffled = descriptors.sample(frac=1.0, random_state=0)
    partial = analyse(frame, shuffled, n_components=N_PCS, n_boot=0, seed=3)
    np.testing.assert_allclose(partial["correlation"]["r"], result["correlation"]["r"], atol=1e-12)
    missing = shuffled.iloc[5:].copy()
    missing.loc[missing.index[0], "contrast"] = np.nan
    fewer = analyse(frame, missing, n_components=N_PCS, n_boot=0, seed=3)
    assert (fewer["table5"]["n_images"] == N_IMAGES - 6).all()
    assert len(fewer["table5"].attrs["notes"]) == 2
    assert len(fewer["projection"]) == N_IMAGES


def test_constant_descriptor_is_marked_undefined_without_nan(result):
    frame, descriptors = _data()
    descriptors["status_flag"] = 1.0
    descriptors["all_missing"] = np.nan
    tables = analyse(frame, descriptors, n_components=N_PCS, n_boot=100, seed=3)
    for key, table in tables.items():
        assert not table.isna().any().any(), key
    table5 = tables["table5"].set_index("descriptor")
    for name in ("status_flag", "all_missing"):
        assert table5.loc[name, "status"] == "undefined: constant descriptor"
        assert table5.loc[name, ["min_r", "max_r", "regression_r", "regression_r_cv"]].eq(0.0).all()
        assert table5.loc[name, "min_pc"] == "none" and table5.loc[name, "max_pc"] == "none"
        assert table5.loc[name, "max_r_p"] == 1.0
    corr = tables["correlation"]
    assert not corr[corr["descriptor"] == "status_flag"]["defined"].any()
    assert not (tables["galleries"]["descriptor"] == "status_flag").any()
    # The defined descriptors are unaffected by their undefined neighbours.
    defined = corr[corr["descriptor"].isin(NAMES)]
    np.testing.assert_allclose(defined["r"], result["correlation"]["r"])
    np.testing.assert_allclose(table5.loc[NAMES, "regression_r_cv"], result["table5"]["regression_r_cv"])


def test_embeddings_of_lower_rank_than_components_mark_empty_pcs():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 3)) @ rng.normal(size=(3, 12))  # rank 3, like dead ReLU units
    descriptors = pd.DataFrame({"a": embeddings[:, 0] + rng.normal(size=30), "b": rng.random(30)})
    tables = analyse(embeddings, descriptors, n_components=6, n_boot=20)
    corr = tables["correlation"]
    assert corr.groupby("pc", sort=False)["defined"].all().tolist() == [True] * 3 + [False] * 3
    assert set(tables["table5"]["max_pc"]) <= {"PC1", "PC2", "PC3"}
    assert not corr.isna().any().any()


def test_too_few_images_for_the_components():
    with pytest.raises(ValueError, match="too few for 10 principal components"):
        fit_projection(np.random.default_rng(0).normal(size=(8, 20)))


def test_more_components_than_dimensions():
    with pytest.raises(ValueError, match="exceeds the 4 embedding dimensions"):
        fit_projection(np.ones((30, 4)), n_components=5)


def test_unknown_pca_solver():
    with pytest.raises(ValueError, match="pca_solver"):
        fit_projection(np.random.default_rng(0).normal(size=(30, 12)), pca_solver="arpack-ish")


def test_non_finite_embeddings():
    embeddings = np.random.default_rng(0).normal(size=(30, 12))
    embeddings[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        fit_projection(embeddings)


def test_new_embeddings_of_the_wrong_width():
    projection = fit_projection(np.random.default_rng(0).normal(size=(30, 12)), n_components=3)
    with pytest.raises(ValueError, match=r"shape \(n, 12\)"):
        projection.transform(np.zeros((2, 11)))


def test_umap_absent_from_a_pca_only_projection():
    projection = fit_projection(np.random.default_rng(0).normal(size=(30, 12)), n_components=3)
    with pytest.raises(ValueError, match="no 2-D UMAP"):
        projection.transform_umap(np.zeros((2, 12)))


def test_descriptors_share_no_image_with_embeddings():
    frame, descriptors = _data()
    descriptors["image"] = "other_" + descriptors["image"]
    with pytest.raises(ValueError, match="no `image` value matches"):
        analyse(frame, descriptors, n_components=N_PCS)


def test_duplicate_images_in_descriptors():
    frame, descriptors = _data()
    descriptors.loc[1, "image"] = descriptors.loc[0, "image"]
    with pytest.raises(ValueError, match="appears more than once"):
        analyse(frame, descriptors, n_components=N_PCS)


def test_descriptor_rows_without_image_must_match_in_number():
    frame, descriptors = _data()
    with pytest.raises(ValueError, match="no `image` column"):
        analyse(frame, descriptors.drop(columns="image").iloc[:-1], n_components=N_PCS)


def test_non_numeric_descriptor():
    frame, descriptors = _data()
    descriptors["note"] = "x"
    with pytest.raises(ValueError, match=r"\['note'\] are not numeric"):
        analyse(frame, descriptors, n_components=N_PCS)


def test_too_few_descriptor_images_for_the_regression():
    frame, descriptors = _data()
    with pytest.raises(ValueError, match="too few for a regression"):
        analyse(frame, descriptors.iloc[:6], n_components=N_PCS, cv_folds=2)


def test_cv_folds_out_of_range():
    frame, descriptors = _data()
    with pytest.raises(ValueError, match="cv_folds"):
        analyse(frame, descriptors, n_components=N_PCS, cv_folds=1)


def test_too_few_samples_for_cv_by_sample():
    frame, descriptors = _data()
    frame["sample_id"] = np.where(np.arange(N_IMAGES) < 30, "a", "b")
    with pytest.raises(ValueError, match="at least 5 samples"):
        analyse(frame, descriptors, n_components=N_PCS, cv_by_sample=True)


def test_confidence_level_out_of_range():
    frame, descriptors = _data()
    with pytest.raises(ValueError, match="ci must be"):
        analyse(frame, descriptors, n_components=N_PCS, ci=95)


def test_gallery_percentiles_out_of_order():
    frame, descriptors = _data()
    with pytest.raises(ValueError, match="percentiles"):
        analyse(frame, descriptors, n_components=N_PCS, percentiles=(75, 25))


def test_projection_file_that_is_not_ours(tmp_path):
    path = tmp_path / "projection.npz"
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a projection written by tmdafm"):
        Projection.load(path)


# --- files and command ------------------------------------------------------------------------------------------

def test_output_files_and_columns(tmp_path, result):
    frame, _ = _data()
    projection = fit_projection(frame, n_components=N_PCS)
    written = write_latent_outputs(tmp_path, result, projection=projection)
    assert sorted(p.name for p in written) == sorted([*OUTPUT_FILES, "projection.npz"])
    back = read_latent_outputs(tmp_path)
    assert list(back["projection"].columns) == ["image", "sample_id", "label"] + [f"PC{i + 1}" for i in range(N_PCS)]
    assert list(back["explained_variance"].columns) == ["component", "ratio", "cumulative"]
    assert tuple(back["table5"].columns) == TABLE5_COLUMNS
    assert list(back["correlation"].columns) == ["descriptor", "pc", "r", "ci_low", "ci_high", "p_value", "q_value",
                                                 "defined"]
    pd.testing.assert_frame_equal(back["table5"], result["table5"], check_dtype=False)
    galleries = json.loads((tmp_path / "galleries.json").read_text())
    assert list(galleries) == NAMES
    assert set(galleries["contrast"]) == {"status", "low", "high"}
    assert len(galleries["contrast"]["high"]["images"]) == 5
    np.testing.assert_array_equal(back["fitted_projection"].components, projection.components)


def _write_tables(folder):
    frame, descriptors = _data()
    frame.to_csv(folder / "embeddings.csv", index=False)
    descriptors.to_csv(folder / "features.csv", index=False)
    return folder / "embeddings.csv", folder / "features.csv"


def test_cli_table_path_writes_every_file(tmp_path, capsys):
    embeddings, features = _write_tables(tmp_path)
    out = tmp_path / "latent"
    assert main(["latent", str(embeddings), "--out", str(out), "--features", str(features), "--n-components", "5",
                 "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert "grain_density" in printed and "regression_r_cv" in printed
    assert {p.name for p in out.iterdir()} == {*OUTPUT_FILES, "projection.npz"}
    table5 = pd.read_csv(out / "table5.csv")
    assert table5["descriptor"].tolist() == NAMES


def test_cli_run_without_data_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["latent", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "give the DATA to embed" in capsys.readouterr().err


def test_cli_run_path_embeds_a_feature_run(tmp_path, capsys):
    import torch

    from tmdafm_core.data import read_feature_table
    from tmdafm_core.training import cross_validate

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    materials = np.repeat(["MoS2", "WS2"], 20)
    table = pd.DataFrame(rng.normal(size=(40, 12)) + (materials == "WS2")[:, None], columns=[f"f{i}" for i in
                                                                                            range(12)])
    table.insert(0, "image", [f"im{i}.tif" for i in range(40)])
    table.insert(1, "sample_id", [f"{m}_s{i // 2}" for i, m in enumerate(materials)])
    table.insert(2, "material", materials)
    table.to_csv(tmp_path / "features_in.csv", index=False)
    cross_validate(read_feature_table(tmp_path / "features_in.csv"), tmp_path / "run", folds=2, epochs=1, seed=0)
    descriptors = pd.DataFrame({"image": table["image"], "a": table["f0"], "b": rng.random(40)})
    descriptors.to_csv(tmp_path / "descriptors.csv", index=False)
    out = tmp_path / "latent"
    assert main(["latent", str(tmp_path / "run"), str(tmp_path / "features_in.csv"), "--out", str(out),
                 "--features", str(tmp_path / "descriptors.csv"), "--n-boot", "20", "--fold", "1"]) == 0
    embedded = pd.read_parquet(out / "embeddings.parquet")
    assert embedded.shape == (40, 3 + 100) and embedded["label"].iloc[0] == "MoS2"
    direct = run_embeddings(tmp_path / "run", tmp_path / "features_in.csv", fold=1)
    np.testing.assert_allclose(embedded.filter(like="latent").to_numpy(), direct.filter(like="latent").to_numpy())
    assert direct.attrs["fold"] == 1
    projection = pd.read_csv(out / "projection.csv")
    assert len(projection) == 40 and "PC10" in projection


def test_run_embeddings_of_an_image_run_follow_the_manifest(tmp_path):
    import torch

    from tmdafm_core.data import read_dataset
    from tmdafm_core.training import cross_validate, load_run, predict

    torch.set_num_threads(1)
    tmd_afm_folder = write_tmd_afm_folder(tmp_path / "tmd", materials=("MoS2", "WS2"), samples=4, per_sample=2,
                                          size=32)
    manifest = read_dataset(tmd_afm_folder)
    cross_validate(manifest, tmp_path / "run", arch="resnet18", weights="none", image_size=32, folds=2, epochs=1,
                   batch_size=16, seed=0)
    table = run_embeddings(tmp_path / "run", tmd_afm_folder)
    assert table.shape == (len(manifest), 3 + 100)
    assert table["image"].tolist() == manifest["image"].tolist()
    assert table["sample_id"].tolist() == manifest["sample_id"].tolist()
    assert table["label"].tolist() == manifest["material"].tolist()
    # The same activations as the model's own prediction path for two images.
    direct = predict(load_run(tmp_path / "run", table.attrs["fold"]), manifest["path"].iloc[[0, 7]].tolist())
    np.testing.assert_allclose(table.filter(like="latent").to_numpy()[[0, 7]], direct.embeddings, atol=1e-5)


def test_stage_structure_silhouette_and_centroid_shift_by_hand():
    # Two tight classes 10 apart: silhouette near 1; the next stage moves class A by 2 and adds a class C.
    first = pd.DataFrame({"PC1": [0.0, 0.0, 10.0, 10.0], "PC2": [0.0, 1.0, 0.0, 1.0],
                          "material": ["A", "A", "B", "B"]})
    second = pd.DataFrame({"PC1": [2.0, 2.0, 10.0, 10.0, 5.0, 5.0], "PC2": [0.0, 1.0, 0.0, 1.0, 20.0, 21.0],
                           "material": ["A", "A", "B", "B", "C", "C"]})
    table = stage_structure([(2, first), (3, second)])
    assert table["n_classes"].tolist() == [2, 3]
    # a = 1 within a class, b = mean distance to the other class's two points = (10 + sqrt(101)) / 2
    b = (10 + np.sqrt(101)) / 2
    assert table["silhouette"].iloc[0] == pytest.approx(1 - 1 / b)
    spread = np.sqrt(((first[["PC1", "PC2"]] - first[["PC1", "PC2"]].mean()) ** 2).sum(axis=1).mean())
    assert np.isnan(table["centroid_shift"].iloc[0])
    assert table["centroid_shift"].iloc[1] == pytest.approx((2 + 0) / 2 / spread)


def test_stage_structure_of_one_class_has_no_silhouette():
    one = pd.DataFrame({"PC1": [0.0, 1.0], "PC2": [0.0, 1.0], "material": ["A", "A"]})
    assert np.isnan(stage_structure([(1, one)])["silhouette"].iloc[0])
