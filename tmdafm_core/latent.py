"""Latent-space analysis: PCA/UMAP projections of embeddings and their relation to physical descriptors.

The source study explains its ResNets by projecting the 100-d head activations ("latent features") onto their
principal components and correlating each physical image descriptor with each component. This module does that
on plain arrays and DataFrames (no torch):

* :func:`tmdafm_core.embeddings.fit_projection` fits PCA (and optionally 2-D/3-D UMAP) and returns a
  :class:`~tmdafm_core.embeddings.Projection` that places new embeddings without refitting (the app's drag-and-drop
  uses it) and saves/loads itself without pickle; :func:`analyse` fits one when it is not given.
* :func:`analyse` builds the paper's tables (Pearson R per descriptor and PC with bootstrap confidence intervals
  and p-values, Table 5, regression R in-sample and cross-validated, cosine similarities, percentile galleries).
* :func:`write_latent_outputs` writes them to a folder; :func:`read_latent_outputs` reads them back.

Files written by :func:`write_latent_outputs`
---------------------------------------------
``projection.csv``
    image, sample_id, label, PC1..PCk, then UMAP1, UMAP2 (2-D UMAP) and UMAP3D_1..UMAP3D_3 (3-D UMAP) when fitted.
``explained_variance.csv``
    component, ratio, cumulative.
``correlation.csv`` (long, one row per descriptor x PC)
    descriptor, pc, r, ci_low, ci_high, p_value, q_value, defined.
``table5.csv`` (one row per descriptor, paper Table 5 plus uncertainty)
    descriptor, min_r, min_pc, max_r, max_pc, regression_r, regression_r_cv, min_r_ci_low, min_r_ci_high, min_r_p,
    max_r_ci_low, max_r_ci_high, max_r_p, n_images, status.
``cosine_descriptors_pcs.csv``
    descriptor, PC1..PCk.
``cosine_regression_directions.csv``
    descriptor, then one column per descriptor.
``galleries.json``
    ``{descriptor: {"status", "low": {"threshold", "count", "images", "values"}, "high": {...}}}``.
``projection.npz``
    the fitted :class:`Projection` (plain arrays; loaded with ``allow_pickle=False``).

Undefined quantities (a constant descriptor, a PC without variance) are never NaN in these outputs: correlations
and cosines are 0, p-values 1, intervals [0, 0], PCs ``"none"``, and the row says so in ``defined`` / ``status``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from .embeddings import (
    ID_COLUMNS,
    Projection,
    fit_projection,
    pc_names,
    split_embeddings,
    umap_names,
)
from .features.table import max_scale
from .store import write_json

TABLE5_COLUMNS = ("descriptor", "min_r", "min_pc", "max_r", "max_pc", "regression_r", "regression_r_cv",
                  "min_r_ci_low", "min_r_ci_high", "min_r_p", "max_r_ci_low", "max_r_ci_high", "max_r_p",
                  "n_images", "status")
OUTPUT_FILES = ("projection.csv", "explained_variance.csv", "correlation.csv", "table5.csv",
                "cosine_descriptors_pcs.csv", "cosine_regression_directions.csv", "galleries.json")
# A column is "constant" when its spread is below this fraction of its magnitude (float noise, not signal).
_RELATIVE_TOL = 1e-9


# --- inputs -----------------------------------------------------------------------------------------------------

def _descriptor_matrix(descriptors, meta: pd.DataFrame) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Align descriptors to the embedding rows; return (values, names, embedding row positions, notes)."""
    if isinstance(descriptors, np.ndarray):
        if descriptors.ndim != 2:
            raise ValueError(f"descriptors: expected a 2-D array, got shape {descriptors.shape}")
        descriptors = pd.DataFrame(descriptors, columns=[f"descriptor{i + 1}" for i in range(descriptors.shape[1])])
    if not isinstance(descriptors, pd.DataFrame):
        raise ValueError(f"descriptors: expected a DataFrame or array, got {type(descriptors).__name__}")
    names = [str(c) for c in descriptors.columns if c not in ID_COLUMNS]
    not_numeric = [c for c in names if not pd.api.types.is_numeric_dtype(descriptors[c])]
    if not_numeric:
        raise ValueError(f"descriptors: column(s) {not_numeric[:5]} are not numeric")
    if not names:
        raise ValueError("descriptors: no numeric descriptor columns besides image/sample_id/label")
    notes: list[str] = []
    if "image" in descriptors.columns:
        images = descriptors["image"].astype(str)
        for what, column in (("descriptors", images), ("embeddings", meta["image"])):
            duplicated = column[column.duplicated()]
            if len(duplicated):
                raise ValueError(f"{what}: image {duplicated.iloc[0]!r} appears more than once; the tables join on "
                                 f"`image`, which must be unique")
        position = pd.Series(np.arange(len(descriptors)), index=images.to_numpy())
        found = meta["image"].isin(position.index).to_numpy()
        if not found.any():
            raise ValueError("descriptors: no `image` value matches the embeddings' images; both must use the path "
                             "relative to the data root (e.g. the `image` column of `tmdafm features`)")
        rows = np.flatnonzero(found)
        values = descriptors[names].to_numpy(dtype=np.float64)[position.loc[meta["image"][found]].to_numpy()]
        if len(rows) < len(meta):
            notes.append(f"{len(meta) - len(rows)} of {len(meta)} images have no descriptors and are left out of the "
                         f"descriptor tables")
    else:
        if len(descriptors) != len(meta):
            raise ValueError(f"descriptors: {len(descriptors)} rows for {len(meta)} embeddings and no `image` column "
                             f"to join on; add `image` or pass rows in the same order")
        rows = np.arange(len(meta))
        values = descriptors[names].to_numpy(dtype=np.float64, copy=True)
    empty = ~np.isfinite(values).any(axis=0)
    values[:, empty] = 0.0  # an all-missing descriptor becomes constant, i.e. "undefined", instead of dropping rows
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        notes.append(f"{int((~finite).sum())} images with missing descriptor values are left out of the descriptor "
                     f"tables")
        values, rows = values[finite], rows[finite]
    return values, names, rows, notes


