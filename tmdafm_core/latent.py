"""Latent-space analysis: PCA/UMAP projections of embeddings and their relation to physical descriptors.

The source study explains its ResNets by projecting the 100-d head activations ("latent features") onto their
principal components and correlating each physical image descriptor with each component. This module does that
on plain arrays and DataFrames (no torch):

* :func:`fit_projection` fits PCA (and optionally 2-D/3-D UMAP) and returns a :class:`Projection` that places new
  embeddings without refitting (the app's drag-and-drop uses it) and saves/loads itself without pickle.
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .data.scans import DEFAULT_CROP_UM
from .features.table import max_scale
from .store import write_json

META_COLUMNS = ("image", "sample_id", "label")
PCA_SOLVERS = ("full", "covariance_eigh", "randomized", "auto", "incremental")
TABLE5_COLUMNS = ("descriptor", "min_r", "min_pc", "max_r", "max_pc", "regression_r", "regression_r_cv",
                  "min_r_ci_low", "min_r_ci_high", "min_r_p", "max_r_ci_low", "max_r_ci_high", "max_r_p",
                  "n_images", "status")
OUTPUT_FILES = ("projection.csv", "explained_variance.csv", "correlation.csv", "table5.csv",
                "cosine_descriptors_pcs.csv", "cosine_regression_directions.csv", "galleries.json")
# Columns of a descriptor table that identify an image rather than describe it.
_ID_COLUMNS = ("image", "path", "sample_id", "label", "material", "split", "fold")
# A column is "constant" when its spread is below this fraction of its magnitude (float noise, not signal).
_RELATIVE_TOL = 1e-9


def pc_names(n_components: int) -> list[str]:
    return [f"PC{i + 1}" for i in range(n_components)]


def umap_names(n_dims: int) -> list[str]:
    """Column names of a UMAP embedding: ``UMAP1, UMAP2`` for 2-D, ``UMAP3D_1..3`` for 3-D (both can coexist)."""
    return ["UMAP1", "UMAP2"] if n_dims == 2 else [f"UMAP{n_dims}D_{i + 1}" for i in range(n_dims)]


# --- inputs -----------------------------------------------------------------------------------------------------

def split_embeddings(embeddings) -> tuple[np.ndarray, pd.DataFrame]:
    """Separate an embedding table into a float64 matrix and its image metadata.

    Parameters
    ----------
    embeddings : ndarray, shape (n_images, n_dims), or DataFrame, or FeatureTable
        A DataFrame may carry ``image``, ``sample_id`` and ``label`` (or ``material``) columns; every other column
        must be numeric and is a latent dimension. A :class:`~tmdafm_core.data.FeatureTable` (from
        ``read_feature_table``) is taken as its ``features`` with ``frame`` as metadata.

    Returns
    -------
    values : ndarray of float64, shape (n_images, n_dims)
    meta : DataFrame with columns image, sample_id, label (label may be NA)
    """
    if hasattr(embeddings, "features") and hasattr(embeddings, "frame"):
        values = np.asarray(embeddings.features, dtype=np.float64)
        frame = embeddings.frame
    elif isinstance(embeddings, pd.DataFrame):
        frame = embeddings
        id_cols = [c for c in frame.columns if c in _ID_COLUMNS]
        dims = [c for c in frame.columns if c not in id_cols]
        not_numeric = [c for c in dims if not pd.api.types.is_numeric_dtype(frame[c])]
        if not_numeric:
            raise ValueError(f"embeddings: column(s) {not_numeric[:5]} are not numeric; drop them or name them "
                             f"image/sample_id/label")
        values = frame[dims].to_numpy(dtype=np.float64)
    else:
        values = np.asarray(embeddings, dtype=np.float64)
        frame = pd.DataFrame(index=range(len(values)) if values.ndim else [])
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"embeddings: expected a 2-D (n_images, n_dims) array, got shape {values.shape}")
    if not np.isfinite(values).all():
        row = int(np.where(~np.isfinite(values).all(axis=1))[0][0])
        raise ValueError(f"embeddings: non-finite values (first in row {row}); drop or fill those images first")
    return values, image_meta(frame, len(values))


def image_meta(frame: pd.DataFrame, n_images: int) -> pd.DataFrame:
    """The image, sample_id, label columns of a table (image defaults to the row number, sample_id to image)."""
    frame = frame.rename(columns={"material": "label"}).reset_index(drop=True)
    image = frame["image"].astype(str) if "image" in frame else pd.Series([str(i) for i in range(n_images)])
    return pd.DataFrame({
        "image": image.to_numpy(),
        "sample_id": frame["sample_id"].astype(str).to_numpy() if "sample_id" in frame else image.to_numpy(),
        "label": frame["label"].astype("string").to_numpy() if "label" in frame else pd.array([pd.NA] * n_images,
                                                                                                dtype="string"),
    })


def _descriptor_matrix(descriptors, meta: pd.DataFrame) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Align descriptors to the embedding rows; return (values, names, embedding row positions, notes)."""
    if isinstance(descriptors, np.ndarray):
        if descriptors.ndim != 2:
            raise ValueError(f"descriptors: expected a 2-D array, got shape {descriptors.shape}")
        descriptors = pd.DataFrame(descriptors, columns=[f"descriptor{i + 1}" for i in range(descriptors.shape[1])])
    if not isinstance(descriptors, pd.DataFrame):
        raise ValueError(f"descriptors: expected a DataFrame or array, got {type(descriptors).__name__}")
    names = [str(c) for c in descriptors.columns if c not in _ID_COLUMNS]
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


