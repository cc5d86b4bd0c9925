import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmdafm_core.data import fold_partitions, split_dataset


def _manifest(groups, labels, split=None):
    return pd.DataFrame({
        "material": pd.array(labels, dtype="string"),
        "sample_id": [str(g) for g in groups],
        "split": pd.array(split if split is not None else [pd.NA] * len(groups), dtype="string"),
    })


@st.composite
def groupings(draw):
    n_classes = draw(st.integers(2, 4))
    groups, labels = [], []
    for c in range(n_classes):
        for g in range(draw(st.integers(12, 18))):
            groups += [f"c{c}g{g}"] * draw(st.integers(1, 5))
            labels += [["MoS2", "WS2", "WSe2", "MoSe2"][c]] * (len(groups) - len(labels))
    return groups, labels, draw(st.integers(2, 5)), draw(st.integers(0, 10_000))


@settings(max_examples=40, deadline=None)
@given(groupings())
def test_no_sample_in_two_partitions(case):
    groups, labels, n_folds, seed = case
    split = split_dataset(_manifest(groups, labels), n_folds=n_folds, seed=seed)
    partition = np.where(split["split"] == "test", -1, split["fold"])
    assert (split.groupby("sample_id")["fold"].nunique() == 1).all()
    assert pd.Series(partition).groupby(split["sample_id"].to_numpy()).nunique().max() == 1
    assert set(split["fold"]) == set(range(-1, n_folds))
    for k in range(n_folds):
        parts = fold_partitions(split, k)
        ids = {name: set(split["sample_id"].iloc[pos]) for name, pos in parts.items()}
        assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
        assert sum(len(p) for p in parts.values()) == len(split)


def test_split_is_seeded_and_about_ten_percent():
    groups = [f"g{i // 3}" for i in range(600)]
    labels = [["MoS2", "WS2"][(i // 3) % 2] for i in range(600)]
    a = split_dataset(_manifest(groups, labels), seed=3)
    b = split_dataset(_manifest(groups, labels), seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert 0.07 < (a["split"] == "test").mean() < 0.13
    assert set(a.loc[a["split"] == "test", "material"]) == {"MoS2", "WS2"}


def test_dataset_test_marks_are_kept():
    groups = [f"g{i // 2}" for i in range(80)]
    labels = [["MoS2", "WS2"][(i // 2) % 2] for i in range(80)]
    marks = ["test" if i < 8 else "train" for i in range(80)]
    split = split_dataset(_manifest(groups, labels, marks), n_folds=3)
    assert list(split["split"] == "test") == [i < 8 for i in range(80)]
    assert (split.loc[split["split"] == "test", "fold"] == -1).all()


def test_sample_marked_half_test_is_rejected():
    with pytest.raises(ValueError, match="both marked test"):
        split_dataset(_manifest(["a", "a", "b", "c"], ["MoS2"] * 4, ["test", "train", "train", "train"]), n_folds=2)


def test_unlabelled_rejected():
    with pytest.raises(ValueError, match="no material label"):
        split_dataset(_manifest(["a", "b"], [pd.NA, "MoS2"]))


def test_too_few_samples_rejected():
    with pytest.raises(ValueError, match="distinct samples"):
        split_dataset(_manifest(["a", "b", "c"], ["MoS2", "WS2", "MoS2"]), n_folds=5)


@pytest.mark.parametrize("kwargs, match", [({"n_folds": 1}, "n_folds"), ({"test_fraction": 0.0}, "test_fraction"),
                                           ({"test_fraction": 0.6}, "test_fraction")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split_dataset(_manifest(["a", "b"], ["MoS2", "WS2"]), **kwargs)


def test_fold_partitions_needs_folds():
    with pytest.raises(ValueError, match="split_dataset first"):
        fold_partitions(_manifest(["a"], ["MoS2"]), 0)
    split = split_dataset(_manifest([f"g{i}" for i in range(40)], ["MoS2", "WS2"] * 20), n_folds=2)
    with pytest.raises(ValueError, match="fold must be"):
        fold_partitions(split, 2)
