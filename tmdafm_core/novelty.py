"""Is an image like the training images? A novelty score, thresholded on held-out genuine images.

The score is the Mahalanobis distance of an image's texture statistics to those of the model's training images: the
per-channel mean and standard deviation of the ResNet's first residual stage (:func:`tmdafm_core.models.
stage_statistics`, 128 numbers for ResNet18/34, 512 for ResNet50/101/152), compared with one Gaussian fitted on the
fold's training images (covariance shrunk towards a multiple of the identity by ``ridge``). It is divided by the
``quantile`` (default 0.95) of the same distance over the fold's validation images, which the fold model never
trained on, so that ``novelty > 1`` reads "further from the training images than 95 % of genuine held-out images"
(``unfamiliar``). Why 0.95 rather than 0.99: on the demo store's models, genuine images of samples no model saw (the
test set) were flagged 1 % of the time at 0.95 and 0 % at 0.99, while the share of unfamiliar images caught rose from
10-57 % to 60-100 % for heavy noise, particle carpets, bare substrate and real DNA scans (``bench_novelty.py``); at
0.90, 6 % of genuine test images were flagged.

Why this score: chosen by measurement (``benchmarks/bench_novelty.py``, AUROC against held-out test images). On the
demo store's fold models it separated heavy noise, pure noise, flat scans, particle carpets, bare substrate and real
AFM scans of DNA on mica with AUROC 0.97-1.00, where the distance to the nearest training embeddings in the latent
space (the paper's 100-d features) reached 0.70-0.98, a Mahalanobis distance of the pooled last-stage features
0.57-0.98 and the energy or maximum-softmax scores 0.09-0.61 (worse than chance on some). The latent space is made to
separate materials, so an image unlike all of them can still land near one; low-level texture statistics see that a
scan is noisy, flat or of another kind of sample (Lee et al. 2018 use such early-layer statistics for the same reason).
A whole 5 µm scan shrunk to the model input (the paper crops 1 µm) is the hard case: its texture is close to that of
fine-grained films, and no texture score tried separated it well (AUROC 0.82-0.89).

So the score has a second, physical part when the image's pixel size is known (instrument files, TIFFs with
resolution tags, a manifest's ``pixel_size_nm``): the **scale check**. Each fold keeps the smallest and largest
field of view (pixel size x side) of its training images; an image whose field of view lies outside that range
scores ``log(ratio) / log(SCALE_TOLERANCE)``, where ``ratio`` is how many times smaller or larger it is than the
nearest end of the range, so a field of view :data:`SCALE_TOLERANCE` times outside reads 1 (unfamiliar). The
novelty is the larger of the texture and the scale score. An image of unknown pixel size (a PNG, an array) gets no
scale score: nothing says how large it is. Why 1.3: measured on the demo store's MtC models
(``bench_novelty.py``, scale sweep: 32 new films per class rendered at each field of view; they trained on 1 µm),
macro-F1 was 78 % at 1x, 75 % at 0.8x and 76 % at 1.25x, but 60 % at 0.67x, 63 % at 1.5x and 46 % at 2x: the models
read films within a quarter of their training field of view about as well and lose 15 points or more at 0.67x and
1.5x. 1.3 flags the latter and spares the former.

References
----------
Lee, K., Lee, K., Lee, H. and Shin, J. (2018). A simple unified framework for detecting out-of-distribution samples
and adversarial attacks. NeurIPS.
Mahalanobis, P. C. (1936). On the generalised distance in statistics. Proceedings of the National Institute of
Sciences of India 2, 49-55.

Examples
--------
>>> import numpy as np
>>> from tmdafm_core.novelty import fit_reference, novelty_scores
>>> rng = np.random.default_rng(0)
>>> reference = fit_reference(rng.normal(size=(500, 4)), rng.normal(size=(200, 4)))
>>> bool(novelty_scores(reference, np.full((1, 4), 10.0))[0] > 1)
True
"""

from __future__ import annotations

import numpy as np

METHOD = "stage1-mahalanobis"
DEFAULT_QUANTILE = 0.95
RIDGE = 1e-3
#: A field of view this many times larger or smaller than every training image's scores novelty 1 (unfamiliar).
SCALE_TOLERANCE = 1.3


