"""Group-aware splits: a held-out test set by sample, then stratified group folds on the rest.

Images of one physical sample look alike, so no sample id may appear in two partitions: otherwise validation and
test scores measure recognition of samples seen in training, not of materials.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd


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
