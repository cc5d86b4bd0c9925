"""The run directory: fold checkpoints (loaded with ``weights_only=True``), the summary of the folds
(``metrics.json``) and the check that a rerun resumes the same run."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch

from ..layout import PARTITIONS
from ..store import write_json
from .config import _RESUME_FREE, CONFIG_NAME, TrainConfig
from .engine import MTL_RULES, UNKNOWN

# --- run directory ----------------------------------------------------------------------------------------------

def checkpoint_path(run_dir, fold: int) -> Path:
    return Path(run_dir) / f"fold{fold}.pt"


def remove_stale_temporaries(run_dir) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files left by writers that died (kill -9) before renaming them into place."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        pid = path.name.rsplit(".", 2)[-2] if path.name.count(".") >= 3 else ""
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed.append(path)
        except PermissionError:
            pass  # alive, another user's
    return removed


def save_checkpoint(checkpoint: dict, path) -> None:
    """Write a checkpoint atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path) -> dict:
    """Read a fold checkpoint (``weights_only=True``: tensors and plain containers only, never arbitrary objects)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files and foreign pickles fail in many ways
        raise ValueError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None


def _finished_fold(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        checkpoint = load_checkpoint(path)
    except ValueError:
        return None  # an unreadable leftover is retrained and overwritten
    return checkpoint if checkpoint.get("complete") else None


def _mean_std(values) -> dict:
    """Mean, sample std (ddof 1, ours) and the paper's ``np.std`` (ddof 0) over folds."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "std_paper": float(np.std(values))}


def _confusion_percent(checkpoints: list[dict], key=lambda scores: scores) -> list:
    """Each fold's test confusion in percent of its test images, averaged over folds."""
    confusions = []
    for ck in checkpoints:
        counts = np.asarray(key(ck["scores"]["test"])["confusion"], dtype=np.float64)
        confusions.append(100.0 * counts / max(counts.sum(), 1.0))
    return np.mean(confusions, axis=0).tolist()


def summarize_folds(checkpoints: list[dict]) -> dict:
    """The ``metrics.json`` document of a run from its fold checkpoints (see DESIGN.md).

    Means and spreads over folds (``std``: sample std, ddof 1; ``std_paper``: ``np.std``, ddof 0, as the paper
    reports); ``confusion_test_percent`` is each fold's test confusion (rows true, columns predicted) in percent of
    the test images, averaged over folds. MtL runs decode by the most likely valid material and add
    ``paper_rule``: the same scores under the paper's strict rule (:data:`MTL_RULES`), whose confusion has one more
    column, ``unknown``.
    """
    first = checkpoints[0]
    strict = first["task"] == "mtl" and all("paper_rule" in ck["scores"]["test"] for ck in checkpoints)
    per_fold = []
    for ck in checkpoints:
        entry = {"fold": ck["fold"], "best_epoch": ck["epoch"]}
        for metric in ("accuracy", "f1_macro", "loss"):
            entry[metric] = {split: ck["scores"][split][metric] for split in PARTITIONS}
        if ck["task"] == "mtl":
            entry["element_accuracy"] = {split: ck["scores"][split]["element_accuracy"] for split in PARTITIONS}
        if "tuned" in ck:
            entry["tuned"] = ck["tuned"]
        if strict:
            entry["paper_rule"] = {metric: {split: ck["scores"][split]["paper_rule"][metric] for split in PARTITIONS}
                                   for metric in ("accuracy", "f1_macro")}
        per_fold.append(entry)
    document = {
        "task": first["task"],
        "classes": first["classes"],
        "elements": first["elements"],
        "folds": len(checkpoints),
        "accuracy": {s: _mean_std([f["accuracy"][s] for f in per_fold]) for s in PARTITIONS},
        "f1_macro": {s: _mean_std([f["f1_macro"][s] for f in per_fold]) for s in PARTITIONS},
        "confusion_test_percent": _confusion_percent(checkpoints),
        "per_fold": per_fold,
    }
    if first["task"] == "mtl":
        document["decoding"] = "valid-material"
    used = sorted({ck["precision_used"] for ck in checkpoints if "precision_used" in ck})
    if used:
        document["precision_used"] = used[0] if len(used) == 1 else used
    if all("calibration" in ck for ck in checkpoints):
        from ..calibration import summarize_calibration

        document["calibration"] = summarize_calibration([ck["calibration"] for ck in checkpoints])
    if all("novelty" in ck for ck in checkpoints):
        references = [ck["novelty"] for ck in checkpoints]
        document["novelty"] = {
            "method": first["novelty"]["method"], "quantile": first["novelty"]["quantile"],
            "flagged": {p: float(np.mean([r["flagged"].get(p, np.nan) for r in references])) for p in ("val", "test")},
        }
    if strict:
        document["paper_rule"] = {
            "rule": MTL_RULES["paper"],
            **{metric: {s: _mean_std([f["paper_rule"][metric][s] for f in per_fold]) for s in PARTITIONS}
               for metric in ("accuracy", "f1_macro")},
            "confusion_test_percent": _confusion_percent(checkpoints, lambda scores: scores["paper_rule"]),
            "columns": [*first["classes"], UNKNOWN],
        }
    return document


def _write_json(path: Path, document: dict) -> None:
    write_json(path, document, indent=2, sort_keys=False)


def _check_resumable(run_dir: Path, config_document: dict) -> None:
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ValueError(f"{path}: unreadable config of an earlier run; delete {run_dir} or choose another --out") \
            from None
    # A setting added after that run was written has its default there.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = sorted(k for k in set(previous) | set(config_document) if k not in _RESUME_FREE
                     and previous.get(k, defaults.get(k)) != config_document.get(k))
    if changed and not any(run_dir.glob("fold*.pt")):
        return  # an earlier attempt that finished no fold (e.g. it failed at once) holds nothing to keep
    if changed:
        key = changed[0]
        raise ValueError(f"{run_dir} holds a run with other settings ({key}: {previous.get(key)!r} there, "
                         f"{config_document.get(key)!r} now); choose another --out or delete that folder")