def read_descriptors(path) -> pd.DataFrame:
    """Read a physical-descriptor table (``tmdafm features`` output: ``image`` + one column per descriptor).

    Returns a DataFrame with ``image`` (when the table has one) and the numeric descriptor columns in file order.
    """
    from .data import read_feature_table

    table = read_feature_table(path)
    descriptors = pd.DataFrame(table.features.astype(np.float64), columns=table.feature_names)
    if "image" in table.frame:
        descriptors.insert(0, "image", table.frame["image"].to_numpy())
    return descriptors


# --- statistics -------------------------------------------------------------------------------------------------

def _spread_ok(centred: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Columns whose centred norm is more than float noise relative to ``reference`` (per-column magnitudes)."""
    norm = np.linalg.norm(centred, axis=0)
    return norm > _RELATIVE_TOL * np.maximum(reference, np.finfo(float).tiny)


def pearson_matrix(a: np.ndarray, b: np.ndarray, *, a_ok=None, b_ok=None) -> tuple[np.ndarray, np.ndarray]:
    """Pearson R of every column of ``a`` (n, p) with every column of ``b`` (n, q).

    Returns ``(r, defined)``, both shape (p, q); ``r`` is 0 where a column has no spread (``defined`` False).
    """
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    if a_ok is None:
        a_ok = _spread_ok(ac, np.linalg.norm(a, axis=0))
    if b_ok is None:
        b_ok = _spread_ok(bc, np.linalg.norm(b, axis=0))
    defined = np.outer(a_ok, b_ok)
    norms = np.outer(np.linalg.norm(ac, axis=0), np.linalg.norm(bc, axis=0))
    r = np.divide(ac.T @ bc, norms, out=np.zeros(defined.shape), where=defined)
    return np.clip(r, -1.0, 1.0), defined


def pearson_p_values(r: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p-values of Pearson R under no correlation (Student t with n - 2 degrees of freedom).

    The same test as ``scipy.stats.pearsonr`` (which phrases it with the beta distribution).
    """
    from scipy import stats

    if n < 3:
        return np.ones_like(r)
    r2 = np.minimum(r * r, 1.0)
    with np.errstate(divide="ignore"):
        t = np.abs(r) * np.sqrt((n - 2) / np.where(r2 < 1.0, 1.0 - r2, 0.0))
    return np.where(r2 < 1.0, 2.0 * stats.t.sf(t, n - 2), 0.0)


def bootstrap_pearson(a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                      block: int = 2_000_000) -> np.ndarray:
    """Pearson R of every column pair on ``n_boot`` bootstrap resamples of the rows, shape (n_boot, p, q).

    Resample ``i`` is row ``i`` of ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))`` (drawn in
    blocks of about ``block`` indices, which yields the same numbers). Each resample is a vector of row counts, so
    all weighted moments of a block come from three matrix products instead of a loop. Pairs without spread in a
    resample are NaN.
    """
    n = len(a)
    # Standardise once so the moment formula below does not lose digits to large means.
    a = (a - a.mean(axis=0)) / np.where(a.std(axis=0) > 0, a.std(axis=0), 1.0)
    b = (b - b.mean(axis=0)) / np.where(b.std(axis=0) > 0, b.std(axis=0), 1.0)
    cross = (a[:, :, None] * b[:, None, :]).reshape(n, -1)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, a.shape[1], b.shape[1]))
    step = max(1, block // max(n, 1))
    for start in range(0, n_boot, step):
        stop = min(start + step, n_boot)
        draws = rng.integers(0, n, size=(stop - start, n))
        offsets = (np.arange(stop - start) * n)[:, None]
        weights = np.bincount((draws + offsets).ravel(), minlength=(stop - start) * n).reshape(stop - start, n) / n
        mean_a, mean_b = weights @ a, weights @ b
        var_a = weights @ (a * a) - mean_a**2
        var_b = weights @ (b * b) - mean_b**2
        cov = (weights @ cross).reshape(stop - start, a.shape[1], b.shape[1]) - mean_a[:, :, None] * mean_b[:, None, :]
        denom = np.sqrt(np.maximum(var_a, 0.0)[:, :, None] * np.maximum(var_b, 0.0)[:, None, :])
        ok = denom > 1e-9
        out[start:stop] = np.where(ok, cov / np.where(ok, denom, 1.0), np.nan)
    return np.clip(out, -1.0, 1.0)


def fit_linear(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of every column of y on x with an intercept, shape (1 + x columns, y columns)."""
    design = np.column_stack([np.ones(len(x)), x])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def _predict_linear(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    return coef[0] + x @ coef[1:]


def _column_r(y: np.ndarray, prediction: np.ndarray, y_ok: np.ndarray) -> np.ndarray:
    """Pearson R between matching columns of y and prediction; 0 where either has no spread."""
    yc, pc = y - y.mean(axis=0), prediction - prediction.mean(axis=0)
    pred_ok = _spread_ok(pc, np.maximum(np.linalg.norm(prediction, axis=0), np.linalg.norm(y, axis=0)))
    ok = y_ok & pred_ok
    norms = np.linalg.norm(yc, axis=0) * np.linalg.norm(pc, axis=0)
    r = np.divide((yc * pc).sum(axis=0), norms, out=np.zeros(y.shape[1]), where=ok)
    return np.clip(r, -1.0, 1.0)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Uncentred cosine similarity of every column of ``a`` with every column of ``b``; 0 for a zero column."""
    norms = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
    return np.clip(np.divide(a.T @ b, norms, out=np.zeros(norms.shape), where=norms > 0), -1.0, 1.0)


def _cv_splits(n: int, cv_folds: int, groups, seed: int):
    from sklearn.model_selection import GroupKFold, KFold

    if groups is None:
        return KFold(n_splits=cv_folds, shuffle=True, random_state=seed).split(np.zeros(n))
    if len(set(groups)) < cv_folds:
        raise ValueError(f"cross-validation by sample needs at least {cv_folds} samples, got {len(set(groups))}; "
                         f"lower cv_folds or split by image")
    return GroupKFold(n_splits=cv_folds, shuffle=True, random_state=seed).split(np.zeros(n), groups=groups)


def regression_tables(scores: np.ndarray, descriptors: np.ndarray, *, descriptor_ok: np.ndarray, cv_folds: int = 5,
                      groups=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Linear regression of each descriptor on the PC scores.

    Returns a dict with ``coef`` (n_components, n_descriptors; intercept dropped), ``r`` (in-sample Pearson R of
    descriptor and fitted values, i.e. the square root of R^2, the paper's figure), ``r_cv`` (Pearson R of the
    descriptor and its out-of-fold predictions from ``cv_folds`` folds; KFold shuffled with ``seed``, or
    GroupKFold over ``groups``). The PCA itself is fitted on every image: it never sees a descriptor, so only the
    regression is cross-validated.
    """
    coef = fit_linear(scores, descriptors)
    r = _column_r(descriptors, _predict_linear(coef, scores), descriptor_ok)
    out_of_fold = np.empty_like(descriptors)
    for train, test in _cv_splits(len(scores), cv_folds, groups, seed):
        out_of_fold[test] = _predict_linear(fit_linear(scores[train], descriptors[train]), scores[test])
    r_cv = _column_r(descriptors, out_of_fold, descriptor_ok)
    return {"coef": coef[1:], "r": r, "r_cv": r_cv}


# --- analysis ---------------------------------------------------------------------------------------------------

def _galleries(values: np.ndarray, names: list[str], images: np.ndarray, ok: np.ndarray, *, size: int,
               percentiles: tuple[float, float], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for j, name in enumerate(names):
        if not ok[j]:
            continue
        low_cut, high_cut = np.percentile(values[:, j], percentiles)
        for side, mask, order in (("low", values[:, j] <= low_cut, 1), ("high", values[:, j] >= high_cut, -1)):
            members = np.flatnonzero(mask)
            chosen = members if len(members) <= size else rng.choice(members, size=size, replace=False)
            chosen = chosen[np.argsort(order * values[chosen, j], kind="stable")]
            rows += [{"descriptor": name, "side": side, "threshold": float(low_cut if side == "low" else high_cut),
                      "count": len(members), "image": images[i], "value": float(values[i, j])} for i in chosen]
    return pd.DataFrame(rows, columns=["descriptor", "side", "threshold", "count", "image", "value"])


def analyse(embeddings, descriptors=None, *, projection: Projection | None = None, n_components: int = 10,
            umap: bool = False, umap_components=(2, 3), seed: int = 0, pca_solver: str = "full", n_boot: int = 1000,
            ci: float = 0.95, cv_folds: int = 5, cv_by_sample: bool = False, gallery_size: int = 24,
            percentiles: tuple[float, float] = (25.0, 75.0)) -> dict[str, pd.DataFrame]:
    """Project embeddings and relate the principal components to physical descriptors (paper Table 5, Figs 5-9).

    Parameters
    ----------
    embeddings : ndarray, shape (n_images, n_dims), or DataFrame, or FeatureTable
        See :func:`split_embeddings`.
    descriptors : DataFrame, optional
        Physical descriptors: an ``image`` column (joined with the embeddings' ``image``) and one numeric column
        per descriptor (the ``tmdafm features`` table), or rows in the embeddings' order when there is no
        ``image`` column. Images with a missing value are left out of the descriptor tables (said in
        ``result["table5"].attrs["notes"]``); an all-missing or constant descriptor is kept and marked undefined.
    projection : Projection, optional
        A fitted projection to use; by default one is fitted here with ``n_components``, ``umap``,
        ``umap_components``, ``seed`` and ``pca_solver`` (see :func:`fit_projection`).
    n_boot : int, optional
        Bootstrap resamples for the confidence intervals of R (0 skips them: intervals are then [r, r]).
    ci : float, optional
        Confidence level of the percentile bootstrap intervals.
    cv_folds : int, optional
        Folds of the cross-validated regression R.
    cv_by_sample : bool, optional
        Keep all images of a sample in one fold (GroupKFold over ``sample_id``); images of one sample look alike,
        so this is the stricter estimate. Default: plain shuffled KFold over images.
    gallery_size : int, optional
        At most this many images per gallery (a seeded random subset when more qualify), sorted by value.
    percentiles : (float, float), optional
        Low and high gallery cut-offs: images at or below the first, at or above the second percentile.

    Returns
    -------
    dict of str to DataFrame
        ``projection``, ``explained_variance``; with descriptors also ``correlation``, ``table5``,
        ``cosine_descriptors_pcs``, ``cosine_regression_directions`` and ``galleries`` (long: descriptor, side,
        threshold, count, image, value; threshold and value in the descriptor's own units). Columns as in the
        module docstring.

    Notes
    -----
    Descriptors are scaled by :func:`max_scale` first. Definitions, with ``y`` a descriptor's values over the
    images and ``s`` a PC's scores over the same images:

    * R is Pearson's correlation of ``y`` and ``s``; p-values are the t test of ``scipy.stats.pearsonr``
      (``q_value``: Benjamini-Hochberg over all descriptor x PC pairs); intervals are percentile bootstrap intervals
      over resampled images (:func:`bootstrap_pearson`).
    * Cosine descriptor-PC is the uncentred cosine ``y.s / (|y| |s|)`` of the scaled descriptor vector and the PC
      score vector, as in the paper. Scores are centred on the training mean, so this equals R times
      ``std(y) / rms(y)``: the same sign as R, shrunk by how far the descriptor sits from zero. (The centred
      cosine would be R itself.)
    * A regression direction is the coefficient vector of the descriptor's linear regression on the raw PC scores
      (intercept dropped). Since the principal axes are orthonormal, the cosine between two directions equals the
      cosine between the same directions mapped back into the n_dims latent space.

    Examples
    --------
    A latent space with one dominant direction, and a descriptor that follows it:

    >>> rng = np.random.default_rng(0)
    >>> latent = rng.normal(size=(200, 8))
    >>> latent[:, 0] *= 5
    >>> thickness = pd.DataFrame({"thickness_nm": 10 + latent[:, 0]})
    >>> tables = analyse(latent, thickness, n_components=3, n_boot=0)
    >>> row = tables["table5"].iloc[0]
    >>> row["max_pc"], round(float(row["max_r"]), 3), round(float(row["regression_r"]), 3)
    ('PC1', 1.0, 1.0)
    """
    values, meta = split_embeddings(embeddings)
    if projection is None:
        projection = fit_projection(values, n_components=n_components, umap=umap, umap_components=umap_components,
                                    seed=seed, pca_solver=pca_solver)
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be between 0 and 1 (e.g. 0.95), got {ci}")
    if not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {percentiles}")
    scores = projection.transform(values)
    result = projection_tables(projection, values, meta, scores)
    if descriptors is None:
        return result

    y, names, rows, notes = _descriptor_matrix(descriptors, meta)
    if cv_folds < 2 or cv_folds > len(rows):
        raise ValueError(f"cv_folds must be between 2 and the {len(rows)} images with descriptors, got {cv_folds}")
    if len(rows) <= projection.n_components + 1:
        raise ValueError(f"{len(rows)} images with descriptors are too few for a regression on "
                         f"{projection.n_components} PCs; add images or lower n_components")
    raw, y = y, max_scale(pd.DataFrame(y)).to_numpy()
    s = scores[rows]
    y_ok = _spread_ok(y - y.mean(axis=0), np.linalg.norm(y, axis=0))
    pcs = pc_names(projection.n_components)
    stats = correlation_statistics(y, s, y_ok=y_ok, n_boot=n_boot, ci=ci, seed=seed)
    result["correlation"] = correlation_table(stats, names, pcs)
    groups = meta["sample_id"].to_numpy()[rows] if cv_by_sample else None
    regression = regression_tables(s, y, descriptor_ok=y_ok, cv_folds=cv_folds, groups=groups, seed=seed)
    result["table5"] = table5_from(stats, regression, names, pcs, y_ok=y_ok, n_images=len(rows), notes=notes)
    result.update(cosine_tables(y, s, regression["coef"], names, pcs, y_ok=y_ok))
    result["galleries"] = _galleries(raw, names, meta["image"].to_numpy()[rows], y_ok, size=gallery_size,
                                     percentiles=percentiles, seed=seed)
    return result


def projection_tables(projection: Projection, values: np.ndarray, meta: pd.DataFrame,
                      scores: np.ndarray) -> dict[str, pd.DataFrame]:
    """``projection`` (meta columns, PC scores, UMAP coordinates per image) and ``explained_variance``."""
    pcs = pc_names(projection.n_components)
    table = pd.concat([meta, pd.DataFrame(scores, columns=pcs)], axis=1)
    for n in sorted(projection.umap_embeddings):
        coords = projection.transform_umap(values, n_dims=n)
        table = pd.concat([table, pd.DataFrame(coords, columns=umap_names(n))], axis=1)
    ratio = projection.explained_variance_ratio
    return {"projection": table,
            "explained_variance": pd.DataFrame({"component": pcs, "ratio": ratio, "cumulative": np.cumsum(ratio)})}


def correlation_statistics(y: np.ndarray, s: np.ndarray, *, y_ok: np.ndarray, n_boot: int, ci: float,
                           seed: int) -> dict[str, np.ndarray]:
    """Pearson R of every descriptor (columns of ``y``) with every PC (columns of ``s``), shape (descriptors, PCs):
    ``r``, ``defined``, ``p``, ``q`` (Benjamini-Hochberg) and the bootstrap interval ``low``, ``high``."""
    # A PC without variance (embeddings of lower rank than n_components) is noise: compare with the leading PC.
    s_spread = np.linalg.norm(s - s.mean(axis=0), axis=0)
    s_ok = s_spread > 1e-7 * max(s_spread.max(), np.finfo(float).tiny)
    r, defined = pearson_matrix(y, s, a_ok=y_ok, b_ok=s_ok)
    p = np.where(defined, pearson_p_values(r, len(y)), 1.0)
    q = np.ones_like(p)
    if defined.any():
        from scipy.stats import false_discovery_control

        q[defined] = false_discovery_control(p[defined])
    if n_boot > 0:
        boot = bootstrap_pearson(y, s, n_boot=n_boot, seed=seed)
        tail = (1.0 - ci) / 2.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pairs (undefined) are replaced below
            low, high = np.nanquantile(boot, [tail, 1.0 - tail], axis=0)
        low, high = np.where(np.isnan(low), -1.0, low), np.where(np.isnan(high), 1.0, high)
    else:
        low, high = r.copy(), r.copy()
    low, high = np.where(defined, low, 0.0), np.where(defined, high, 0.0)
    return {"r": r, "defined": defined, "p": p, "q": q, "low": low, "high": high}


def correlation_table(stats: dict, names, pcs) -> pd.DataFrame:
    """The long ``correlation`` table: one row per descriptor x PC."""
    return pd.DataFrame({
        "descriptor": np.repeat(names, len(pcs)), "pc": np.tile(pcs, len(names)), "r": stats["r"].ravel(),
        "ci_low": stats["low"].ravel(), "ci_high": stats["high"].ravel(), "p_value": stats["p"].ravel(),
        "q_value": stats["q"].ravel(), "defined": stats["defined"].ravel()})


def table5_from(stats: dict, regression: dict, names, pcs, *, y_ok: np.ndarray, n_images: int,
                notes: list) -> pd.DataFrame:
    """The paper's Table 5: per descriptor its most negative and most positive R over the PCs (with intervals and
    p-values) and the regression R on all PCs (in-sample and cross-validated)."""
    r, defined, low, high, p = stats["r"], stats["defined"], stats["low"], stats["high"], stats["p"]
    masked = np.where(defined, r, np.nan)
    any_defined = defined.any(axis=1)
    lo_idx = np.where(any_defined, np.nanargmin(np.where(any_defined[:, None], masked, 0.0), axis=1), 0)
    hi_idx = np.where(any_defined, np.nanargmax(np.where(any_defined[:, None], masked, 0.0), axis=1), 0)
    take = np.arange(len(names))
    table5 = pd.DataFrame({
        "descriptor": names,
        "min_r": np.where(any_defined, r[take, lo_idx], 0.0),
        "min_pc": np.where(any_defined, np.asarray(pcs)[lo_idx], "none"),
        "max_r": np.where(any_defined, r[take, hi_idx], 0.0),
        "max_pc": np.where(any_defined, np.asarray(pcs)[hi_idx], "none"),
        "regression_r": regression["r"], "regression_r_cv": regression["r_cv"],
        "min_r_ci_low": low[take, lo_idx], "min_r_ci_high": high[take, lo_idx], "min_r_p": p[take, lo_idx],
        "max_r_ci_low": low[take, hi_idx], "max_r_ci_high": high[take, hi_idx], "max_r_p": p[take, hi_idx],
        "n_images": n_images,
        "status": np.where(y_ok, np.where(any_defined, "ok", "undefined: no principal component has variance"),
                           "undefined: constant descriptor"),
    }, columns=list(TABLE5_COLUMNS))
    table5.attrs["notes"] = notes
    return table5


def cosine_tables(y: np.ndarray, s: np.ndarray, coef: np.ndarray, names, pcs, *,
                  y_ok: np.ndarray) -> dict[str, pd.DataFrame]:
    """``cosine_descriptors_pcs`` (descriptor x PC) and ``cosine_regression_directions`` (descriptor x
    descriptor, the regression coefficient vectors ``coef`` of shape (PCs, descriptors))."""
    cos = cosine_matrix(y, s)
    directions = np.where(y_ok[None, :], coef, 0.0)
    direction_cos = cosine_matrix(directions, directions)
    np.fill_diagonal(direction_cos, np.where(np.linalg.norm(directions, axis=0) > 0, 1.0, 0.0))
    return {"cosine_descriptors_pcs": pd.concat([pd.Series(names, name="descriptor"),
                                                 pd.DataFrame(cos, columns=pcs)], axis=1),
            "cosine_regression_directions": pd.concat([pd.Series(names, name="descriptor"),
                                                       pd.DataFrame(direction_cos, columns=names)], axis=1)}


# --- files ------------------------------------------------------------------------------------------------------

def galleries_json(galleries: pd.DataFrame, table5: pd.DataFrame) -> dict:
    """The ``galleries.json`` structure: per descriptor its status and its low/high image lists."""
    out = {}
    for name, status in zip(table5["descriptor"], table5["status"], strict=True):
        entry = {"status": status}
        for side in ("low", "high"):
            part = galleries[(galleries["descriptor"] == name) & (galleries["side"] == side)]
            entry[side] = {"threshold": float(part["threshold"].iloc[0]) if len(part) else None,
                           "count": int(part["count"].iloc[0]) if len(part) else 0,
                           "images": part["image"].tolist(), "values": part["value"].round(6).tolist()}
        out[name] = entry
    return out


def write_latent_outputs(out_dir, tables: dict[str, pd.DataFrame], *,
                         projection: Projection | None = None) -> list[Path]:
    """Write the tables of :func:`analyse` (and the fitted projection) into ``out_dir``; return the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key in ("projection", "explained_variance", "correlation", "table5", "cosine_descriptors_pcs",
                "cosine_regression_directions"):
        if key in tables:
            path = out_dir / f"{key}.csv"
            tables[key].to_csv(path, index=False)
            written.append(path)
    if "galleries" in tables:
        path = out_dir / "galleries.json"
        written.append(write_json(path, galleries_json(tables["galleries"], tables["table5"]), sort_keys=False))
    if projection is not None:
        written.append(projection.save(out_dir / "projection.npz"))
    return written


def read_latent_outputs(out_dir) -> dict:
    """Read what :func:`write_latent_outputs` wrote (tables as DataFrames, galleries as a dict, the projection)."""
    out_dir = Path(out_dir)
    if not (out_dir / "projection.csv").is_file():
        raise FileNotFoundError(f"{out_dir}: no projection.csv; run `tmdafm latent` with --out {out_dir} first")
    tables: dict = {}
    for path in sorted(out_dir.glob("*.csv")):
        tables[path.stem] = pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.stem != "projection" \
            else pd.read_csv(path, dtype={"image": str, "sample_id": str, "label": "string"})
    if (out_dir / "galleries.json").is_file():
        tables["galleries"] = json.loads((out_dir / "galleries.json").read_text())
    if (out_dir / "projection.npz").is_file():
        tables["fitted_projection"] = Projection.load(out_dir / "projection.npz")
    return tables
