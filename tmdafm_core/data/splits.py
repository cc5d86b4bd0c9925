"""Group-aware splits: a held-out test set by sample, then stratified group folds on the rest.

Images of one physical sample look alike, so no sample id may appear in two partitions: otherwise validation and
test scores measure recognition of samples seen in training, not of materials.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd

from .labels import LabelSpace
from .readers import FeatureTable


def _stratified_group_folds(labels, groups, n_splits: int, seed: int) -> list[np.ndarray]:
    """Validation positions of each of ``n_splits`` stratified group folds."""
    from sklearn.model_selection import StratifiedGroupKFold  # deferred: importing sklearn costs ~1 s at app start

    n_groups = len(pd.unique(groups))
    if n_groups < n_splits:
        raise ValueError(f"only {n_groups} distinct samples for {n_splits} folds; use fewer folds or more samples")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer groups than folds; the fold sizes then differ, which is fine here.
        warnings.simplefilter("ignore", UserWarning)
        return [val for _, val in splitter.split(np.zeros(len(labels)), labels, groups)]


def split_dataset(manifest: pd.DataFrame, *, n_folds: int = 5, test_fraction: float = 0.1,
                  seed: int = 0) -> pd.DataFrame:
    """Assign every labelled image to the held-out test set or to one cross-validation fold.

    Parameters
    ----------
    manifest : DataFrame
        Tidy manifest (see :mod:`tmdafm_core.data.readers`) with ``material``, ``sample_id`` and ``split``.
    n_folds : int
        Number of cross-validation folds on the non-test images (>= 2).
    test_fraction : float
        Fraction of samples held out when the data set carries no ``test`` marks (0 < f < 0.5); the test set is
        one fold of a ``round(1 / test_fraction)``-fold stratified group split.
    seed : int
        Seed of the shuffles; the same seed gives the same split.

    Returns
    -------
    DataFrame
        A copy with ``split`` ("train" or "test") and ``fold`` (0..n_folds-1 for train rows: the fold in which the
        row is validation; -1 for test rows).
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    if not 0 < test_fraction < 0.5:
        raise ValueError(f"test_fraction must be in (0, 0.5), got {test_fraction}")
    if manifest["material"].isna().any():
        n = int(manifest["material"].isna().sum())
        raise ValueError(f"{n} image(s) have no material label; splits need a labelled data set")
    out = manifest.copy()
    labels = out["material"].astype(str).to_numpy()
    groups = out["sample_id"].astype(str).to_numpy()

    marked = out["split"].fillna("").astype(str).to_numpy() == "test"
    if marked.any():
        mixed = pd.Series(marked).groupby(groups).nunique()
        if (mixed > 1).any():
            raise ValueError(f"sample {mixed[mixed > 1].index[0]!r} has images both marked test and not; "
                             "a sample must be wholly in one partition")
        is_test = marked
    else:
        test_positions = _stratified_group_folds(labels, groups, max(2, round(1 / test_fraction)), seed)[0]
        is_test = np.zeros(len(out), dtype=bool)
        is_test[test_positions] = True

    fold = np.full(len(out), -1, dtype=int)
    train_positions = np.flatnonzero(~is_test)
    for k, val in enumerate(_stratified_group_folds(labels[train_positions], groups[train_positions], n_folds, seed)):
        fold[train_positions[val]] = k
    out["split"] = pd.Series(np.where(is_test, "test", "train"), index=out.index, dtype="string")
    out["fold"] = fold
    return out


def fold_partitions(manifest: pd.DataFrame, fold: int) -> dict[str, np.ndarray]:
    """Integer positions of the train, val and test images of one fold of a :func:`split_dataset` manifest."""
    if "fold" not in manifest.columns:
        raise ValueError("manifest has no 'fold' column; call split_dataset first")
    folds = manifest["fold"].to_numpy()
    n_folds = int(folds.max()) + 1
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in 0..{n_folds - 1}, got {fold}")
    return {
        "train": np.flatnonzero((folds >= 0) & (folds != fold)),
        "val": np.flatnonzero(folds == fold),
        "test": np.flatnonzero(folds == -1),
    }


# --- splits for training (no torch: the experiments and the store reach them without it) -------------------------

def labelled_frame(data) -> pd.DataFrame:
    """The manifest-like frame (material, sample_id, split) of a manifest or of a feature table (its ``frame``)."""
    if isinstance(data, FeatureTable):
        frame = data.frame.copy()
        if "split" not in frame.columns:
            frame["split"] = pd.Series(pd.NA, index=frame.index, dtype="string")
        return frame
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"expected a manifest DataFrame or a FeatureTable, got {type(data).__name__}")
    return data


def _check_classes_in_every_fold(frame: pd.DataFrame, labels: LabelSpace, folds: int) -> None:
    for fold in range(folds):
        parts = fold_partitions(frame, fold)
        present = set(frame["material"].iloc[parts["train"]])
        for material in labels.classes:
            if material not in present:
                outside_test = (frame["split"] == "train") & (frame["material"] == material)
                n_samples = frame.loc[outside_test, "sample_id"].nunique()
                raise ValueError(f"class {material!r} has no training images in fold {fold} (only {n_samples} "
                                 "sample(s) outside the test set); add samples of it, use fewer folds, or drop it")


