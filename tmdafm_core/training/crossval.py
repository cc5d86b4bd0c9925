"""Cross-validation (:func:`cross_validate`, configured by :class:`TrainConfig` and :class:`RunOptions`) and the
grid search over it."""

from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import FeatureTable, LabelSpace
from ..data.splits import (
    _fold_partitions,
    inner_split,
    labelled_frame,
    prepare_split,
)
from ..layout import PARTITIONS
from ..models import (
    build_model,
)
from ..progress import report
from .config import CONFIG_NAME, HISTORY_COLUMNS, HISTORY_NAME, METRICS_NAME, SPLITS_NAME, TrainConfig
from .engine import HEAD_STARTS, FoldData, fit_fold
from .inputs import default_image_size, load_data
from .rundir import (
    _check_resumable,
    _finished_fold,
    _write_json,
    checkpoint_path,
    remove_stale_temporaries,
    save_checkpoint,
    summarize_folds,
)

# --- cross-validation -------------------------------------------------------------------------------------------

def _labelled_frame(data) -> tuple[pd.DataFrame, torch.Tensor | None, list[str]]:
    """Manifest-like frame (material, sample_id, split) of a manifest or a feature table, plus stored features."""
    frame = labelled_frame(data)
    if isinstance(data, FeatureTable):
        return frame, torch.as_tensor(np.ascontiguousarray(data.features, dtype=np.float32)), list(data.guessed)
    return frame, None, []


def _stored_inputs(features, images, split: pd.DataFrame, config: TrainConfig, progress: bool) -> torch.Tensor:
    """What the folds train on: the feature table's vectors, or the images (given, else read once)."""
    if features is not None:
        return features
    return images if images is not None else load_data(split, image_size=config.image_size, progress=progress)


def _fold_task(spec: dict) -> dict:
    """One fold as a self-contained task (a Dask worker or a local process): reads its own data, returns the
    checkpoint."""
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = TrainConfig(**spec["config"])
    split = spec["split"]
    stored = spec["stored"] if spec["stored"] is not None else load_data(split, image_size=spec["image_size"])
    parts = _fold_partitions(split, spec["fold"], spec["train_limits"], config.seed)
    data = FoldData(stored, spec["class_index"], LabelSpace(*spec["labels"]), parts, image_size=spec["image_size"],
                    extra={"head": spec["head"]})
    return _fit_fold_tuned(data, split, config, spec["fold"], spec["tune"])


#: Inner grid of the feature-extraction MLP (``tune=True``): searched per outer fold on its training part only.
FEATURE_MLP_GRID = {"lr": (1e-3, 3e-4, 1e-4), "weight_decay": (0.0, 1e-3), "dropout": (0.0, 0.5)}


def tune_fold(data: FoldData, split: pd.DataFrame, config: TrainConfig, fold: int, grid: dict) -> tuple:
    """The grid point with the best inner-validation macro-F1 (ties: lower loss) on one fold's training part.

    Returns ``(config with the chosen lr / weight_decay / dropout, {"lr", "weight_decay", "dropout", "inner_f1"})``.
    """
    inner = dataclasses.replace(data, partitions=inner_split(split, data.partitions["train"], seed=config.seed + fold))
    if len(inner.partitions["val"]) == 0:
        raise ValueError("tuning needs at least two training samples of some class in every fold; pass --no-tune")
    best = None
    for lr, weight_decay, dropout in itertools.product(grid["lr"], grid["weight_decay"], grid["dropout"]):
        candidate = dataclasses.replace(config, lr=float(lr), weight_decay=float(weight_decay),
                                        dropout=float(dropout)).validate()
        val = fit_fold(inner, candidate, fold)["scores"]["val"]
        key = (-val["f1_macro"], val["loss"])
        if best is None or key < best[0]:
            best = (key, candidate, {"lr": candidate.lr, "weight_decay": candidate.weight_decay,
                                     "dropout": candidate.dropout, "inner_f1": val["f1_macro"]})
    return best[1], best[2]


def _fit_fold_tuned(data: FoldData, split: pd.DataFrame, config: TrainConfig, fold: int, tune: dict | None,
                    progress: bool = False) -> dict:
    if tune is None:
        return fit_fold(data, config, fold, progress=progress)
    config, chosen = tune_fold(data, split, config, fold, tune)
    checkpoint = fit_fold(data, config, fold, progress=progress)
    checkpoint["tuned"] = chosen
    return checkpoint


