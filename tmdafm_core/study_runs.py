"""What every study of the paper (:mod:`tmdafm_core.experiments`, :mod:`tmdafm_core.sequential`) does the same way
with its runs: one split shared by all of them, every image read once, finished folds counted for resuming, scores
as tidy rows, and a ``threads=`` keyword for torch's CPU threads.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pandas as pd

from .data.splits import prepare_split
from .store import write_json
from .training import PARTITIONS, TASKS, checkpoint_path, default_image_size, load_data


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run a block with ``threads`` torch CPU threads (None: leave torch's setting), restoring it afterwards."""
    import torch

    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def with_threads(function):
    """Give a study a ``threads=`` keyword (see :func:`torch_threads`)."""
    @functools.wraps(function)
    def run(*args, threads: int | None = None, **kwargs):
        with torch_threads(threads):
            return function(*args, **kwargs)
    return run


def study_tasks(task: str) -> tuple[str, ...]:
    """The tasks a study trains: ``"mtc"``, ``"mtl"`` or ``"both"``."""
    if task == "both":
        return TASKS
    if task not in TASKS:
        raise ValueError(f"task must be mtc, mtl or both, got {task!r}")
    return (task,)


def shared_split(data: pd.DataFrame, options: dict) -> pd.DataFrame:
    """The one split (test marks and folds, by sample, seeded) every run of a study trains on, so folds compare."""
    split, _ = prepare_split(data, folds=options.get("folds", 5), test_fraction=options.get("test_fraction", 0.1),
                             seed=options.get("seed", 0))
    return split.reset_index(drop=True)


class StudyImages:
    """Every image of a study, read once on the first run that still has folds to train; each run then takes its
    rows (``images=``) instead of re-reading files, and a resumed study whose runs are all finished reads none."""

    def __init__(self, split: pd.DataFrame, options: dict, progress: bool):
        self.split, self.options, self.progress = split, options, progress
        self.images = None
        self.image_size = None

    def for_run(self, unfinished: bool):
        """The images, read now if this run is ``unfinished`` (has folds left to train) and nothing was read yet, and
        the run options they imply (``image_size``: their side in pixels).

        Returns
        -------
        (tensor or None, dict)
            The images as :func:`tmdafm_core.training.load_data` stores them (None until a run needed them), and
            ``{"image_size": side}`` once read.
        """
        if self.images is None and unfinished:
            self.image_size = int(self.options.get("image_size") or default_image_size(self.split))
            self.images = load_data(self.split, image_size=self.image_size, progress=self.progress)
        return self.images, ({"image_size": self.image_size} if self.image_size else {})


def finished_folds(run_dir: Path, folds: int) -> int:
    """How many of a run's ``folds`` have their checkpoint (a resumed study skips them)."""
    return sum(checkpoint_path(run_dir, k).is_file() for k in range(folds))


def progress_bar(total: int, done: int, desc: str, enabled: bool):
    """A fold counter for a whole study."""
    from tqdm.auto import tqdm

    # initial= makes the rate (and so the ETA) count only folds trained in this session.
    return tqdm(total=total, initial=done, desc=desc, unit="fold", disable=not enabled, dynamic_ncols=True)


def metric_rows(metrics: dict, **keys) -> list[dict]:
    """One tidy row per partition of a run's ``metrics.json``: ``keys`` + F1 / accuracy mean and std."""
    return [{**keys, "split": split,
             "f1_mean": metrics["f1_macro"][split]["mean"], "f1_std": metrics["f1_macro"][split]["std"],
             "accuracy_mean": metrics["accuracy"][split]["mean"],
             "accuracy_std": metrics["accuracy"][split]["std"]} for split in PARTITIONS]


def write_study_json(path: Path, document: dict) -> None:
    """A study's own JSON (settings, keys), readable by eye; values JSON lacks are written as text."""
    write_json(path, document, indent=2, sort_keys=False, default=str)