def _matrix(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError(f"{name} must be a finite (N, features) matrix, got shape {values.shape}")
    return values


def fit_reference(train_statistics, val_statistics, *, quantile: float = DEFAULT_QUANTILE,
                  ridge: float = RIDGE) -> dict:
    """Fit the training images' Gaussian and set the threshold on held-out images.

    Parameters
    ----------
    train_statistics : array, shape (N_train, F)
        Texture statistics of the images the model trained on (at least 2).
    val_statistics : array, shape (N_val, F)
        The same of genuine images the model did not train on (its validation fold; at least 1).
    quantile : float in (0, 1)
        Share of held-out images that must score below the threshold.
    ridge : float >= 0
        Covariance shrinkage: ``ridge * trace(C) / F`` is added to the diagonal (keeps it invertible when
        ``N_train`` is not much larger than ``F``).

    Returns
    -------
    dict
        ``method``, ``mean`` (F,), ``precision`` (F, F), ``threshold`` (squared distance), ``quantile``,
        ``n_train``, ``n_val``; arrays as float32 ndarrays.
    """
    train = _matrix(train_statistics, "train_statistics")
    val = _matrix(val_statistics, "val_statistics")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"need at least 2 training and 1 held-out image, got {len(train)} and {len(val)}")
    if val.shape[1] != train.shape[1]:
        raise ValueError(f"train_statistics has {train.shape[1]} features, val_statistics {val.shape[1]}")
    mean = train.mean(axis=0)
    centred = train - mean
    covariance = centred.T @ centred / len(train)
    scale = max(float(np.trace(covariance)) / len(mean), 1e-12)
    precision = np.linalg.inv(covariance + ridge * scale * np.eye(len(mean)))
    reference = {"method": METHOD, "mean": mean.astype(np.float32), "precision": precision.astype(np.float32),
                 "quantile": float(quantile), "n_train": len(train), "n_val": len(val), "threshold": 1.0}
    reference["threshold"] = max(float(np.quantile(squared_distance(reference, val), quantile)), 1e-12)
    return reference


def squared_distance(reference: dict, statistics) -> np.ndarray:
    """Squared Mahalanobis distance (N,) of statistics (N, F) to the reference's training mean."""
    statistics = _matrix(statistics, "statistics")
    mean = np.asarray(reference["mean"], dtype=np.float64)
    if statistics.shape[1] != len(mean):
        raise ValueError(f"statistics have {statistics.shape[1]} features, the reference {len(mean)}")
    diff = statistics - mean
    return np.einsum("ni,ij,nj->n", diff, np.asarray(reference["precision"], dtype=np.float64), diff)


def field_of_view_nm(pixel_size_nm, height, width) -> np.ndarray:
    """Side (nm) of the square an image covers: pixel size x sqrt(height x width), elementwise (NaN: unknown).

    >>> float(field_of_view_nm(3.90625, 256, 256))
    1000.0
    """
    pixel = np.asarray(pixel_size_nm, dtype=np.float64)
    return pixel * np.sqrt(np.asarray(height, dtype=np.float64) * np.asarray(width, dtype=np.float64))


def field_of_view_range(field_of_view) -> list[float] | None:
    """``[smallest, largest]`` known field of view (nm) of a set of training images; None when none is known."""
    values = np.asarray(field_of_view, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    return [float(values.min()), float(values.max())] if len(values) else None


def field_of_view_text(field_of_view_range) -> str:
    """A training field-of-view range for people: ``"1.00 µm"``, or ``"0.80-1.20 µm"`` when it spans sizes."""
    low, high = (float(v) / 1000.0 for v in field_of_view_range)
    return f"{low:.2f} µm" if low == high else f"{low:.2f}-{high:.2f} µm"


def scale_novelty(field_of_view_range, field_of_view, *, tolerance: float = SCALE_TOLERANCE) -> np.ndarray:
    """Scale part of the novelty (N,): 0 inside the training range, ``log(ratio) / log(tolerance)`` outside.

    Parameters
    ----------
    field_of_view_range : (float, float) or None
        Smallest and largest field of view (nm) of the training images (:func:`field_of_view_range`); None: no
        scale check (all zeros).
    field_of_view : array, shape (N,)
        Field of view (nm) of each image; NaN where the pixel size is unknown (scores 0).
    tolerance : float > 1
        How many times outside the range reads 1.

    Examples
    --------
    >>> scale_novelty([1000.0, 1000.0], [1000.0, 1500.0, 5000.0, np.nan]).round(2).tolist()
    [0.0, 1.55, 6.13, 0.0]
    """
    if not tolerance > 1:
        raise ValueError(f"tolerance must be > 1, got {tolerance}")
    values = np.atleast_1d(np.asarray(field_of_view, dtype=np.float64))
    if field_of_view_range is None:
        return np.zeros(len(values))
    low, high = (float(v) for v in field_of_view_range)
    known = np.isfinite(values) & (values > 0)
    safe = np.where(known, values, 1.0)
    ratio = np.maximum.reduce([safe / high, low / safe, np.ones(len(values))])
    return np.where(known, np.log(ratio) / np.log(tolerance), 0.0)


def novelty_scores(reference: dict, statistics, *, field_of_view=None) -> np.ndarray:
    """Novelty (N,): squared distance over the held-out threshold, or the scale score when larger (see the module
    docstring); above 1 is :func:`unfamiliar`.

    ``field_of_view`` (N,) in nm, NaN where unknown; None skips the scale check, as does a reference without
    ``field_of_view_nm`` (a fold trained before tmdafm kept it).
    """
    texture = squared_distance(reference, statistics) / float(reference["threshold"])
    fov_range = reference.get("field_of_view_nm")
    if field_of_view is None or fov_range is None:
        return texture
    scale = scale_novelty(np.asarray(fov_range, dtype=np.float64), field_of_view)
    if len(scale) != len(texture):
        raise ValueError(f"field_of_view has {len(scale)} values for {len(texture)} images")
    return np.maximum(texture, scale)


def unfamiliar(novelty) -> np.ndarray:
    """Whether each novelty score lies beyond the held-out threshold (NaN, an unknown score, is False)."""
    return np.asarray(novelty, dtype=np.float64) > 1.0