@dataclass
class RunOptions:
    """How a cross-validated run is carried out, beside what it trains (:class:`TrainConfig`); see
    :func:`cross_validate` for each field."""

    dask_address: str | None = None
    progress: object = False
    labels: LabelSpace | None = None
    presplit: bool = False
    fold_weights: dict | None = None
    train_limits: dict | None = None
    images: torch.Tensor | None = None
    save_optimizer: bool = True
    head: str = "keep"
    tune: bool | dict = False
    allow_duplicates: bool = False
    fold_jobs: int = 1


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_RUN_FIELDS = {f.name for f in dataclasses.fields(RunOptions)}


def cross_validate(data, out_dir, config: TrainConfig | None = None, options: RunOptions | None = None,
                   **keywords) -> dict:
    """Cross-validate a classifier and write its run directory.

    What is trained is a :class:`TrainConfig` (``config``, stored as ``config.json``), how the run is carried out a
    :class:`RunOptions` (``options``); every field of either may also be given as a keyword, which overrides it
    (``cross_validate(manifest, "runs/mtc", epochs=10, fold_jobs=2)``).

    Parameters
    ----------
    data : DataFrame or FeatureTable
        A tidy image manifest (fine-tuning / scratch) or a feature table (feature-extraction MLP; ``arch``,
        ``weights`` and ``image_size`` are then unused).
    out_dir : str or Path
        Run directory; created. An existing run with the same settings is resumed: folds whose checkpoint is
        complete are not retrained.
    config : TrainConfig, optional
        The training settings (default: ``TrainConfig()``); the keywords from ``arch`` to ``optimizer`` below.
    options : RunOptions, optional
        How the run is carried out (default: ``RunOptions()``); the keywords from ``dask_address`` on below.
    arch, weights, dropout : see :func:`tmdafm_core.models.build_model`
    task : {"mtc", "mtl"}
    folds : int
        Cross-validation folds (>= 2) on the non-test images; split by sample id (:func:`split_dataset`).
    epochs, lr, batch_size : training length, Adam learning rate, images per batch
    image_size : int, optional
        Model input side in pixels; default :func:`default_image_size`.
    device : {"cpu", "cuda"}
        ``cuda`` trains with bf16 autocast.
    precision : {"auto", "fp32", "bf16", "native"}
        Autocast of the forward passes (:func:`resolve_precision`): ``auto`` bf16 on GPUs, float32 on the CPU;
        ``native`` bf16 wherever the hardware has it (CPUs with AVX512-BF16 / AMX too); ``bf16`` always; ``fp32``
        never. The precision used is recorded per fold and in ``metrics.json`` (``precision_used``).
    seed : int
        Seeds the split, the initialisation, the sampler and the flips; equal seeds give equal runs on the CPU.
    select : {"f1", "paper"}
        Best-epoch rule (module docstring).
    weighted_sampler : bool
        Class-balanced sampling of training images.
    test_fraction : float
        Held-out share of samples when the data carries no ``test`` marks.
    dask_address : str, optional
        Scheduler address; folds then run as tasks on that Dask cluster (one per worker; image paths must be
        readable there).
    progress : bool or callable
        tqdm bars on stderr (True), or ``progress("training folds", done, folds)`` as each fold is saved
        (:mod:`tmdafm_core.progress`).
    labels : LabelSpace, optional
        Classes (their order) and elements to use instead of those of the data (e.g. the elements of a whole
        sequential study, so that MtL outputs stay the same from stage to stage).
    presplit : bool
        Keep the data's own ``split`` and ``fold`` columns instead of splitting (one split shared by several runs).
    fold_weights : dict of int -> path, optional
        Starting weights per fold, replacing ``weights`` for those folds (Sequential training starts each fold
        from the same fold of the previous stage's run). Recorded in ``config.json`` and in each checkpoint.
    train_limits : dict of str -> int, optional
        Most training images per class in every fold (:func:`limit_training_images`, seeded per fold);
        validation and test stay whole.
    images : Tensor, optional
        The data's images already read by :func:`load_data` at ``image_size`` (row order of ``data``), to share
        one read between runs; ignored with ``dask_address`` (workers read their own).
    save_optimizer : bool
        Keep the optimizer state in the fold checkpoints (False: ``None``, a third of the size; enough to start
        other runs from them and for inference).
    head : {"keep", "reset"}
        With ``fold_weights``: an MtC output layer keeps the rows of the classes the checkpoint knows, or starts
        fresh (``reset``, the paper's sequential training). MtL element outputs carry over either way.
    weight_decay : float
        Weight decay (the paper: 0): an L2 term with ``optimizer="adam"``, decoupled with ``"adamw"``.
    schedule : {"constant", "warmup-cosine"}
        Learning rate over training (:func:`build_optimizer`): the paper's constant rate, or a warm-up and cosine
        decay (the demo's scratch training).
    optimizer : {"adam", "adamw"}
    ema_decay : float
        0 (the paper): validate and keep the weights of each epoch's last step. In (0, 1): validate and keep an
        exponential moving average of the weights and BatchNorm statistics, updated after every optimizer step from
        the end of the warm-up (:class:`~tmdafm_core.training.engine.WeightAverage`).
    allow_duplicates : bool
        Train although some images repeat others (the same file or identical content,
        :func:`tmdafm_core.data.readers.find_duplicates`); by default that is refused, since a repeat can be
        trained on and scored on.
    fold_jobs : int
        Folds trained at once in local processes (each with one torch thread; results equal to ``1``, which
        trains them one after the other here). Speed only: not recorded, a resumed run may use another value.
    tune : bool or dict
        Feature tables only: before each fold, choose ``lr``, ``weight_decay`` and ``dropout`` by an inner grouped
        split of that fold's training images (:func:`inner_split`; never its validation images or the test set)
        over ``tune`` (a grid ``{"lr": [...], "weight_decay": [...], "dropout": [...]}``, or
        :data:`FEATURE_MLP_GRID` for ``True``), as the paper grid-searched its MLP per fold. The choice is recorded
        per fold (``metrics.json`` ``per_fold[k]["tuned"]``).

    Returns
    -------
    dict
        The ``metrics.json`` document.
    """
    unknown = sorted(set(keywords) - _TRAIN_FIELDS - _RUN_FIELDS)
    if unknown:
        raise TypeError(f"cross_validate() got an unexpected keyword argument {unknown[0]!r}")
    config = dataclasses.replace(config or TrainConfig(), **{k: v for k, v in keywords.items() if k in _TRAIN_FIELDS})
    options = dataclasses.replace(options or RunOptions(), **{k: v for k, v in keywords.items() if k in _RUN_FIELDS})
    frame, features, notes = _labelled_frame(data)
    is_image = features is None
    config = _run_config(config, frame, is_image)
    tune = _tune_grid(options.tune, is_image)
    if is_image and not options.allow_duplicates and "path" in frame.columns:
        from ..data.readers import duplicates_message, find_duplicates

        repeats = find_duplicates(frame)
        if repeats:
            raise ValueError(duplicates_message(repeats) + "; remove them or pass --allow-duplicates")
    split, labels = prepare_split(data, folds=config.folds, test_fraction=config.test_fraction, seed=config.seed,
                                  labels=options.labels, presplit=options.presplit)
    fold_weights = _fold_weights(options.fold_weights, config.folds, is_image)
    train_limits = _train_limits(options.train_limits, labels)
    if options.head not in HEAD_STARTS:
        raise ValueError(f"head must be one of {', '.join(HEAD_STARTS)}, got {options.head!r}")
    run_dir = Path(out_dir)
    document = _config_document(config, frame, split, labels, notes, is_image, run_dir, fold_weights=fold_weights,
                                head=options.head, tune=tune, train_limits=train_limits)
    _check_resumable(run_dir, document)
    _check_start(config, options.images, split, fold_weights, is_image)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    _write_json(run_dir / CONFIG_NAME, document)
    split_columns = [c for c in ("image", "sample_id", "material", "split", "fold") if c in split.columns]
    split[split_columns].to_csv(run_dir / SPLITS_NAME, index=False)
    checkpoints = _train_folds(run_dir, split, labels, features, config, options, fold_weights=fold_weights,
                               train_limits=train_limits, tune=tune)
    history = pd.DataFrame([row for ck in checkpoints for row in ck["history"]], columns=list(HISTORY_COLUMNS))
    history.to_csv(run_dir / HISTORY_NAME, index=False)
    metrics = summarize_folds(checkpoints)
    _write_json(run_dir / METRICS_NAME, metrics)
    return metrics


