"""Training and cross-validation of the paper's classifiers (fine-tuning, scratch, and the feature-extraction MLP).

Small named steps in the style of the torchvision references:

* :func:`load_data` reads every image once (``load_image``), resizes it and keeps the whole set as one tensor;
* :class:`InputBatches` turns rows of that tensor into model-ready batches: random horizontal and vertical flips
  (p = 0.5 each, drawn from a seeded generator) on the batch, gray -> 3 channels by broadcasting against the
  ImageNet mean/std, channels-last memory layout;
* :func:`train_one_epoch` and :func:`evaluate`;
* :func:`fit_fold` trains one cross-validation fold and keeps its best epoch;
* :func:`cross_validate` runs every fold and writes the run directory (``config.json``, ``splits.csv``,
  ``fold<k>.pt``, ``history.csv``, ``metrics.json``); a rerun skips folds whose checkpoint is complete;
* :func:`grid_search` runs :func:`cross_validate` over a grid of lr / dropout / batch size.

Tasks: ``"mtc"`` (multi-class, cross-entropy over materials) and ``"mtl"`` (multi-label, binary cross-entropy over
elements). MtL predictions are decoded to the most likely valid material by the summed log-probability of its
element vector (:func:`tmdafm_core.models.class_log_scores`), so accuracy, macro-F1 and confusion matrices are
comparable between the tasks; MtL also reports element accuracy (share of correct element presence calls).

Best epoch (``select``):

``"f1"`` (default)
    highest validation macro-F1; ties go to the lower validation loss.
``"paper"``
    the paper keeps "the best epoch by validation F1 and loss"; we read it as: an epoch replaces the kept one only
    when it is at least as good on both, validation F1 >= kept F1 and validation loss <= kept loss.

Sampling: with ``weighted_sampler=True`` (default, as in the paper) every epoch draws as many training images as
the partition holds, with replacement, each with probability proportional to 1 / (images of its class).

Modules: :mod:`~.config` (:class:`TrainConfig`, devices, precision), :mod:`~.inputs` (reading and batching),
:mod:`~.engine` (scores, decoding, optimizer, one epoch, one fold), :mod:`~.rundir` (checkpoints, ``metrics.json``,
resuming), :mod:`~.crossval` (:func:`cross_validate` with :class:`RunOptions`, grid search) and :mod:`~.inference`
(:func:`load_run`, :func:`predict`, :func:`predict_ensemble`, :func:`embed`, :func:`extract`); the split helpers are
in :mod:`tmdafm_core.data.splits` (no torch). Every public name is importable from here.
"""

from __future__ import annotations

from ..data.splits import (  # noqa: F401 (split helpers, torch-free, importable from here too)
    fold_training_positions,
    inner_split,
    limit_training_images,
    prepare_split,
)
from ..layout import PARTITIONS, TASKS  # noqa: F401 (defined with the store's vocabulary)
from .config import (  # noqa: F401
    CONFIG_NAME,
    FALLBACK_IMAGE_SIZE,
    HISTORY_COLUMNS,
    HISTORY_NAME,
    METRICS_NAME,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SELECT_RULES,
    SPLITS_NAME,
    WARMUP_SHARE,
    TrainConfig,
    _autocast,
    cpu_has_native_bf16,
    resolve_device,
    resolve_precision,
)
from .crossval import (  # noqa: F401
    FEATURE_MLP_GRID,
    GRID_NAME,
    RunOptions,
    cross_validate,
    grid_search,
    tune_fold,
)
from .engine import (  # noqa: F401
    HEAD_STARTS,
    MTL_RULES,
    UNKNOWN,
    FoldData,
    _build_fold_model,
    build_optimizer,
    classification_scores,
    decode_classes,
    decode_strict,
    evaluate,
    fit_fold,
    held_out_trust,
    train_one_epoch,
)
from .inference import (  # noqa: F401
    Predictions,
    Run,
    best_fold,
    embed,
    extract,
    format_metrics,
    load_ensemble,
    load_run,
    predict,
    predict_ensemble,
    write_table,
)
from .inputs import (  # noqa: F401
    InputBatches,
    default_image_size,
    epoch_order,
    load_data,
    resize_image,
)
from .rundir import (  # noqa: F401
    _check_resumable,
    checkpoint_path,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
    summarize_folds,
)

__all__ = [
    "CONFIG_NAME",
    "FALLBACK_IMAGE_SIZE",
    "FEATURE_MLP_GRID",
    "FoldData",
    "GRID_NAME",
    "HEAD_STARTS",
    "HISTORY_COLUMNS",
    "HISTORY_NAME",
    "InputBatches",
    "METRICS_NAME",
    "MTL_RULES",
    "OPTIMIZERS",
    "PARTITIONS",
    "RunOptions",
    "PRECISIONS",
    "Predictions",
    "Run",
    "SCHEDULES",
    "SELECT_RULES",
    "SPLITS_NAME",
    "TASKS",
    "TrainConfig",
    "UNKNOWN",
    "WARMUP_SHARE",
    "best_fold",
    "build_optimizer",
    "checkpoint_path",
    "classification_scores",
    "cpu_has_native_bf16",
    "cross_validate",
    "decode_classes",
    "decode_strict",
    "default_image_size",
    "embed",
    "epoch_order",
    "evaluate",
    "extract",
    "fit_fold",
    "fold_training_positions",
    "format_metrics",
    "grid_search",
    "held_out_trust",
    "inner_split",
    "limit_training_images",
    "load_checkpoint",
    "load_data",
    "load_ensemble",
    "load_run",
    "predict",
    "predict_ensemble",
    "prepare_split",
    "remove_stale_temporaries",
    "resize_image",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "summarize_folds",
    "train_one_epoch",
    "tune_fold",
    "write_table",
]
