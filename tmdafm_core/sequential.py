"""The paper's sequential study (Figures 4 and 5) on any data set, built on :mod:`tmdafm_core.training` and the
run plumbing every study shares (:mod:`tmdafm_core.study_runs`).

Stages: for ``n`` = 2 .. len(order), the classes ``order[:n]``; the newly added class is ``order[n - 1]``.

Modes:

``"imagenet"``
    every stage starts from the base ``weights`` (ImageNet in the paper; random with ``weights="none"``).
``"sequential"``
    stage ``n`` fold ``k`` starts from fold ``k`` of the Sequential stage ``n - 1`` trained at full volume. MtL
    keeps the element outputs of the whole study at every stage (the outputs carry over whole, an element absent
    from a stage is trained as absent); MtC gets a fresh ``Linear(100, n)`` output layer, as the paper's code does
    (``head="reset"``), or, with ``head="keep"``, keeps the rows of the known classes and starts only the new
    class's row from the layer's default initialisation. At 2 classes there is no smaller model to start from:
    Sequential at 2 classes *is* the ImageNet run (its rows in ``results.csv`` point to that run).

Volume sweep (``volume_mode``): the paper's (``"paper"``, default) keeps ``volume`` random images of the new
class's train + validation pool (seeded; smaller volumes are subsets of larger ones), so in every fold its train and
validation images together total ``volume``; ``"train-samples"`` cuts the new class's training images to
``volume`` in every fold (:func:`tmdafm_core.training.limit_training_images`: whole samples first) and keeps its
validation images whole. The other classes and the test set stay whole either way. ``"full"`` keeps everything and
is always run, since Sequential mode builds on it.

Layout of ``out_dir``::

    results.csv                              tidy: one row per task x mode x class count x volume x partition
    study.json                               order, volumes, tasks, modes, training settings
    <task>/<mode>/<n>cls_<volume>/           run directories (config.json, metrics.json, fold<k>.pt, ...)
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import progress as progress_reports
from .data import PAPER_MATERIALS, LabelSpace
from .data.splits import fold_training_positions
from .layout import MODES
from .parallel import shared_pools
from .study_runs import (
    StudyImages,
    finished_folds,
    metric_rows,
    progress_bar,
    shared_split,
    study_tasks,
    with_threads,
    write_study_json,
)
from .training import HEAD_STARTS, METRICS_NAME, checkpoint_path, cross_validate

FULL = "full"
DEFAULT_VOLUMES = (FULL, 64, 32, 16, 8)
RESULTS_NAME, STUDY_NAME = "results.csv", "study.json"
RESULT_COLUMNS = ("n_classes", "mode", "task", "volume", "split", "f1_mean", "f1_std", "accuracy_mean",
                  "accuracy_std", "new_class", "new_class_train_images", "run", "diff_mean", "diff_low", "diff_high")


def parse_order(order, materials) -> tuple[str, ...]:
    """Check a class order against the materials of a data set.

    Parameters
    ----------
    order : str or sequence of str
        Material names, or one comma-separated string (``"MoS2,WS2,WSe2"``).
    materials : iterable of str
        Materials present in the data set.

    Returns
    -------
    tuple of str
    """
    if isinstance(order, str):
        order = [part.strip() for part in order.split(",") if part.strip()]
    order = tuple(order)
    present = sorted({m for m in materials if isinstance(m, str)})
    unknown = [name for name in order if name not in present]
    if unknown:
        raise ValueError(f"order: class {unknown[0]!r} is not in the data set (classes: {', '.join(present)})")
    if len(set(order)) != len(order):
        twice = next(name for name in order if order.count(name) > 1)
        raise ValueError(f"order: class {twice!r} is listed twice; name each class once")
    if len(order) < 2:
        raise ValueError(f"order: need at least 2 classes to add one at a time, got {len(order)}")
    return order


def parse_volumes(volumes) -> tuple:
    """Volumes of the sweep: ``"full"`` and/or image counts >= 1; ``"full"`` first (it is always run).

    Parameters
    ----------
    volumes : str or sequence of (str or int)
        e.g. ``"full,64,32,16,8"`` or ``("full", 64, 32)``.
    """
    if isinstance(volumes, str):
        volumes = [part.strip() for part in volumes.split(",") if part.strip()]
    counts = []
    for value in volumes:
        if isinstance(value, str) and value.lower() == FULL:
            continue
        try:
            count = int(value)
            if isinstance(value, bool) or count != float(value):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"volumes: {value!r} is neither 'full' nor a whole number of images") from None
        if count < 1:
            raise ValueError(f"volumes: {count} images; a volume must be >= 1 image")
        if count not in counts:
            counts.append(count)
    return (FULL, *counts)


def stage_dir(out_dir, task: str, mode: str, n_classes: int, volume) -> Path:
    """Run directory of one stage: ``out_dir/<task>/<mode>/<n>cls_<volume>``."""
    return Path(out_dir) / task / mode / f"{n_classes}cls_{volume}"


@dataclass(frozen=True)
class Stage:
    """One run of the study.

    ``start`` is the run whose fold checkpoints this one starts from (Sequential mode), else None.
    """

    task: str
    mode: str
    n_classes: int
    volume: object
    classes: tuple
    run_dir: Path
    start: Path | None

    @property
    def new_class(self) -> str:
        return self.classes[-1]


def plan_stages(out_dir, order, volumes, tasks, modes, *,
                keeps_all=None) -> tuple[list[Stage], list[tuple[Stage, str]]]:
    """Runs to train, in an order that trains every starting point first, and the (run, mode) pairs to report.

    The 2-class ImageNet runs are trained whenever either mode is asked for (they start the Sequential chain);
    Sequential at 2 classes reports those runs. ``keeps_all(classes, volume)``, when given, says that a cut keeps
    every training image of the new class in every fold: that volume is then the full-volume run (reported with
    its own volume label, trained once).
    """
    out_dir = Path(out_dir)
    train, report = [], []

    def stage(task, mode, n, volume, start):
        classes = tuple(order[:n])
        same = volume != FULL and keeps_all is not None and keeps_all(classes, volume)
        run_dir = stage_dir(out_dir, task, mode, n, FULL if same else volume)
        return Stage(task, mode, n, volume, classes, run_dir, start), same

    for task in tasks:
        for n in range(2, len(order) + 1):
            for volume in volumes:
                imagenet, same = stage(task, "imagenet", n, volume, None)
                if (n == 2 or "imagenet" in modes) and not same:
                    train.append(imagenet)
                if "imagenet" in modes:
                    report.append((imagenet, "imagenet"))
                if "sequential" in modes and n == 2:
                    report.append((imagenet, "sequential"))
            if "sequential" not in modes or n == 2:
                continue
            previous = stage_dir(out_dir, task, "imagenet" if n == 3 else "sequential", n - 1, FULL)
            for volume in volumes:
                sequential, same = stage(task, "sequential", n, volume, previous)
                if not same:
                    train.append(sequential)
                report.append((sequential, "sequential"))
    return train, report


#: What a volume N of the new class means: ``paper``, N random images of its train + validation pool (so every
#: fold's train and validation images of it total N); ``train-samples``, N training images per fold, whole samples
#: first (validation stays whole).
VOLUME_MODES = ("paper", "train-samples")


@with_threads
def sequential_study(data: pd.DataFrame, out_dir, *, order=PAPER_MATERIALS, volumes=DEFAULT_VOLUMES,
                     task: str = "mtc", modes=MODES, progress: bool = False, head: str = "reset",
                     volume_mode: str = "paper", **train) -> pd.DataFrame:
    """Add classes one at a time and compare ImageNet with Sequential starting weights over a volume sweep.

    Parameters
    ----------
    data : DataFrame
        Tidy labelled image manifest (``read_dataset``). Classes outside ``order`` are left out.
    out_dir : str or Path
        Study folder (module docstring); an interrupted study resumes where it stopped.
    order : sequence of str or str
        Classes in the order they are added (>= 2); default the paper's.
    volumes : sequence or str
        ``"full"`` and/or numbers of training images of the new class (``parse_volumes``).
    task : {"mtc", "mtl", "both"}
    modes : sequence of {"imagenet", "sequential"}
    progress : bool or callable
        tqdm bar over stages x folds on stderr, with an ETA (True), or ``progress("training the study's folds",
        done, total)`` after each stage (:mod:`tmdafm_core.progress`).
    head : {"reset", "keep"}
        Sequential MtC stages: a fresh ``Linear(100, n)`` output layer (``reset``, the paper's) or the previous
        stage's rows of the known classes (``keep``).
    volume_mode : {"paper", "train-samples"}
        Meaning of a volume (:data:`VOLUME_MODES`); the paper's by default.
    threads : int, optional
        torch CPU threads while the study runs (the demo profile uses 1); default: torch's setting.
    **train
        :func:`tmdafm_core.training.cross_validate` keywords (``arch``, ``weights`` — the base weights, ``epochs``,
        ``folds``, ``lr``, ``batch_size``, ``dropout``, ``image_size``, ``device``, ``seed``, ...), e.g. from
        :func:`~tmdafm_core.profiles.recipe_options`.

    Returns
    -------
    DataFrame
        The table written to ``results.csv``: columns ``RESULT_COLUMNS``; ``volume`` is ``"full"`` or a number
        (as text), ``new_class_train_images`` the mean over folds of the new class's training images, ``run`` the
        run directory relative to ``out_dir``; f1 is macro-F1; means and sample std over folds.
    """
    for reserved in ("task", "labels", "presplit", "fold_weights", "train_limits", "images", "dask_address"):
        if reserved in train:
            raise ValueError(f"sequential_study sets {reserved!r} itself; do not pass it")
    if volume_mode not in VOLUME_MODES:
        raise ValueError(f"volume_mode must be one of {', '.join(VOLUME_MODES)}, got {volume_mode!r}")
    if head not in HEAD_STARTS:
        raise ValueError(f"head must be one of {', '.join(HEAD_STARTS)}, got {head!r}")
    order = parse_order(order, data["material"].dropna())
    volumes = parse_volumes(volumes)
    tasks = study_tasks(task)
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {', '.join(MODES)}, got {modes}")
    out_dir = Path(out_dir)
    options = {"seed": 0, "folds": 5, **train, "head": head, "volume_mode": volume_mode}
    folds = options["folds"]

    study = data[data["material"].isin(order)].reset_index(drop=True)
    split = shared_split(study, options)
    # MtL: the element outputs of the whole study at every stage, so they carry over whole.
    elements = LabelSpace.from_materials(order).elements
    stages, report = plan_stages(out_dir, order, volumes, tasks, modes,
                                 keeps_all=functools.partial(_cut_keeps_all, split, options))
    recorded = {k: v for k, v in options.items() if k != "fold_jobs"}  # speed, not results
    write_study_json(out_dir / STUDY_NAME, {"order": list(order), "volumes": list(volumes), "tasks": list(tasks),
                                            "modes": list(modes), "train": recorded, "n_images": len(split)})

    done = sum(finished_folds(stage.run_dir, folds) for stage in stages)
    folds_done = progress if callable(progress) else None
    progress = progress is True
    study_images = StudyImages(split, options, progress)
    bar = progress_bar(len(stages) * folds, done, "sequential study", progress)
    progress_reports.report(folds_done, "training the study's folds", done, len(stages) * folds)
    try:
        with shared_pools():  # the folds of all runs train in the same two worker processes
            for stage in stages:
                bar.set_postfix_str(f"{stage.task} {stage.mode} {stage.n_classes} classes, volume {stage.volume}")
                before = finished_folds(stage.run_dir, folds)
                stored, sized = study_images.for_run(before < folds)
                _train_stage(stage, split, stored, elements, {**options, **sized}, progress)
                bar.update(folds - before)
                progress_reports.report(folds_done, "training the study's folds", bar.n, len(stages) * folds)
                _write_results(out_dir, report, split, options)
    finally:
        bar.close()
    return _write_results(out_dir, report, split, options)


def _new_class_pool(split: pd.DataFrame, new_class: str, seed: int) -> np.ndarray:
    """Rows of the new class's train + validation images in a seeded random order (a volume N takes the first N,
    so smaller volumes are subsets of larger ones)."""
    pool = np.flatnonzero(((split["material"] == new_class) & (split["split"] != "test")).to_numpy())
    return np.random.default_rng([seed, 7919]).permutation(pool)


def _stage_rows(split: pd.DataFrame, classes, volume, options: dict) -> np.ndarray:
    """Rows of a stage's classes; with the paper's volume mode, only ``volume`` random train + validation images
    of the new class (its test images stay)."""
    rows = np.flatnonzero(split["material"].isin(classes).to_numpy())
    if volume == FULL or options["volume_mode"] != "paper":
        return rows
    dropped = _new_class_pool(split, classes[-1], options.get("seed", 0))[int(volume):]
    return np.setdiff1d(rows, dropped)


def _train_limits(stage: Stage, options: dict) -> dict | None:
    if stage.volume == FULL or options["volume_mode"] == "paper":
        return None
    return {stage.new_class: int(stage.volume)}


def _train_stage(stage: Stage, split, stored, elements, options, progress) -> dict:
    rows = _stage_rows(split, stage.classes, stage.volume, options)
    frame = split.iloc[rows].reset_index(drop=True)
    frame.attrs = dict(split.attrs)
    labels = LabelSpace(LabelSpace.from_materials(stage.classes).classes, elements)
    fold_weights = None
    if stage.start is not None:
        fold_weights = {k: str(checkpoint_path(stage.start, k)) for k in range(options["folds"])}
    run_options = {k: v for k, v in options.items() if k != "volume_mode"}
    return cross_validate(frame, stage.run_dir, task=stage.task, labels=labels, presplit=True,
                          fold_weights=fold_weights, train_limits=_train_limits(stage, options),
                          images=None if stored is None else stored[rows], save_optimizer=False,
                          progress=progress, **run_options)


def _cut_keeps_all(split: pd.DataFrame, options: dict, classes, volume) -> bool:
    """Whether cutting the new class to ``volume`` leaves the stage's training (and validation) images as they are."""
    if options["volume_mode"] == "paper":
        return len(_new_class_pool(split, classes[-1], options.get("seed", 0))) <= int(volume)
    is_new = (split["material"] == classes[-1]).to_numpy()
    return all(is_new[fold_training_positions(split, fold)].sum() <= int(volume) for fold in range(options["folds"]))