def _run_config(config: TrainConfig, frame: pd.DataFrame, is_image: bool) -> TrainConfig:
    """The validated configuration; a feature-table run has no backbone, weights or input side."""
    if is_image:
        changes = {"weights": str(config.weights), "image_size": config.image_size or default_image_size(frame)}
    else:
        changes = {"arch": None, "weights": None, "image_size": None}
    return dataclasses.replace(config, **changes).validate()


def _tune_grid(tune, is_image: bool) -> dict | None:
    if tune is True:
        tune = FEATURE_MLP_GRID
    tune = {k: [float(v) for v in tune[k]] for k in FEATURE_MLP_GRID} if tune else None
    if tune is not None and is_image:
        raise ValueError("tune searches the feature-extraction MLP; image runs use grid_search (comma lists)")
    return tune


def _fold_weights(fold_weights, folds: int, is_image: bool) -> dict:
    fold_weights = {int(k): str(v) for k, v in (fold_weights or {}).items()}
    unknown_folds = sorted(set(fold_weights) - set(range(folds)))
    if unknown_folds:
        raise ValueError(f"fold_weights names fold {unknown_folds[0]}, but folds are 0..{folds - 1}")
    if fold_weights and not is_image:
        raise ValueError("fold_weights start image models; a feature-table run has no backbone to start")
    return fold_weights