def _check_labels(frame: pd.DataFrame, labels: LabelSpace) -> None:
    outside = sorted(set(frame["material"].dropna()) - set(labels.classes))
    if outside:
        raise ValueError(f"material {outside[0]!r} of the data is not one of the given classes {list(labels.classes)}")
    for material in labels.classes:
        labels.element_vector(material)  # raises when an element is missing from labels.elements


def _check_presplit(frame: pd.DataFrame, folds: int) -> pd.DataFrame:
    """A data set that carries its own ``split`` and ``fold`` columns (from :func:`split_dataset`)."""
    if "fold" not in frame.columns or "split" not in frame.columns:
        raise ValueError("presplit data needs 'split' and 'fold' columns; call split_dataset (or prepare_split) first")
    fold = frame["fold"].to_numpy()
    is_test = frame["split"].fillna("").astype(str).to_numpy() == "test"
    if (fold[is_test] != -1).any() or not np.isin(fold[~is_test], np.arange(folds)).all():
        raise ValueError(f"presplit data: 'fold' must be -1 for test rows and 0..{folds - 1} for the others")
    empty = sorted(set(range(folds)) - set(fold[~is_test].tolist()))
    if empty:
        raise ValueError(f"presplit data: fold {empty[0]} has no images; the split has fewer than {folds} folds")
    return frame


def prepare_split(data, *, folds: int, test_fraction: float = 0.1, seed: int = 0, labels: LabelSpace | None = None,
                  presplit: bool = False) -> tuple[pd.DataFrame, LabelSpace]:
    """Split a manifest / feature table by sample and check that every class can be trained in every fold.

    ``labels`` fixes the label space (class order, elements) instead of deriving it from the data; ``presplit``
    keeps the data's own ``split`` and ``fold`` columns (one split shared by several runs).
    """
    frame = labelled_frame(data)
    if len(frame) == 0:
        raise ValueError("the data set has no images")
    if labels is None:
        labels = LabelSpace.from_materials(frame["material"].dropna())
    else:
        _check_labels(frame, labels)
    if len(labels.classes) < 2:
        raise ValueError(f"only one class ({labels.classes[0]}) in the data set; classification needs >= 2")
    if presplit:
        split = _check_presplit(frame, folds)
    else:
        split = split_dataset(frame, n_folds=folds, test_fraction=test_fraction, seed=seed)
    _check_classes_in_every_fold(split, labels, folds)
    return split, labels


def limit_training_images(manifest: pd.DataFrame, positions, limits: dict, *, seed: int = 0) -> np.ndarray:
    """Cut the training images of some classes to a number of images, by sample.

    For each limited class, its samples among ``positions`` are put in a random order (seeded by ``seed`` and the
    class name), each sample's images too, and the first ``limit`` images of that sequence are kept: whole
    samples first, the last one partly. The same seed gives nested cuts (a cut of 8 is part of the cut of 16).

    Parameters
    ----------
    manifest : DataFrame
        With ``material`` and ``sample_id``.
    positions : array of int
        Row positions of a training partition.
    limits : dict of str -> int
        Material -> most training images to keep (>= 1); other classes are kept whole.
    seed : int

    Returns
    -------
    ndarray of int
        The kept positions, in their original order.
    """
    positions = np.asarray(positions, dtype=np.int64)
    materials = manifest["material"].to_numpy()[positions]
    samples = manifest["sample_id"].astype(str).to_numpy()[positions]
    keep = np.ones(len(positions), dtype=bool)
    for material, limit in limits.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"training limit of {material!r} must be a whole number of images >= 1, got {limit!r}")
        rows = np.flatnonzero(materials == material)
        if len(rows) <= limit:
            continue
        rng = np.random.default_rng([int(seed), zlib.crc32(str(material).encode())])
        sequence = []
        for sample in rng.permutation(np.unique(samples[rows])):
            sequence.extend(rng.permutation(rows[samples[rows] == sample]).tolist())
        keep[rows] = False
        keep[sequence[:limit]] = True
    return positions[keep]


def fold_training_positions(split: pd.DataFrame, fold: int, *, train_limits: dict | None = None,
                            seed: int = 0) -> np.ndarray:
    """Training positions of one fold after the per-class limits (seeded per fold, as the training uses them)."""
    train = fold_partitions(split, fold)["train"]
    if not train_limits:
        return train
    return limit_training_images(split, train, train_limits, seed=seed * 1009 + fold)


def _fold_partitions(split: pd.DataFrame, fold: int, train_limits: dict | None, seed: int) -> dict:
    parts = fold_partitions(split, fold)
    parts["train"] = fold_training_positions(split, fold, train_limits=train_limits, seed=seed)
    return parts


def inner_split(split: pd.DataFrame, train: np.ndarray, *, fraction: float = 0.25, seed: int = 0) -> dict:
    """Training positions split again by sample: about ``fraction`` of each class's samples for inner validation.

    A class with a single training sample stays wholly in inner training. Returns ``{"train", "val", "test"}``
    position arrays (test empty), for tuning that never sees the fold's validation or the test set.
    """
    rng = np.random.default_rng([seed, 4099])
    frame = split.iloc[train]
    held = []
    for _, samples in frame.groupby("material", sort=True)["sample_id"]:
        unique = np.array(sorted(set(samples)))
        if len(unique) < 2:
            continue
        count = max(1, int(round(fraction * len(unique))))
        held += list(rng.choice(unique, size=min(count, len(unique) - 1), replace=False))
    is_val = frame["sample_id"].isin(held).to_numpy()
    return {"train": train[~is_val], "val": train[is_val], "test": np.zeros(0, dtype=np.int64)}