def run_embeddings(run_dir, data, *, fold="best", device: str = "cpu", strict: bool = False,
                   progress: bool = False, latent: str = "pre-relu",
                   crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """The head's 100-d hidden outputs ("latent features") of a trained run for every image of a data set.

    Parameters
    ----------
    run_dir : str or Path
        Run directory written by ``tmdafm train`` (or ``tmdafm train-features``).
    data : str, Path, DataFrame or FeatureTable
        Image runs: any data source ``read_dataset`` accepts, or a manifest. Feature-table runs: a feature table
        path (``read_feature_table``) or a FeatureTable with the run's input features.
    fold : int or "best"
        Fold model to use; "best" is the fold with the highest validation macro-F1.
    device : {"cpu", "cuda"}
    strict : bool
        Treat a skipped (unreadable) file of ``data`` as an error.
    latent : {"pre-relu", "post-relu"}
        Before (the paper's latent features) or after the head's ReLU.
    crop_um : float or None
        Instrument files in ``data``: the central crop (µm) after levelling, or None for whole scans.

    Returns
    -------
    DataFrame
        image, sample_id, label, latent1..latentN (float32), in the data set's order; ``attrs["fold"]`` is the
        fold used and ``attrs["skipped"]`` the data reader's skipped files.
    """
    from .data import read_dataset, read_feature_table
    from .training import embed, load_run

    run = load_run(run_dir, fold, device=device)
    skipped = []
    if run.is_image:
        manifest = data if isinstance(data, pd.DataFrame) else read_dataset(data, strict=strict, crop_um=crop_um)
        skipped = manifest.attrs.get("skipped", [])
        values = embed(run, manifest, progress=progress, latent=latent)
        frame = manifest[["image", "sample_id", "material"]]
    else:
        table = data if hasattr(data, "features") else read_feature_table(data)
        values = embed(run, table.features, progress=progress, latent=latent)
        frame = table.frame
    columns = pd.DataFrame(values, columns=[f"latent{i + 1}" for i in range(values.shape[1])])
    table = pd.concat([image_meta(frame, len(values)), columns], axis=1)
    table.attrs.update(fold=run.fold, skipped=list(skipped), latent=latent)
    return table


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


# --- projection -------------------------------------------------------------------------------------------------

@dataclass
class Projection:
    """A fitted PCA (and optional UMAP) of embeddings that places new embeddings without refitting.

    Attributes
    ----------
    mean : ndarray, shape (n_dims,)
        Mean embedding of the training set.
    components : ndarray, shape (n_components, n_dims)
        Orthonormal principal axes (rows), in scikit-learn's sign convention.
    explained_variance_ratio : ndarray, shape (n_components,)
        Fraction of the total embedding variance along each axis.
    pca_solver : str
    train_embeddings : ndarray of float32, shape (n_images, n_dims)
        The embeddings the UMAPs were fitted on (kept only when a UMAP was fitted; UMAP needs them to place new
        points by their nearest training neighbours).
    umap_embeddings : dict of int to ndarray of float32, shape (n_images, n_dims)
        The training points' UMAP coordinates per UMAP dimension (2 and/or 3).
    umap_params : dict
        Keyword arguments of ``umap.UMAP`` (seeded), without ``n_components``.

    Notes
    -----
    Why no pickle: a fitted ``umap.UMAP`` can only be serialised by pickling it, and pickles run code when loaded.
    Instead :meth:`save` writes plain arrays (``.npz``, read with ``allow_pickle=False``). :meth:`load` rebuilds
    each UMAP lazily, on the first :meth:`transform_umap`, by re-running UMAP's neighbour-graph stage on the stored
    training embeddings with the stored seeded parameters (about 0.5 s for 1026 points; the layout optimisation is
    skipped) and then setting the layout to the stored coordinates. ``UMAP.transform`` depends only on the training
    data, the parameters, the training layout and its fixed ``transform_seed``, so new points land exactly where
    the fitting process would have put them, and the training points keep the coordinates shown in the app.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    pca_solver: str = "full"
    train_embeddings: np.ndarray | None = None
    umap_embeddings: dict = field(default_factory=dict)
    umap_params: dict = field(default_factory=dict)
    _reducers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def n_dims(self) -> int:
        return len(self.mean)

    def _check(self, embeddings) -> np.ndarray:
        values = np.asarray(embeddings, dtype=np.float64)
        if values.ndim == 1:
            values = values[None, :]
        if values.ndim != 2 or values.shape[1] != self.n_dims:
            raise ValueError(f"embeddings: expected shape (n, {self.n_dims}) to match the fitted projection, got "
                             f"{values.shape}; use embeddings from the same model")
        if not np.isfinite(values).all():
            raise ValueError("embeddings: non-finite values; drop or fill them first")
        return values

    def transform(self, embeddings) -> np.ndarray:
        """PC scores of embeddings, shape (n, n_components); identical to the training scores for training rows."""
        return (self._check(embeddings) - self.mean) @ self.components.T

    def transform_umap(self, embeddings, *, n_dims: int = 2) -> np.ndarray:
        """UMAP coordinates of embeddings, shape (n, n_dims), by ``umap.UMAP.transform`` on the stored layout.

        The training embeddings (passed as one array, as fitted) return their stored coordinates exactly. Single
        training points passed among new ones are re-placed near, not exactly at, their stored coordinates (UMAP
        optimises each new point against the fixed training layout).
        """
        if n_dims not in self.umap_embeddings:
            raise ValueError(f"no {n_dims}-D UMAP in this projection (has {sorted(self.umap_embeddings)}); refit "
                             f"with umap=True, umap_components including {n_dims}")
        values = self._check(embeddings).astype(np.float32)
        with _quiet_umap():
            return np.asarray(self._reducer(n_dims).transform(values), dtype=np.float32)

    def project(self, embeddings) -> pd.DataFrame:
        """PC scores and every fitted UMAP of embeddings as a DataFrame with ``projection.csv``'s column names."""
        columns = dict(zip(pc_names(self.n_components), self.transform(embeddings).T, strict=True))
        for n_dims in sorted(self.umap_embeddings):
            coords = self.transform_umap(embeddings, n_dims=n_dims)
            columns.update(zip(umap_names(n_dims), coords.T, strict=True))
        return pd.DataFrame(columns)

    def _reducer(self, n_dims: int):
        if n_dims not in self._reducers:
            self._reducers[n_dims] = _rebuild_umap(self.train_embeddings, self.umap_embeddings[n_dims],
                                                   self.umap_params)
        return self._reducers[n_dims]

    def save(self, path) -> Path:
        """Write the projection as plain arrays to ``path`` (``.npz``); no pickle."""
        path = Path(path)
        arrays = {"mean": self.mean, "components": self.components,
                  "explained_variance_ratio": self.explained_variance_ratio,
                  "meta": np.array(json.dumps({"format": 1, "pca_solver": self.pca_solver,
                                               "umap_params": self.umap_params,
                                               "umap_dims": sorted(self.umap_embeddings)}))}
        if self.umap_embeddings:
            arrays["train_embeddings"] = self.train_embeddings
            arrays.update({f"umap{n}": coords for n, coords in self.umap_embeddings.items()})
        with open(path, "wb") as handle:  # an open handle keeps numpy from appending ".npz" to other suffixes
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path) -> Projection:
        """Read a projection written by :meth:`save` (arrays only; never unpickles)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a projection written by tmdafm ({type(exc).__name__}: {exc})") from None
        return cls(mean=arrays["mean"], components=arrays["components"],
                   explained_variance_ratio=arrays["explained_variance_ratio"], pca_solver=meta["pca_solver"],
                   train_embeddings=arrays.get("train_embeddings"),
                   umap_embeddings={int(n): arrays[f"umap{n}"] for n in meta["umap_dims"]},
                   umap_params=meta["umap_params"])


@contextmanager
def _quiet_umap():
    """Silence UMAP's notice that a seed forces single-threaded runs (the seed is the point)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*overridden.*")
        warnings.filterwarnings("ignore", message=".*random_state.*")
        yield


