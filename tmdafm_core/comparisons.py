"""Honest comparisons of two ways of training: per-fold paired differences with a 95 % interval.

Two runs trained on the same folds (the sequential study's ImageNet and Sequential arms of one stage, or the MtC and
MtL runs of a store) are compared fold by fold: the difference of their scores on each fold, then the mean of those
differences with a Student-t interval over folds (``n - 1`` degrees of freedom). The difference is *supported* when
the interval excludes 0. With few folds the interval is wide by construction (with 2 folds, t = 12.7): the sentence
says so rather than calling a small mean a finding.

Examples
--------
>>> from tmdafm_core.comparisons import paired_interval
>>> mean, low, high = paired_interval([0.10, 0.12, 0.08, 0.11, 0.09])
>>> round(mean, 3), low > 0
(0.1, True)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CONFIDENCE = 0.95


def paired_interval(differences, *, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean of per-fold differences and its two-sided Student-t interval ``(mean, low, high)`` (NaN bounds with
    fewer than 2 folds)."""
    from scipy.stats import t

    values = np.asarray(differences, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.5 + confidence / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def fold_scores(run_dir, split: str = "test", metric: str = "f1_macro") -> dict[int, float]:
    """``{fold: score}`` of a run directory's ``metrics.json`` (empty when it has none)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return {}
    return {int(entry["fold"]): float(entry[metric][split]) for entry in json.loads(path.read_text())["per_fold"]}


def paired_difference(run_a, run_b, split: str = "test", metric: str = "f1_macro") -> tuple[float, float, float]:
    """``b - a`` fold by fold on the folds both runs have, as :func:`paired_interval`; the bounds are clipped to
    -1..1, the most two scores in 0..1 can differ (with 2 folds the t interval runs far past that)."""
    a, b = fold_scores(run_a, split, metric), fold_scores(run_b, split, metric)
    shared = sorted(set(a) & set(b))
    mean, low, high = paired_interval([b[k] - a[k] for k in shared])
    return mean, max(low, -1.0) if low == low else low, min(high, 1.0) if high == high else high


def verdict(name: str, mean: float, low: float, high: float, *, unit: str = "pp", scale: float = 100.0) -> str:
    """One sentence on whether a difference is supported by its interval."""
    if not np.isfinite(mean):
        return f"{name}: not available."
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{name}: {scale * mean:+.1f} {unit} from a single fold; no interval, so no conclusion."
    text = f"{name}: {scale * mean:+.1f} {unit} (95 % CI {scale * low:+.1f} to {scale * high:+.1f})"
    if low > 0 or high < 0:
        return text + ": supported, the interval excludes 0."
    return text + ": not supported, the interval includes 0 (more folds or data would be needed to tell)."
