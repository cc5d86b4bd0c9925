"""The paper's experiments on any data set, built on :mod:`tmdafm_core.training`.

* :func:`sequential_study` — classes added one at a time (2 -> 3 -> ... in a given order), "ImageNet" versus
  "Sequential" starting weights, with a training-volume sweep of the newly added class (paper Figures 4 and 5).
* :func:`compare_architectures` — architectures x weight versions, ImageNet top-1 beside our scores (paper
  Table 3), and MtC versus MtL on the same folds (Table 4).
* :func:`ablation_study` — fine-tuning versus the feature-extraction MLP versus training from scratch (Table 2).

Every experiment is a set of ordinary run directories (:func:`tmdafm_core.training.cross_validate`), so it is
resumable (finished folds are not retrained), seeded, and every stage can be loaded with ``load_run``. All runs of
one experiment share one split of the data set (by sample, seeded), so their folds are comparable.

Sequential study
----------------
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

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import progress as progress_reports
from .data import PAPER_MATERIALS, FeatureTable, LabelSpace
from .data.splits import fold_training_positions, prepare_split
from .layout import ABLATION_MODES, ABLATION_NAME, MODES
from .models import ARCHITECTURES, WEIGHT_CHOICES
from .parallel import shared_pools
from .profiles import RECIPES, recipe_options
from .store import write_json
from .training import (
    HEAD_STARTS,
    METRICS_NAME,
    PARTITIONS,
    SPLITS_NAME,
    TASKS,
    checkpoint_path,
    cross_validate,
    default_image_size,
    extract,
    load_data,
)

FULL = "full"
DEFAULT_VOLUMES = (FULL, 64, 32, 16, 8)
RESULTS_NAME, STUDY_NAME = "results.csv", "study.json"
RESULT_COLUMNS = ("n_classes", "mode", "task", "volume", "split", "f1_mean", "f1_std", "accuracy_mean",
                  "accuracy_std", "new_class", "new_class_train_images", "run", "diff_mean", "diff_low", "diff_high")
ARCHITECTURES_NAME = "architectures.csv"

#: The model of the paper's Table 2 (fine-tuning vs feature extraction vs scratch).
PAPER_ABLATION_MODEL = {"arch": "resnet18", "weights": "imagenet-v1"}

#: Earlier names of the training recipes (:mod:`tmdafm_core.profiles`), kept importable.
PROFILES, profile_options = RECIPES, recipe_options


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


def _with_threads(function):
    """Give an experiment a ``threads=`` keyword (see :func:`torch_threads`)."""
    @functools.wraps(function)
    def run(*args, threads: int | None = None, **kwargs):
        with torch_threads(threads):
            return function(*args, **kwargs)
    return run


# --- shared helpers ---------------------------------------------------------------------------------------------

def _metric_rows(metrics: dict, **keys) -> list[dict]:
    """One tidy row per partition: ``keys`` + f1/accuracy mean and std."""
    return [{**keys, "split": split,
             "f1_mean": metrics["f1_macro"][split]["mean"], "f1_std": metrics["f1_macro"][split]["std"],
             "accuracy_mean": metrics["accuracy"][split]["mean"],
             "accuracy_std": metrics["accuracy"][split]["std"]} for split in PARTITIONS]


def _progress_bar(total: int, done: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # initial= makes the rate (and so the ETA) count only folds trained in this session.
    return tqdm(total=total, initial=done, desc=desc, unit="fold", disable=not enabled, dynamic_ncols=True)


def _finished_folds(run_dir: Path, folds: int) -> int:
    return sum(checkpoint_path(run_dir, k).is_file() for k in range(folds))


def _shared_split(data: pd.DataFrame, options: dict) -> pd.DataFrame:
    split, _ = prepare_split(data, folds=options.get("folds", 5), test_fraction=options.get("test_fraction", 0.1),
                             seed=options.get("seed", 0))
    return split.reset_index(drop=True)


def _load_images(split: pd.DataFrame, options: dict, progress: bool):
    """Every image of the study read once; each run gets its rows (``images=``) instead of re-reading files."""
    image_size = int(options.get("image_size") or default_image_size(split))
    return load_data(split, image_size=image_size, progress=progress), image_size


def _write_json(path: Path, document: dict) -> None:
    write_json(path, document, indent=2, sort_keys=False, default=str)


# --- sequential study -------------------------------------------------------------------------------------------

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


def _tasks(task: str) -> tuple[str, ...]:
    if task == "both":
        return TASKS
    if task not in TASKS:
        raise ValueError(f"task must be mtc, mtl or both, got {task!r}")
    return (task,)


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


@_with_threads
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
    tasks = _tasks(task)
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes must be a non-empty subset of {', '.join(MODES)}, got {modes}")
    out_dir = Path(out_dir)
    options = {"seed": 0, "folds": 5, **train, "head": head, "volume_mode": volume_mode}
    folds = options["folds"]

    study = data[data["material"].isin(order)].reset_index(drop=True)
    split = _shared_split(study, options)
    # MtL: the element outputs of the whole study at every stage, so they carry over whole.
    elements = LabelSpace.from_materials(order).elements
    stages, report = plan_stages(out_dir, order, volumes, tasks, modes,
                                 keeps_all=functools.partial(_cut_keeps_all, split, options))
    recorded = {k: v for k, v in options.items() if k != "fold_jobs"}  # speed, not results
    _write_json(out_dir / STUDY_NAME, {"order": list(order), "volumes": list(volumes), "tasks": list(tasks),
                                       "modes": list(modes), "train": recorded, "n_images": len(split)})

    done = sum(_finished_folds(stage.run_dir, folds) for stage in stages)
    stored, image_size = (None, None)
    folds_done = progress if callable(progress) else None
    progress = progress is True
    bar = _progress_bar(len(stages) * folds, done, "sequential study", progress)
    progress_reports.report(folds_done, "training the study's folds", done, len(stages) * folds)
    try:
        with shared_pools():  # the folds of all runs train in the same two worker processes
            for stage in stages:
                bar.set_postfix_str(f"{stage.task} {stage.mode} {stage.n_classes} classes, volume {stage.volume}")
                before = _finished_folds(stage.run_dir, folds)
                if before < folds and stored is None:
                    stored, image_size = _load_images(split, options, progress)
                _train_stage(stage, split, stored, image_size, elements, options, progress)
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


def _train_stage(stage: Stage, split, stored, image_size, elements, options, progress) -> dict:
    rows = _stage_rows(split, stage.classes, stage.volume, options)
    frame = split.iloc[rows].reset_index(drop=True)
    frame.attrs = dict(split.attrs)
    labels = LabelSpace(LabelSpace.from_materials(stage.classes).classes, elements)
    fold_weights = None
    if stage.start is not None:
        fold_weights = {k: str(checkpoint_path(stage.start, k)) for k in range(options["folds"])}
    run_options = {k: v for k, v in options.items() if k != "volume_mode"}
    if image_size:
        run_options["image_size"] = image_size
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
        rows += _metric_rows(metrics, n_classes=stage.n_classes, mode=mode, task=stage.task,
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
    (:mod:`tmdafm_core.comparisons`); both arms of a stage train on the same folds."""
    from .comparisons import paired_difference

    keys = ["task", "n_classes", "volume", "split"]
    imagenet = table[table["mode"] == "imagenet"].set_index(keys)["run"]
    for index, row in table[table["mode"] == "sequential"].iterrows():
        key = tuple(row[k] for k in keys)
        if key in imagenet.index:
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