def _umap_reducer(n_dims: int, params: dict, **overrides):
    import umap as umap_learn  # imported here: numba start-up costs seconds

    return umap_learn.UMAP(n_components=n_dims, **{**params, **overrides})


def _rebuild_umap(train_embeddings: np.ndarray, layout: np.ndarray, params: dict):
    # Rebuild the neighbour graph (what transform needs) with no layout epochs, then put the stored layout back.
    with _quiet_umap():
        reducer = _umap_reducer(layout.shape[1], params, n_epochs=0, init="random").fit(train_embeddings)
    reducer.n_epochs = params.get("n_epochs")  # transform derives its own epoch count from the fitted setting
    reducer.init = params.get("init", "spectral")
    reducer.embedding_ = np.asarray(layout, dtype=np.float32)
    return reducer


def fit_projection(embeddings, *, n_components: int = 10, umap: bool = False, umap_components=(2, 3),
                   seed: int = 0, pca_solver: str = "full", n_neighbors: int = 15, min_dist: float = 0.1,
                   umap_epochs: int | None = None) -> Projection:
    """Fit PCA (and optionally UMAP) to embeddings.

    Parameters
    ----------
    embeddings : ndarray, shape (n_images, n_dims), or DataFrame
        Latent features, e.g. the 100-d head activations; see :func:`split_embeddings`.
    n_components : int, optional
        Number of principal components (the paper: 10, about 99 % of the variance).
    umap : bool, optional
        Also fit UMAP layouts (seeded, single-threaded so they are reproducible).
    umap_components : tuple of int, optional
        UMAP output dimensions to fit (2-D for maps, 3-D for the app's 3-D view).
    seed : int, optional
        Seed of UMAP and of the randomised PCA solver.
    pca_solver : {"full", "covariance_eigh", "randomized", "auto", "incremental"}, optional
        ``"full"`` is exact LAPACK SVD (default). For 100k+ images use ``"covariance_eigh"`` (exact, via the
        n_dims x n_dims covariance, fast when images >> dims), ``"randomized"`` (approximate, seeded) or
        ``"incremental"`` (scikit-learn IncrementalPCA in batches, bounded memory).
    n_neighbors, min_dist, umap_epochs : optional
        UMAP parameters (``n_neighbors`` is capped at n_images - 1; ``umap_epochs=None`` is UMAP's default).

    Returns
    -------
    Projection
    """
    values, _ = split_embeddings(embeddings)
    n_images, n_dims = values.shape
    if not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if n_components > n_dims:
        raise ValueError(f"n_components={n_components} exceeds the {n_dims} embedding dimensions; lower n_components")
    if n_images <= n_components:
        raise ValueError(f"{n_images} images are too few for {n_components} principal components (need more images "
                         f"than components); lower n_components or add images")
    if pca_solver not in PCA_SOLVERS:
        raise ValueError(f"pca_solver must be one of {PCA_SOLVERS}, got {pca_solver!r}")
    umap_components = tuple(sorted(set(umap_components))) if umap else ()
    if any(n not in (2, 3) for n in umap_components):
        raise ValueError(f"umap_components must be 2 and/or 3, got {umap_components}")
    if umap_components and n_images < 5:
        raise ValueError(f"UMAP needs at least 5 images, got {n_images}; fit without umap")

    if pca_solver == "incremental":
        from sklearn.decomposition import IncrementalPCA

        pca = IncrementalPCA(n_components=n_components, batch_size=max(5 * n_dims, n_components + 1))
    else:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components, svd_solver=pca_solver, random_state=seed)
    pca.fit(values)
    projection = Projection(mean=pca.mean_.astype(np.float64), components=pca.components_.astype(np.float64),
                            explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
                            pca_solver=pca_solver)
    if umap_components:
        params = {"n_neighbors": int(min(n_neighbors, n_images - 1)), "min_dist": float(min_dist),
                  "metric": "euclidean", "random_state": int(seed), "transform_seed": int(seed),
                  "n_epochs": None if umap_epochs is None else int(umap_epochs)}
        projection.train_embeddings = values.astype(np.float32)
        projection.umap_params = params
        for n in umap_components:
            with _quiet_umap():
                reducer = _umap_reducer(n, params).fit(projection.train_embeddings)
            projection.umap_embeddings[n] = np.asarray(reducer.embedding_, dtype=np.float32)
            projection._reducers[n] = reducer
    return projection


