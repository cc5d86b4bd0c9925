"""The paper's experiments on any data set, built on :mod:`tmdafm_core.training`; the sequential study (Figures 4
and 5) is in :mod:`tmdafm_core.sequential` and shares their run plumbing (:mod:`tmdafm_core.study_runs`).

* :func:`compare_architectures` — architectures x weight versions, ImageNet top-1 beside our scores (paper
  Table 3), and MtC versus MtL on the same folds (Table 4).
* :func:`ablation_study` — fine-tuning versus the feature-extraction MLP versus training from scratch (Table 2).

Every experiment is a set of ordinary run directories (:func:`tmdafm_core.training.cross_validate`), so it is
resumable (finished folds are not retrained), seeded, and every stage can be loaded with ``load_run``. All runs of
one experiment share one split of the data set (by sample, seeded), so their folds are comparable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .data import FeatureTable
from .layout import ABLATION_MODES, ABLATION_NAME
from .models import ARCHITECTURES, WEIGHT_CHOICES
from .profiles import RECIPES, recipe_options
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
from .training import (
    METRICS_NAME,
    PARTITIONS,
    SPLITS_NAME,
    TASKS,
    cross_validate,
    default_image_size,
    extract,
)

ARCHITECTURES_NAME = "architectures.csv"

#: The model of the paper's Table 2 (fine-tuning vs feature extraction vs scratch).
PAPER_ABLATION_MODEL = {"arch": "resnet18", "weights": "imagenet-v1"}

#: Earlier names of the training recipes (:mod:`tmdafm_core.profiles`), kept importable.
PROFILES, profile_options = RECIPES, recipe_options


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


@with_threads
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
    tasks = study_tasks(task)
    options = {"seed": 0, "folds": 5, **train}
    out_dir = Path(out_dir)
    split = shared_split(data, options)
    runs = [(t, arch, version, out_dir / t / f"{arch}_{_weights_label(version)}")
            for t in tasks for arch, version in combos]
    study_images = StudyImages(split, options, progress)
    rows = []
    bar = progress_bar(len(runs) * options["folds"], sum(finished_folds(r[3], options["folds"]) for r in runs),
                       "architectures", progress)
    try:
        for t, arch, version, run_dir in runs:
            bar.set_postfix_str(f"{t} {arch} {version}")
            before = finished_folds(run_dir, options["folds"])
            stored, sized = study_images.for_run(before < options["folds"])
            metrics = cross_validate(split, run_dir, task=t, presplit=True, images=stored, save_optimizer=False,
                                     progress=progress, **{**options, "arch": arch, "weights": version, **sized})
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

@with_threads
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
    split = shared_split(data, options)
    folds = options["folds"]
    bar = progress_bar(len(ABLATION_MODES) * folds,
                       sum(finished_folds(out_dir / m, folds) for m in ABLATION_MODES), "ablation", progress)
    study_images = StudyImages(split, options, progress)
    rows = []
    given = {mode: Path(run) for mode, run in (given or {}).items() if _trained_on(Path(run), split)}
    try:
        for mode in ABLATION_MODES:
            run_dir = given.get(mode, out_dir / mode)
            bar.set_postfix_str(mode)
            before = finished_folds(run_dir, folds)
            if mode in given:
                metrics = json.loads((run_dir / METRICS_NAME).read_text())
            elif mode == "feature-extraction":
                table = _backbone_features(split, run_dir, arch, weights, options, progress)
                mlp_options = {k: v for k, v in options.items() if k not in ("arch", "weights", "image_size")}
                metrics = cross_validate(table, run_dir, task=task, presplit=True, progress=progress, tune=True,
                                         **mlp_options)
            else:
                stored, sized = study_images.for_run(before < folds)
                run_options = {**options, "arch": arch, "weights": weights if mode == "fine-tune" else "none", **sized}
                metrics = cross_validate(split, run_dir, task=task, presplit=True, images=stored, save_optimizer=False,
                                         progress=progress, **run_options)
            bar.update(folds - before)
            rows += metric_rows(metrics, mode=mode, task=task,
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
        write_study_json(key_path, key)
    names = [c for c in table.columns if c.startswith("f") and c[1:].isdigit()]
    frame = split[["image", "sample_id", "material", "split", "fold"]].reset_index(drop=True)
    return FeatureTable(frame, table[names].to_numpy(np.float32), names)