# --- architecture comparison (Tables 3 and 4) -------------------------------------------------------------------

def imagenet_top1(arch: str, weights: str) -> float:
    """ImageNet-1K top-1 accuracy (%) of torchvision weights from their metadata (offline); NaN for others."""
    from torchvision.models import get_model_weights

    from .models import _WEIGHT_ENUM_NAMES  # the one place that names torchvision's enum members

    if weights not in _WEIGHT_ENUM_NAMES:
        return float("nan")
    member = get_model_weights(arch).__members__.get(_WEIGHT_ENUM_NAMES[weights])
    return float(member.meta["_metrics"]["ImageNet-1K"]["acc@1"]) if member is not None else float("nan")


def _weights_label(weights: str) -> str:
    return weights if weights in WEIGHT_CHOICES else Path(weights).stem


def _wide_scores(metrics: dict) -> dict:
    row = {}
    for metric, name in (("accuracy", "accuracy"), ("f1_macro", "f1")):
        for split in PARTITIONS:
            row[f"{name}_{split}_mean"] = metrics[metric][split]["mean"]
            row[f"{name}_{split}_std"] = metrics[metric][split]["std"]
    if metrics["task"] == "mtl":
        values = [fold["element_accuracy"]["test"] for fold in metrics["per_fold"]]
        row["element_accuracy_test_mean"] = float(np.mean(values))
    return row