def procrustes_align(points, reference, *, shared=None, scale: bool = True) -> tuple[np.ndarray, float]:
    """Rotate (or reflect), scale and shift points so that some of them best match reference positions.

    Used to draw the latent spaces of consecutive sequential-training stages in one frame: each stage's PCA has
    its own axes (signs, order, rotation), so the images both stages share are matched in the least-squares sense
    (orthogonal Procrustes) and the whole stage is moved with that one similarity transform.

    Parameters
    ----------
    points : ndarray, shape (n, d)
        Coordinates to move (all points of the new stage).
    reference : ndarray, shape (m, d)
        Target coordinates of the shared points.
    shared : array of int, shape (m,), optional
        Positions in ``points`` of the rows matching ``reference`` row by row; default the first ``m`` rows.
    scale : bool, optional
        Also fit one isotropic scale factor (else rotation/reflection and shift only).

    Returns
    -------
    aligned : ndarray of float64, shape (n, d)
    residual : float
        Root-mean-square distance between the aligned shared points and ``reference``.
    """
    from scipy.linalg import orthogonal_procrustes

    points = np.asarray(points, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if points.ndim != 2 or reference.ndim != 2 or points.shape[1] != reference.shape[1]:
        raise ValueError(f"points {points.shape} and reference {reference.shape} must be 2-D with the same number "
                         "of columns")
    shared = np.arange(len(reference)) if shared is None else np.asarray(shared, dtype=np.int64)
    if shared.shape != (len(reference),) or len(shared) and (shared.min() < 0 or shared.max() >= len(points)):
        raise ValueError(f"shared must hold {len(reference)} row positions of points (0..{len(points) - 1})")
    if len(shared) < 2:
        raise ValueError(f"{len(shared)} shared points are too few to align; need at least 2")
    source = points[shared]
    source_mean, reference_mean = source.mean(axis=0), reference.mean(axis=0)
    centred, target = source - source_mean, reference - reference_mean
    rotation, singular_sum = orthogonal_procrustes(centred, target)
    norm = float((centred ** 2).sum())
    factor = singular_sum / norm if scale and norm > 0 else 1.0
    aligned = (points - source_mean) @ rotation * factor + reference_mean
    residual = float(np.sqrt(((aligned[shared] - reference) ** 2).sum(axis=1).mean()))
    return aligned, residual


def stage_structure(stages, *, x: str = "PC1", y: str = "PC2", label: str = "material") -> pd.DataFrame:
    """How well each sequential stage's projection separates its classes, and how far the classes move between
    consecutive stages (the paper's Figure 5 claim: Sequential training keeps a class in place).

    Parameters
    ----------
    stages : sequence of (int, DataFrame)
        Class count and the stage's aligned points (``x``, ``y`` and ``label`` columns), fewest classes first.
    x, y : str
        The plotted axes.
    label : str
        Column with each image's class.

    Returns
    -------
    DataFrame
        One row per stage: ``n_classes``; ``silhouette`` of the class labels on (x, y) (-1..1; above 0.25 the
        classes form visible groups; NaN below two classes); ``centroid_shift``, the mean distance a class
        centroid moved since the previous stage, over the classes both stages hold, in units of the previous
        stage's root-mean-square spread about its centre (unit-free, so stages and modes compare; NaN for the
        first stage).

    Examples
    --------
    >>> a = pd.DataFrame({"PC1": [0, 0, 10, 10.], "PC2": [0, 1, 0, 1.], "material": ["A", "A", "B", "B"]})
    >>> stage_structure([(2, a), (2, a)])["centroid_shift"].tolist()
    [nan, 0.0]
    """
    from sklearn.metrics import silhouette_score

    rows, previous = [], None
    for n_classes, frame in stages:
        frame = frame.dropna(subset=[x, y, label])
        points, labels = frame[[x, y]].to_numpy(dtype=np.float64), frame[label].astype(str).to_numpy()
        n_labels = len(np.unique(labels))
        silhouette = (float(silhouette_score(points, labels)) if 2 <= n_labels < len(points) else float("nan"))
        centres = {name: points[labels == name].mean(axis=0) for name in np.unique(labels)}
        shift = float("nan")
        if previous is not None:
            before, spread = previous
            common = [name for name in centres if name in before]
            if common and spread > 0:
                shift = float(np.mean([np.linalg.norm(centres[n] - before[n]) for n in common]) / spread)
        spread = float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(axis=1).mean())) if len(points) else 0.0
        previous = (centres, spread)
        rows.append({"n_classes": int(n_classes), "silhouette": silhouette, "centroid_shift": shift})
    return pd.DataFrame(rows, columns=["n_classes", "silhouette", "centroid_shift"])


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
