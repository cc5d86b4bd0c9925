"""Speed of the latent analysis at the paper's scale (1026 images x 100-d embeddings, 14 descriptors).

Prints one table: PCA + every descriptor table with :func:`tmdafm_core.latent.analyse` against a straightforward
loop implementation (per-pair ``scipy.stats.pearsonr``, per-descriptor ``LinearRegression`` and
``cross_val_predict``, a Python bootstrap loop over ``np.corrcoef``), UMAP cold (first fit in the process, numba
compiling) and warm, reloading a saved UMAP, and PCA solvers at 100k images.

    python benchmarks/bench_latent.py [--n 1026] [--n-boot 1000] [--big 100000]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from _timing import timed

DESCRIPTORS = ["rms_roughness", "local_variation", "step_edges", "defect_density", "anisotropy", "dog_blob",
               "grain_size", "grain_density", "contrast", "dissimilarity", "homogeneity", "energy", "correlation",
               "asm"]


def make_data(n: int, dims: int = 100, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Post-ReLU-like activations with a decaying spectrum.
    latent = rng.normal(size=(n, 12)) @ rng.normal(size=(12, dims)) * np.linspace(2.0, 0.2, dims)
    embeddings = np.maximum(latent + 0.1 * rng.normal(size=(n, dims)), 0.0)
    mixing = rng.normal(size=(dims, len(DESCRIPTORS)))
    descriptors = pd.DataFrame(np.abs(embeddings @ mixing + 5 * rng.normal(size=(n, len(DESCRIPTORS)))),
                               columns=DESCRIPTORS)
    descriptors.insert(0, "image", [f"img{i:05d}.tif" for i in range(n)])
    frame = pd.DataFrame(embeddings, columns=[f"latent{i + 1}" for i in range(dims)])
    frame.insert(0, "image", descriptors["image"])
    return frame, descriptors


def straightforward(embeddings: np.ndarray, descriptors: pd.DataFrame, *, n_components: int, n_boot: int, seed: int):
    """The obvious implementation: loops over descriptors, PCs and bootstrap resamples."""
    from scipy import stats
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import KFold, cross_val_predict

    scores = PCA(n_components=n_components).fit_transform(embeddings)
    y = descriptors[DESCRIPTORS] / descriptors[DESCRIPTORS].abs().max()
    rows = []
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(n_boot, len(y)))
    for name in DESCRIPTORS:
        values = y[name].to_numpy()
        rs, ps, lows, highs = [], [], [], []
        for j in range(n_components):
            result = stats.pearsonr(values, scores[:, j])
            boot = [np.corrcoef(values[idx], scores[idx, j])[0, 1] for idx in draws]
            rs.append(result.statistic)
            ps.append(result.pvalue)
            lows.append(np.quantile(boot, 0.025))
            highs.append(np.quantile(boot, 0.975))
        model = LinearRegression().fit(scores, values)
        r_in = np.sqrt(model.score(scores, values))
        oof = cross_val_predict(LinearRegression(), scores, values, cv=KFold(5, shuffle=True, random_state=seed))
        r_cv = np.corrcoef(values, oof)[0, 1]
        cosines = [values @ scores[:, j] / np.linalg.norm(values) / np.linalg.norm(scores[:, j])
                   for j in range(n_components)]
        rows.append((name, min(rs), max(rs), r_in, r_cv, cosines, model.coef_, lows, highs, ps))
    coefs = np.stack([row[6] for row in rows])
    unit = coefs / np.linalg.norm(coefs, axis=1, keepdims=True)
    return rows, unit @ unit.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1026)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--big", type=int, default=100_000, help="images for the PCA-solver rows (0 skips)")
    parser.add_argument("--skip-umap", action="store_true")
    args = parser.parse_args()

    import tempfile

    from tmdafm_core.embeddings import Projection, fit_projection
    from tmdafm_core.latent import analyse

    frame, descriptors = make_data(args.n)
    embeddings = frame.filter(like="latent").to_numpy()
    rows = []

    analyse(frame.iloc[:60], descriptors.iloc[:60], n_boot=10)  # import scipy/sklearn outside the timing
    t_fast, tables = timed(lambda: analyse(frame, descriptors, n_boot=args.n_boot, seed=0), repeat=3)
    t_loop, (reference, _) = timed(lambda: straightforward(embeddings, descriptors, n_components=10,
                                                           n_boot=args.n_boot, seed=0))
    table5 = tables["table5"].set_index("descriptor")
    worst = max(max(abs(table5.loc[name, "min_r"] - lo), abs(table5.loc[name, "max_r"] - hi),
                    abs(table5.loc[name, "regression_r"] - r_in), abs(table5.loc[name, "regression_r_cv"] - r_cv))
                for name, lo, hi, r_in, r_cv, *_ in reference)
    corr = tables["correlation"]
    worst = max(worst, np.abs(corr["ci_low"].to_numpy() - np.ravel([row[7] for row in reference])).max(),
                np.abs(corr["ci_high"].to_numpy() - np.ravel([row[8] for row in reference])).max(),
                np.abs(corr["p_value"].to_numpy() - np.ravel([row[9] for row in reference])).max())
    rows.append((f"PCA + all tables, {args.n} x 100, 14 descr., {args.n_boot} bootstraps", "tmdafm analyse",
                 t_fast, t_loop, f"loop / ours = {t_loop / t_fast:.0f}x; max |diff| {worst:.1e}"))
    t_no_boot, _ = timed(lambda: analyse(frame, descriptors, n_boot=0), repeat=3)
    rows.append(("  same without bootstrap", "tmdafm analyse", t_no_boot, np.nan, ""))

    if not args.skip_umap:
        t_cold, projection = timed(lambda: fit_projection(embeddings, umap=True, umap_components=(2,), seed=0))
        t_warm, _ = timed(lambda: fit_projection(embeddings, umap=True, umap_components=(2,), seed=0))
        t_both, _ = timed(lambda: fit_projection(embeddings, umap=True, umap_components=(2, 3), seed=0))
        rows.append((f"UMAP 2-D, {args.n} points, cold (numba JIT + import)", "fit_projection", t_cold, np.nan, ""))
        rows.append((f"UMAP 2-D, {args.n} points, warm", "fit_projection", t_warm, np.nan, ""))
        rows.append((f"UMAP 2-D + 3-D, {args.n} points, warm", "fit_projection", t_both, np.nan, ""))
        new = embeddings[:20] + 0.01
        t_first, _ = timed(lambda: projection.transform_umap(new))
        t_place, _ = timed(lambda: projection.transform_umap(new + 0.01), repeat=3)
        rows.append(("place 20 new images, first call in process (JIT)", "Projection.transform_umap", t_first,
                     np.nan, ""))
        rows.append(("place 20 new images, later calls", "Projection.transform_umap", t_place, np.nan, ""))
        with tempfile.TemporaryDirectory() as folder:
            path = projection.save(f"{folder}/p.npz")
            t_reload, _ = timed(lambda: Projection.load(path).transform_umap(new))
        rows.append(("reload saved UMAP from .npz + place 20 images", "Projection.load", t_reload, np.nan,
                     "no pickle; graph rebuilt, layout stored"))

    if args.big:
        big = np.random.default_rng(1).normal(size=(args.big, 100)) * np.linspace(3, 0.1, 100)
        for solver in ("full", "covariance_eigh", "randomized", "incremental"):
            t_solver, _ = timed(lambda s=solver: fit_projection(big, pca_solver=s))
            rows.append((f"PCA {args.big} x 100, solver={solver}", "fit_projection", t_solver, np.nan, ""))

    table = pd.DataFrame(rows, columns=["case", "ours", "ours_s", "straightforward_s", "note"])
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