def _train_limits(train_limits, labels: LabelSpace) -> dict:
    train_limits = {str(k): v for k, v in (train_limits or {}).items()}
    for material, limit in train_limits.items():
        labels.class_index(material)
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"training limit of {material!r} must be a whole number of images >= 1, got {limit!r}")
    return train_limits


def _config_document(config: TrainConfig, frame, split, labels: LabelSpace, notes, is_image: bool, run_dir: Path, *,
                     fold_weights: dict, head: str, tune: dict | None, train_limits: dict) -> dict:
    """The run's ``config.json``: the configuration, the mode and what a resumed run must match."""
    document = {**config.to_dict(), "mode": "fine-tune" if is_image else "features",
                "classes": list(labels.classes), "elements": list(labels.elements),
                "n_images": len(split), "source": str(frame.attrs.get("root", "")), "notes": notes}
    if fold_weights:
        # Relative to the run folder: a study trained in a staging folder and moved into place (the store) keeps
        # pointing at its real start checkpoints, and resumes after the move.
        document["fold_weights"] = {str(k): os.path.relpath(Path(v).resolve(), run_dir.resolve())
                                    for k, v in sorted(fold_weights.items())}
        document["head"] = head
    if tune is not None:
        document["tune"] = tune
    if train_limits:
        document["train_limits"] = {k: int(v) for k, v in train_limits.items()}
    if is_image and config.weights not in ("none", "imagenet-v1", "imagenet-v2"):
        document["mode"] = "from-checkpoint"
    elif is_image and config.weights == "none":
        document["mode"] = "scratch"
    return document


def _check_start(config: TrainConfig, images, split: pd.DataFrame, fold_weights: dict, is_image: bool) -> None:
    """Fail on unavailable weights or ill-shaped images before anything is written or loaded."""
    if is_image:  # the weights are read and matched to the architecture; nothing is allocated or initialised
        build_model(config.arch, 1, weights=config.weights, device="meta")
    missing = sorted(path for path in fold_weights.values() if not Path(path).is_file())
    if missing:
        raise FileNotFoundError(f"{missing[0]}: starting checkpoint of a fold not found; train that run first")
    if images is not None and is_image:
        expected = (len(split), 1, config.image_size, config.image_size)
        if tuple(images.shape) != expected:
            raise ValueError(f"images has shape {tuple(images.shape)}, expected {expected} (load_data of the same "
                             "rows at image_size)")


def _train_folds(run_dir: Path, split: pd.DataFrame, labels: LabelSpace, features, config: TrainConfig,
                 options: RunOptions, *, fold_weights: dict, train_limits: dict, tune: dict | None) -> list[dict]:
    """Train every fold without a complete checkpoint (in local processes or on Dask when asked); each checkpoint
    is written as soon as its fold finishes, so an interrupted run resumes. Returns every fold's checkpoint."""
    folds, fold_jobs, dask_address = config.folds, options.fold_jobs, options.dask_address
    class_index = np.array([labels.class_index(m) for m in split["material"]], dtype=np.int64)
    done = {k: _finished_fold(checkpoint_path(run_dir, k)) for k in range(folds)}
    todo = [k for k, ck in done.items() if ck is None]
    folds_done = options.progress if callable(options.progress) else None
    progress = options.progress is True  # tqdm bars of reading and of each fold's epochs
    report(folds_done, "training folds", folds - len(todo), folds)
    if isinstance(fold_jobs, bool) or not isinstance(fold_jobs, (int, np.integer)) or fold_jobs < 1:
        raise ValueError(f"fold_jobs must be a whole number >= 1, got {fold_jobs!r}")

    def finished(fold: int, checkpoint: dict) -> None:
        _record_field_of_view(checkpoint, split, _fold_partitions(split, fold, train_limits, config.seed)["train"])
        _save_fold(checkpoint, run_dir, fold, options.save_optimizer)
        done[fold] = checkpoint
        report(folds_done, "training folds", sum(ck is not None for ck in done.values()), folds)

    if todo and (dask_address is not None or (fold_jobs > 1 and len(todo) > 1)):
        from ..parallel import imap_items

        # Local processes get the inputs read once here (the sequential study passes them in already); a Dask
        # worker reads its own, since the tensor would cross the network.
        stored = features if dask_address is not None else _stored_inputs(features, options.images, split, config,
                                                                          progress)
        spec = {"split": split, "stored": stored, "image_size": config.image_size, "class_index": class_index,
                "labels": (labels.classes, labels.elements), "train_limits": train_limits, "head": options.head,
                "tune": tune, "threads": None if dask_address is not None else 1}
        tasks = [{**spec, "fold": k, "config": _fold_config(config, fold_weights, k).to_dict()} for k in todo]
        for position, checkpoint in imap_items(_fold_task, tasks, dask_address=dask_address, chunk_size=1,
                                               jobs=min(int(fold_jobs), len(todo)), start_method="spawn"):
            finished(todo[position], checkpoint)
    elif todo:
        stored = _stored_inputs(features, options.images, split, config, progress)
        for k in todo:
            fold_data = FoldData(stored, class_index, labels, _fold_partitions(split, k, train_limits, config.seed),
                                 image_size=config.image_size, extra={"head": options.head})
            finished(k, _fit_fold_tuned(fold_data, split, _fold_config(config, fold_weights, k), k, tune,
                                        progress=progress))
    return [done[k] for k in range(folds)]