def _new_class_train_images(split: pd.DataFrame, stage: Stage, options: dict) -> float:
    frame = split.iloc[_stage_rows(split, stage.classes, stage.volume, options)].reset_index(drop=True)
    limits = _train_limits(stage, options)
    counts = []
    for fold in range(options["folds"]):
        train = fold_training_positions(frame, fold, train_limits=limits, seed=options.get("seed", 0))
        counts.append(int((frame["material"].to_numpy()[train] == stage.new_class).sum()))
    return float(np.mean(counts))


def _write_results(out_dir: Path, report, split, options) -> pd.DataFrame:
    rows = []
    for stage, mode in report:
        path = stage.run_dir / METRICS_NAME
        if not path.is_file():
            continue
        metrics = json.loads(path.read_text())
        rows += metric_rows(metrics, n_classes=stage.n_classes, mode=mode, task=stage.task,
                            volume=str(stage.volume), new_class=stage.new_class,
                            new_class_train_images=_new_class_train_images(split, stage, options),
                            run=stage.run_dir.relative_to(out_dir).as_posix())
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    _paired_differences(table, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / RESULTS_NAME, index=False)
    return table


def _paired_differences(table: pd.DataFrame, out_dir: Path) -> None:
    """On each Sequential row: Sequential − ImageNet macro-F1 fold by fold, its mean and 95 % t interval
    (:mod:`tmdafm_core.comparisons`); both arms of a stage train on the same folds. None at the first stage, where
    both arms are the same run: there is nothing to compare, and a 0 there would count as a comparison made."""
    from .comparisons import paired_difference

    keys = ["task", "n_classes", "volume", "split"]
    imagenet = table[table["mode"] == "imagenet"].set_index(keys)["run"]
    for index, row in table[table["mode"] == "sequential"].iterrows():
        key = tuple(row[k] for k in keys)
        if key in imagenet.index and imagenet.loc[key] != row["run"]:
            table.loc[index, ["diff_mean", "diff_low", "diff_high"]] = paired_difference(
                out_dir / imagenet.loc[key], out_dir / row["run"], split=row["split"])


def results_table(results: pd.DataFrame, *, split: str = "test", metric: str = "f1") -> pd.DataFrame:
    """The study at a glance: rows task x class count x volume, one ``mean ± std`` column per mode (in %)."""
    part = results[results["split"] == split]
    cell = part.assign(value=[f"{100 * m:5.1f} ± {100 * s:4.1f}" if not math.isnan(m) else "n/a"
                              for m, s in zip(part[f"{metric}_mean"], part[f"{metric}_std"], strict=True)])
    volume_order = {v: i for i, v in enumerate(dict.fromkeys(results["volume"]))}
    table = cell.pivot_table(index=["task", "n_classes", "volume"], columns="mode", values="value", aggfunc="first")
    table = table.reset_index()
    table = table.sort_values(["task", "n_classes", "volume"], key=lambda c: c.map(volume_order)
                              if c.name == "volume" else c, kind="stable")
    table.columns.name = None
    return table.reset_index(drop=True)
