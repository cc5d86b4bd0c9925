"""Embeddings and their projections: an embedding table split into values and image identity
(:func:`split_embeddings`), PCA (and 2-D / 3-D UMAP) fitted once and applied to new embeddings (:class:`Projection`,
:func:`fit_projection`), Procrustes alignment of one projection onto another (:func:`procrustes_align`) and how well a
projection separates labelled groups (:func:`stage_structure`).

Plain arrays and DataFrames, no torch; :mod:`tmdafm_core.latent` relates the projections to physical descriptors.
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

META_COLUMNS = ("image", "sample_id", "label")
PCA_SOLVERS = ("full", "covariance_eigh", "randomized", "auto", "incremental")
# Columns of a descriptor table that identify an image rather than describe it.
ID_COLUMNS = ("image", "path", "sample_id", "label", "material", "split", "fold")

def pc_names(n_components: int) -> list[str]:
    return [f"PC{i + 1}" for i in range(n_components)]


def umap_names(n_dims: int) -> list[str]:
    """Column names of a UMAP embedding: ``UMAP1, UMAP2`` for 2-D, ``UMAP3D_1..3`` for 3-D (both can coexist)."""
    return ["UMAP1", "UMAP2"] if n_dims == 2 else [f"UMAP{n_dims}D_{i + 1}" for i in range(n_dims)]


# --- embeddings -----------------------------------------------------------------------------------------------------

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
        id_cols = [c for c in frame.columns if c in ID_COLUMNS]
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


#: Silhouette from which a projection's classes read as visible groups (Rousseeuw's "weak structure" begins at 0.25).
VISIBLE_GROUPS = 0.25


def last_stage(structure: pd.DataFrame, *, goal: float = VISIBLE_GROUPS) -> tuple[pd.DataFrame, bool]:
    """The rows of :func:`stage_structure` tables (one task, any modes) at the stage with the most classes, and
    whether every mode's projection shows visible groups there (silhouette >= ``goal``)."""
    last = structure[structure["n_classes"] == structure["n_classes"].max()]
    return last, bool((last["silhouette"] >= goal).all())


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
        One row per stage: ``n_classes``; ``silhouette`` of the class labels on (x, y) (-1..1; from
        :data:`VISIBLE_GROUPS` on the classes form visible groups; NaN below two classes); ``centroid_shift``, the
        mean distance a class centroid moved since the previous stage, over the classes both stages hold, in units
        of the previous stage's root-mean-square spread about its centre (unit-free, so stages and modes compare;
        NaN for the first stage).

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