def _record_field_of_view(checkpoint: dict, split: pd.DataFrame, train: np.ndarray) -> None:
    """Keep the range of the fold's training fields of view in its novelty reference (the scale check)."""
    from ..novelty import field_of_view_nm, field_of_view_range

    if checkpoint.get("novelty") is None or not {"pixel_size_nm", "height", "width"} <= set(split.columns):
        return
    rows = split.iloc[train]
    checkpoint["novelty"]["field_of_view_nm"] = field_of_view_range(
        field_of_view_nm(rows["pixel_size_nm"], rows["height"], rows["width"]))


def _fold_config(config: TrainConfig, fold_weights: dict, fold: int) -> TrainConfig:
    """The fold's configuration: its own starting weights when ``fold_weights`` names it."""
    return dataclasses.replace(config, weights=fold_weights[fold]) if fold in fold_weights else config


def _save_fold(checkpoint: dict, run_dir: Path, fold: int, save_optimizer: bool) -> None:
    if not save_optimizer:
        checkpoint["optimizer"] = None
    save_checkpoint(checkpoint, checkpoint_path(run_dir, fold))


# --- grid search ------------------------------------------------------------------------------------------------

GRID_NAME = "grid.csv"


def grid_search(data, out_dir, *, lr=(7.5e-5,), dropout=(0.0,), batch_size=(32,), progress: bool = False,
                **fixed) -> pd.DataFrame:
    """Cross-validate every combination of learning rate, dropout and batch size.

    Each combination is a run directory ``out_dir/lr=<lr>_dropout=<p>_batch=<n>`` (resumable like any run);
    ``out_dir/grid.csv`` lists them, best first (validation macro-F1, then validation accuracy).

    Parameters
    ----------
    data : DataFrame or FeatureTable
    out_dir : str or Path
    lr, dropout, batch_size : sequence
        Values to combine.
    **fixed
        Other :func:`cross_validate` keywords, the same for every combination.

    Returns
    -------
    DataFrame
        One row per combination: lr, dropout, batch_size, run, and mean/std of accuracy and macro-F1 per partition.
    """
    grid = list(itertools.product(lr, dropout, batch_size))
    if not grid:
        raise ValueError("empty grid: give at least one value for lr, dropout and batch size")
    out_dir = Path(out_dir)
    rows = []
    for i, (lr_value, dropout_value, batch_value) in enumerate(grid, start=1):
        name = f"lr={lr_value:g}_dropout={dropout_value:g}_batch={int(batch_value)}"
        if progress:
            from tqdm.auto import tqdm

            tqdm.write(f"grid {i}/{len(grid)}: {name}")
        metrics = cross_validate(data, out_dir / name, lr=float(lr_value), dropout=float(dropout_value),
                                 batch_size=int(batch_value), progress=progress, **fixed)
        row = {"lr": lr_value, "dropout": dropout_value, "batch_size": int(batch_value), "run": name}
        for metric in ("accuracy", "f1_macro"):
            for split in PARTITIONS:
                row[f"{metric}_{split}_mean"] = metrics[metric][split]["mean"]
                row[f"{metric}_{split}_std"] = metrics[metric][split]["std"]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["f1_macro_val_mean", "accuracy_val_mean"], ascending=False,
                                           kind="stable").reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / GRID_NAME, index=False)
    return table
