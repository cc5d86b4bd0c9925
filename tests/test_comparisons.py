"""Paired per-fold comparisons: the interval against scipy, the verdicts, and where they show."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from tmdafm_core.comparisons import fold_scores, paired_difference, paired_interval, verdict


def test_paired_interval_is_the_student_t_interval_of_the_differences():
    diffs = np.array([0.05, -0.01, 0.03, 0.02, 0.04])
    mean, low, high = paired_interval(diffs)
    expected = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert mean == pytest.approx(diffs.mean()) and (low, high) == pytest.approx(expected)
    assert np.isnan(paired_interval([0.1])[1]) and np.isnan(paired_interval([])[0])
    two = paired_interval([0.1, 0.2])  # two folds: t = 12.7, the interval is wide
    assert two[2] - two[1] == pytest.approx(2 * 12.706 * np.std([0.1, 0.2], ddof=1) / np.sqrt(2), rel=1e-3)


def test_verdicts_say_supported_only_when_the_interval_excludes_zero():
    assert verdict("A − B", 0.05, 0.01, 0.09).endswith("supported, the interval excludes 0.")
    assert "not supported" in verdict("A − B", 0.05, -0.01, 0.11)
    assert "supported, the interval excludes 0" in verdict("A − B", -0.05, -0.09, -0.01)
    assert "no interval, so no conclusion" in verdict("A − B", 0.05, float("nan"), float("nan"))
    assert verdict("A − B", 0.05, 0.01, 0.09).startswith("A − B: +5.0 pp (95 % CI +1.0 to +9.0)")


def _run(folder, scores):
    folder.mkdir(parents=True)
    per_fold = [{"fold": k, "f1_macro": {"test": v, "val": v}} for k, v in enumerate(scores)]
    (folder / "metrics.json").write_text(json.dumps({"per_fold": per_fold}))
    return folder


def test_paired_difference_pairs_folds_by_number(tmp_path):
    a = _run(tmp_path / "a", [0.5, 0.6, 0.7])
    b = _run(tmp_path / "b", [0.6, 0.65, 0.8])
    assert fold_scores(a) == {0: 0.5, 1: 0.6, 2: 0.7} and fold_scores(tmp_path / "none") == {}
    mean, low, high = paired_difference(a, b)
    assert mean == pytest.approx(np.mean([0.1, 0.05, 0.1]))
    assert (low, high) == pytest.approx(paired_interval([0.1, 0.05, 0.1])[1:])


def test_score_differences_are_bounded_by_what_scores_allow(tmp_path):
    a = _run(tmp_path / "a", [0.2, 0.9])
    b = _run(tmp_path / "b", [0.9, 0.3])  # two folds disagreeing: the t interval spans far beyond -1..1
    mean, low, high = paired_difference(a, b)
    assert paired_interval([0.7, -0.6])[1] < -1 and (low, high) == (-1.0, 1.0) and mean == pytest.approx(0.05)