@_with_threads
def compare_architectures(data: pd.DataFrame, out_dir, *, archs=ARCHITECTURES, weights=("imagenet-v1", "imagenet-v2"),
                          task: str = "both", progress: bool = False, **train) -> pd.DataFrame:
    """Cross-validate every architecture x weight version on one shared split (paper Tables 3 and 4).

    Parameters
    ----------
    data : DataFrame
        Tidy labelled image manifest.
    out_dir : str or Path
        Runs go to ``out_dir/<task>/<arch>_<weights>``; the table to ``out_dir/architectures.csv``.
    archs : sequence of str
    weights : sequence of str
        ``imagenet-v1``, ``imagenet-v2``, ``none`` or checkpoint paths. Combinations torchvision does not have
        (V2 for ResNet18/34) are left out when other combinations remain.
    task : {"mtc", "mtl", "both"}
        ``both`` trains MtC and MtL on the same folds (Table 4).
    progress : bool
    **train
        Other ``cross_validate`` keywords (``epochs``, ``folds``, ``image_size``, ...).

    Returns
    -------
    DataFrame
        One row per arch x weights x task: ``imagenet_top1`` (%, NaN without ImageNet weights), accuracy and
        macro-F1 mean/std per partition, ``element_accuracy_test_mean`` (MtL), ``run``.
    """
    from .models import check_arch, imagenet_weights

    archs = [check_arch(a) for a in archs]
    weights = list(weights)
    if not archs or not weights:
        raise ValueError("give at least one architecture and one weights version")
    combos, skipped = [], []
    for arch in archs:
        for version in weights:
            if version == "imagenet-v2":
                try:
                    imagenet_weights(arch, version)
                except ValueError as exc:
                    skipped.append(str(exc))
                    continue
            combos.append((arch, version))
    if not combos:
        raise ValueError(skipped[0])
    tasks = _tasks(task)
    options = {"seed": 0, "folds": 5, **train}
    out_dir = Path(out_dir)
    split = _shared_split(data, options)
    runs = [(t, arch, version, out_dir / t / f"{arch}_{_weights_label(version)}")
            for t in tasks for arch, version in combos]
    stored, image_size = None, None
    rows = []
    bar = _progress_bar(len(runs) * options["folds"], sum(_finished_folds(r[3], options["folds"]) for r in runs),
                        "architectures", progress)
    try:
        for t, arch, version, run_dir in runs:
            bar.set_postfix_str(f"{t} {arch} {version}")
            before = _finished_folds(run_dir, options["folds"])
            if before < options["folds"] and stored is None:
                stored, image_size = _load_images(split, options, progress)
            run_options = {**options, "arch": arch, "weights": version}
            if image_size:
                run_options["image_size"] = image_size
            metrics = cross_validate(split, run_dir, task=t, presplit=True, images=stored, save_optimizer=False,
                                     progress=progress, **run_options)
            bar.update(options["folds"] - before)
            rows.append({"arch": arch, "weights": version, "imagenet_top1": imagenet_top1(arch, version), "task": t,
                         **_wide_scores(metrics), "run": run_dir.relative_to(out_dir).as_posix()})
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    table.attrs["skipped"] = skipped
    table.to_csv(out_dir / ARCHITECTURES_NAME, index=False)
    return table


def task_comparison(table: pd.DataFrame, *, split: str = "test") -> pd.DataFrame:
    """MtC versus MtL per architecture and weights (paper Table 4), from :func:`compare_architectures`'s table."""
    columns = [f"accuracy_{split}_mean", f"f1_{split}_mean"]
    wide = table.pivot_table(index=["arch", "weights"], columns="task", values=columns, aggfunc="first", sort=False)
    wide.columns = [f"{task}_{name.rsplit('_', 1)[0]}" for name, task in wide.columns]
    return wide.reset_index()


# --- ablation (Table 2) -----------------------------------------------------------------------------------------

@_with_threads
def ablation_study(data: pd.DataFrame, out_dir, *, arch: str = "resnet18", weights: str = "imagenet-v1",
                   task: str = "mtc", progress: bool = False, given: dict | None = None, **train) -> pd.DataFrame:
    """Fine-tuning vs the feature-extraction MLP vs training from scratch, on one shared split (paper Table 2).

    ``fine-tune`` trains the whole network from ``weights``; ``feature-extraction`` trains the paper's MLP head on
    the pooled features of the frozen ``weights`` backbone (:func:`tmdafm_core.training.extract`); ``scratch``
    trains the whole network from random weights.

    Parameters
    ----------
    data : DataFrame
        Tidy labelled image manifest.
    out_dir : str or Path
        Runs in ``out_dir/<mode>``; backbone features cached in ``out_dir/feature-extraction/backbone.parquet``;
        the table in ``out_dir/ablation.csv``.
    arch : str
    weights : str
        Pretrained starting weights (``imagenet-v1``, ``imagenet-v2`` or a path); not ``none``, which would make
        fine-tuning the same as scratch.
    task : {"mtc", "mtl"}
    progress : bool
    given : dict, optional
        ``{mode: run directory}`` of finished runs that stand in for a mode (a store's MtC run for ``fine-tune``):
        used only when trained on exactly this split (its ``splits.csv``), else the mode is trained here.
    **train
        Other ``cross_validate`` keywords.

    Returns
    -------
    DataFrame
        Tidy: ``mode``, ``task``, ``split``, f1/accuracy mean and std, ``run`` (the run directory relative to
        ``out_dir``).
    """
    if str(weights) == "none":
        raise ValueError("ablation compares pretrained weights with scratch training; --weights none leaves nothing "
                         "to compare (use imagenet-v1, imagenet-v2 or a weights file)")
    if task not in TASKS:
        raise ValueError(f"task must be mtc or mtl, got {task!r}")
    options = {"seed": 0, "folds": 5, **train}
    out_dir = Path(out_dir)
    split = _shared_split(data, options)
    folds = options["folds"]
    bar = _progress_bar(len(ABLATION_MODES) * folds,
                        sum(_finished_folds(out_dir / m, folds) for m in ABLATION_MODES), "ablation", progress)
    stored, image_size = None, None
    rows = []
    given = {mode: Path(run) for mode, run in (given or {}).items() if _trained_on(Path(run), split)}
    try:
        for mode in ABLATION_MODES:
            run_dir = given.get(mode, out_dir / mode)
            bar.set_postfix_str(mode)
            before = _finished_folds(run_dir, folds)
            if mode in given:
                metrics = json.loads((run_dir / METRICS_NAME).read_text())
            elif mode == "feature-extraction":
                table = _backbone_features(split, run_dir, arch, weights, options, progress)
                mlp_options = {k: v for k, v in options.items() if k not in ("arch", "weights", "image_size")}
                metrics = cross_validate(table, run_dir, task=task, presplit=True, progress=progress, tune=True,
                                         **mlp_options)
            else:
                if before < folds and stored is None:
                    stored, image_size = _load_images(split, options, progress)
                run_options = {**options, "arch": arch, "weights": weights if mode == "fine-tune" else "none"}
                if image_size:
                    run_options["image_size"] = image_size
                metrics = cross_validate(split, run_dir, task=task, presplit=True, images=stored, save_optimizer=False,
                                         progress=progress, **run_options)
            bar.update(folds - before)
            rows += _metric_rows(metrics, mode=mode, task=task,
                                 run=Path(os.path.relpath(run_dir.resolve(), out_dir.resolve())).as_posix())
    finally:
        bar.close()
    result = pd.DataFrame(rows)
    result.to_csv(out_dir / ABLATION_NAME, index=False)
    return result


def _trained_on(run_dir: Path, split: pd.DataFrame) -> bool:
    """Whether a finished run was cross-validated on exactly this split (same images, partitions and folds)."""
    if not (run_dir / METRICS_NAME).is_file() or not (run_dir / SPLITS_NAME).is_file():
        return False
    columns = ["image", "split", "fold"]
    kept = pd.read_csv(run_dir / SPLITS_NAME, dtype={"image": str})
    if not set(columns) <= set(kept.columns):
        return False
    ours = split[columns].astype({"image": str}).sort_values("image").reset_index(drop=True)
    theirs = kept[columns].sort_values("image").reset_index(drop=True)
    return ours.astype(str).equals(theirs.astype(str))


def store_ablation(store, *, weights: str | None = None, progress: bool = False) -> pd.DataFrame:
    """The paper's Table 2 on a store's own data: fine-tuning vs feature extraction vs scratch (MtC).

    Everything as the store's MtC run was trained (its profile's run options, folds and split; the demo: from the
    store's AFM-pretrained backbone), which stands in as the fine-tuning arm; the feature-extraction MLP and the
    scratch run are trained into ``STORE/ablation``, where the app's /performance page shows the table with paired
    fold differences.

    Parameters
    ----------
    store : str or Path
        A built store (``tmdafm precompute``) with its MtC run.
    weights : str, optional
        Pretrained starting weights instead of the store's (needed when its runs train from scratch).
    progress : bool
        Show bars on stderr.

    Returns
    -------
    DataFrame
        As :func:`ablation_study`; also written to ``STORE/ablation/ablation.csv``.
    """
    from .layout import StoreLayout, load_manifest

    layout = StoreLayout(store)
    options = store_ablation_options(store, weights=weights)
    reuse = {"fine-tune": layout.run("mtc")} if weights is None else {}
    jobs = layout.recorded_profile().train_options.get("fold_jobs")
    return ablation_study(load_manifest(store), layout.ablation, task="mtc", progress=progress, given=reuse,
                          **({"fold_jobs": jobs} if jobs else {}), **options)


def store_ablation_options(store, *, weights: str | None = None) -> dict:
    """The ``cross_validate`` keywords :func:`store_ablation` trains with: the store's MtC run options (its backbone
    file for the profile's own), ``weights`` instead of its start when given. ValueError when the store has no MtC
    run or no pretrained start."""
    from .layout import StoreLayout
    from .steps import run_training_options, with_backbone

    layout = StoreLayout(store)
    profile = layout.recorded_profile()
    if profile is None or not layout.run_metrics("mtc").is_file():
        raise ValueError(f"{store}: no MtC run in this store; build it first with `{layout.build_command('mtc')}`")
    options = with_backbone(store, run_training_options(profile))
    if weights is not None:
        options["weights"] = weights
    if str(options.get("weights", "none")) == "none":
        raise ValueError(f"{store}: the store's runs train from scratch, so there are no pretrained weights to "
                         "compare; give some (`tmdafm ablation --weights`: imagenet-v1, imagenet-v2 or a backbone "
                         "file)")
    return options


def _backbone_features(split: pd.DataFrame, run_dir: Path, arch, weights, options, progress) -> FeatureTable:
    """Frozen-backbone features of every image, cached beside the MLP run and reused while the settings match."""
    image_size = int(options.get("image_size") or default_image_size(split))
    cache, key_path = run_dir / "backbone.parquet", run_dir / "backbone.json"
    key = {"arch": arch, "weights": str(weights), "image_size": image_size, "images": split["image"].tolist()}
    if cache.is_file() and key_path.is_file() and json.loads(key_path.read_text()) == key:
        table = pd.read_parquet(cache)
    else:
        table = extract(split, arch=arch, weights=weights, image_size=image_size, device=options.get("device", "cpu"),
                        progress=progress)
        run_dir.mkdir(parents=True, exist_ok=True)
        table.to_parquet(cache, index=False)
        _write_json(key_path, key)
    names = [c for c in table.columns if c.startswith("f") and c[1:].isdigit()]
    frame = split[["image", "sample_id", "material", "split", "fold"]].reset_index(drop=True)
    return FeatureTable(frame, table[names].to_numpy(np.float32), names)
