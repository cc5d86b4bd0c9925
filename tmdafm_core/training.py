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
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import json
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .data import FeatureTable, LabelSpace, fold_partitions, load_image, split_dataset
from .data.images import MIN_SIDE_PX, check_input_side, scale_pixels, scan_crops
from .data.scans import DEFAULT_CROP_UM
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LATENT_DIM,
    ResNetClassifier,
    build_feature_mlp,
    build_model,
    check_arch,
    check_latent,
    class_log_scores,
    fold_batchnorm,
)
from .progress import report

TASKS = ("mtc", "mtl")
SELECT_RULES = ("f1", "paper")
PRECISIONS = ("auto", "fp32", "bf16", "native")
#: Learning-rate schedules: the paper's constant Adam rate, or a linear warm-up over the first
#: :data:`WARMUP_SHARE` of the steps followed by a cosine decay to zero (what scratch training needs to settle).
SCHEDULES = ("constant", "warmup-cosine")
WARMUP_SHARE = 0.1
#: ``adam``: weight decay as an L2 term in the gradient (the paper's optimizer); ``adamw``: decoupled decay.
OPTIMIZERS = ("adam", "adamw")
PARTITIONS = ("train", "val", "test")
#: Image size used when the images of a data set differ in size (ImageNet's training size).
FALLBACK_IMAGE_SIZE = 224
CONFIG_NAME, METRICS_NAME, HISTORY_NAME, SPLITS_NAME = "config.json", "metrics.json", "history.csv", "splits.csv"
HISTORY_COLUMNS = ("fold", "epoch", "split", "loss", "accuracy", "f1_macro")
# Settings that do not change the result; a resumed run may differ in them.
_RESUME_FREE = {"device", "source", "notes"}


# --- configuration ----------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """Everything that defines a training run (stored as ``config.json`` and in every checkpoint's ``args``).

    ``arch``/``weights``/``image_size`` are ignored (None) for feature-table runs.
    """

    arch: str | None = "resnet18"
    weights: str | None = "imagenet-v1"
    task: str = "mtc"
    folds: int = 5
    epochs: int = 60
    lr: float = 7.5e-5
    batch_size: int = 32
    dropout: float = 0.0
    weight_decay: float = 0.0
    image_size: int | None = None
    device: str = "cpu"
    precision: str = "auto"
    schedule: str = "constant"
    optimizer: str = "adam"
    seed: int = 0
    select: str = "f1"
    weighted_sampler: bool = True
    test_fraction: float = 0.1

    def validate(self) -> TrainConfig:
        if self.arch is not None:
            check_arch(self.arch)
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.select not in SELECT_RULES:
            raise ValueError(f"select must be one of {', '.join(SELECT_RULES)}, got {self.select!r}")
        for name, low in (("folds", 2), ("epochs", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.image_size is not None:
            check_input_side(self.image_size)
        for name, allowed in (("precision", PRECISIONS), ("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """``"cpu"`` or ``"cuda"``/``"cuda:N"``; CUDA must be visible."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA GPU is visible to torch; use --device cpu")
    return device


@functools.cache  # read once: every forward pass asks through _autocast
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16, from ``/proc/cpuinfo``; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"bf16"`` or ``"fp32"``: what ``precision`` means on ``device``.

    ``auto``: bf16 on GPUs, float32 on the CPU (the default; results do not depend on the CPU); ``bf16``: always;
    ``native``: bf16 where the hardware computes it (GPUs, CPUs with AMX / AVX512-BF16: the demo's training, 1.6x
    faster there), float32 elsewhere (emulated bf16 is slower than float32); ``fp32``: never.
    """
    if precision == "bf16" or (precision in ("auto", "native") and device.type == "cuda"):
        return "bf16"
    if precision == "native" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def _autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision of forward passes (:func:`resolve_precision`)."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- data -------------------------------------------------------------------------------------------------------

def default_image_size(manifest: pd.DataFrame) -> int:
    """The images' own size when they are all square and equal (the paper trains at native size), else 224."""
    sizes = set(zip(manifest["height"].astype(int), manifest["width"].astype(int), strict=True))
    if len(sizes) == 1:
        (height, width), = sizes
        if height == width:
            return int(height)
    return FALLBACK_IMAGE_SIZE


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """A 2-D image (0..1) as a (1, size, size) float32 tensor (bilinear, antialiased when shrinking)."""
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    if tensor.shape[-2:] != (size, size):
        tensor = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return tensor[0].clamp_(0.0, 1.0)


def load_data(manifest: pd.DataFrame, *, image_size: int, progress: bool = False,
              scaling: str = "min-max") -> torch.Tensor:
    """Read every image of a manifest once.

    Parameters
    ----------
    manifest : DataFrame
        Tidy manifest (``path``, ``pixel_size_nm``).
    image_size : int
        Side of the square model input in pixels.
    progress : bool
        Show a tqdm bar on stderr.
    scaling : {"min-max", "paper"}
        How pixel values become 0..1 (:data:`tmdafm_core.data.images.SCALINGS`).

    Returns
    -------
    Tensor of float32, shape (n_images, 1, image_size, image_size)
        Heights scaled to 0..1, in manifest row order.
    """
    from tqdm.auto import tqdm

    images = torch.empty((len(manifest), 1, image_size, image_size), dtype=torch.float32)
    rows = zip(manifest["path"], manifest["pixel_size_nm"], scan_crops(manifest), strict=True)
    for i, (path, pixel_nm, crop_um) in enumerate(tqdm(rows, total=len(manifest), desc="loading images", unit="img",
                                                       disable=not progress, leave=False)):
        image, _ = load_image(path, pixel_size_nm=pixel_nm, scaling=scaling, crop_um=crop_um)
        images[i] = resize_image(image, image_size)
    return images


class InputBatches:
    """Model-ready batches from stored rows: images (N, 1, S, S) in 0..1, or feature vectors (N, F).

    Images: optional random H/V flips per image, then ``(x - mean) / std`` against 3-channel mean/std (which also
    repeats gray into 3 channels), channels-last layout. Feature vectors: ``(x - mean) / std`` only.
    """

    def __init__(self, stored: torch.Tensor, *, mean, std, device: torch.device, channels_last: bool = True):
        self.device = device
        self.is_image = stored.ndim == 4
        self.stored = stored.to(device) if device.type == "cuda" else stored
        shape = (1, -1, 1, 1) if self.is_image else (1, -1)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(shape)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(shape)
        self.channels_last = channels_last and self.is_image

    def __call__(self, index, *, flip_generator: torch.Generator | None = None) -> torch.Tensor:
        index = torch.as_tensor(index, dtype=torch.long)
        x = self.stored[index.to(self.stored.device)].to(self.device, non_blocking=True)
        if self.is_image and flip_generator is not None:
            flips = (torch.rand((len(index), 2), generator=flip_generator) < 0.5).to(self.device)
            x = torch.where(flips[:, 0, None, None, None], x.flip(-1), x)
            x = torch.where(flips[:, 1, None, None, None], x.flip(-2), x)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _targets(class_index: np.ndarray, labels: LabelSpace, task: str) -> torch.Tensor:
    if task == "mtc":
        return torch.as_tensor(class_index, dtype=torch.long)
    return torch.as_tensor(labels.element_matrix[class_index], dtype=torch.float32)


def _criterion(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "mtc" else nn.BCEWithLogitsLoss()


def epoch_order(train_index: np.ndarray, class_index: np.ndarray, *, weighted: bool,
                generator: torch.Generator) -> np.ndarray:
    """Training positions of one epoch: class-balanced draws with replacement, or a plain permutation."""
    if not weighted:
        return train_index[torch.randperm(len(train_index), generator=generator).numpy()]
    classes = class_index[train_index]
    counts = np.bincount(classes)
    probabilities = torch.as_tensor(1.0 / counts[classes], dtype=torch.double)
    draws = torch.multinomial(probabilities, len(train_index), replacement=True, generator=generator)
    return train_index[draws.numpy()]


# --- metrics ----------------------------------------------------------------------------------------------------

def classification_scores(true, predicted, n_classes: int) -> dict:
    """Accuracy, macro-F1 and confusion counts of class predictions.

    Macro-F1 averages over the classes that occur in ``true`` or ``predicted`` (scikit-learn's default labels).

    Returns
    -------
    dict with ``accuracy`` and ``f1_macro`` (floats in 0..1, NaN for no images) and ``confusion``
    (ndarray of int64, shape (n_classes, n_classes); rows true, columns predicted).
    """
    true = np.asarray(true, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    confusion = np.bincount(true * n_classes + predicted, minlength=n_classes * n_classes).reshape(n_classes,
                                                                                                  n_classes)
    if len(true) == 0:
        return {"accuracy": float("nan"), "f1_macro": float("nan"), "confusion": confusion}
    hits = np.diag(confusion).astype(np.float64)
    denominator = confusion.sum(axis=0) + confusion.sum(axis=1)
    present = denominator > 0
    f1 = 2.0 * hits[present] / denominator[present]
    return {"accuracy": float(hits.sum() / len(true)), "f1_macro": float(f1.mean()), "confusion": confusion}


def decode_classes(logits: torch.Tensor, task: str, element_matrix: torch.Tensor | None) -> torch.Tensor:
    """Predicted class index per row: argmax of the class log-probabilities (MtL: over valid materials)."""
    return class_log_scores(logits, element_matrix=element_matrix if task == "mtl" else None).argmax(dim=1)


#: How an MtC output layer starts from a run checkpoint with other classes: ``keep`` the rows of the classes it
#: knows (by name), or ``reset`` to a fresh ``Linear(100, n)`` (the paper's sequential training).
HEAD_STARTS = ("keep", "reset")
#: The two MtL decoding rules metrics.json reports.
MTL_RULES = {
    "valid-material": "the most likely valid material (sum of element log-probabilities)",
    "paper": "elements with probability > 0.5; the material whose element vector is exactly that, else 'unknown' "
             "(an error)",
}
UNKNOWN = "unknown"


def decode_strict(logits: torch.Tensor, element_matrix) -> torch.Tensor:
    """The paper's MtL decoding: class index whose element vector equals ``sigmoid(logits) > 0.5``, else
    ``n_classes`` (unknown).

    Parameters
    ----------
    logits : Tensor, shape (N, n_elements)
    element_matrix : array-like of 0/1, shape (n_classes, n_elements)

    Returns
    -------
    Tensor of int64, shape (N,), values in 0..n_classes (``n_classes`` = unknown).
    """
    matrix = torch.as_tensor(element_matrix, dtype=torch.bool, device=logits.device)
    present = logits > 0  # sigmoid(logit) > 0.5
    matches = (present[:, None, :] == matrix[None, :, :]).all(dim=2)  # (N, n_classes)
    unknown = torch.full((len(logits),), len(matrix), dtype=torch.int64, device=logits.device)
    return torch.where(matches.any(dim=1), matches.to(torch.int64).argmax(dim=1), unknown)


# --- optimisation ---------------------------------------------------------------------------------------------

def _trained_count(n_train: int, batch_size: int) -> int:
    """Images of an epoch's ``n_train`` draws that are trained on: a last batch of one is dropped (BatchNorm cannot
    normalise a batch of one in train mode; the draw is random anyway)."""
    return n_train - 1 if n_train % batch_size == 1 and n_train > 1 else n_train


def _steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one epoch of ``n_train`` images."""
    return max(1, math.ceil(_trained_count(n_train, batch_size) / batch_size))


def build_optimizer(model: nn.Module, config: TrainConfig, *, steps_per_epoch: int):
    """The optimizer and the per-step learning-rate scheduler (None for ``schedule="constant"``) of ``config``.

    ``warmup-cosine`` rises linearly from ``lr / 100`` to ``lr`` over the first :data:`WARMUP_SHARE` of the
    ``epochs * steps_per_epoch`` steps, then follows a cosine to zero (the scratch-training recipe of the
    torchvision references, per step instead of per epoch because the demo trains few epochs).
    """
    make = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    # fused: one kernel over all parameters, 4-5x faster steps than the per-tensor loop on the CPU (ResNet18: 14 vs
    # 66 ms), which dominates small-input training
    optimizer = make(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.schedule == "constant":
        return optimizer, None
    total = config.epochs * steps_per_epoch
    warmup = max(1, round(WARMUP_SHARE * total))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- one epoch --------------------------------------------------------------------------------------------------

def train_one_epoch(model, optimizer, criterion, batches: InputBatches, targets: torch.Tensor,
                    class_index: np.ndarray, order: np.ndarray, *, task: str, element_matrix, batch_size: int,
                    flip_generator: torch.Generator, n_classes: int, precision: str = "auto",
                    scheduler=None) -> dict:
    """One pass over ``order`` (training positions) in train mode; ``scheduler`` steps after every batch.

    Returns the mean loss and the accuracy / macro-F1 of the predictions made on the (augmented) training batches.
    """
    model.train()
    device = batches.device
    order = order[:_trained_count(len(order), batch_size)]
    total_loss, predictions = 0.0, []
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        x = batches(index, flip_generator=flip_generator)
        y = targets[index].to(device, non_blocking=True)
        with _autocast(device, precision):
            logits = model(x)
        loss = criterion(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += float(loss.detach()) * len(index)
        predictions.append(decode_classes(logits.detach().float(), task, element_matrix).cpu())
    scores = classification_scores(class_index[order], torch.cat(predictions).numpy(), n_classes)
    return {"loss": total_loss / len(order), "accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"]}


@torch.inference_mode()
def evaluate(model, criterion, batches: InputBatches, targets: torch.Tensor, class_index: np.ndarray,
             index: np.ndarray, *, task: str, element_matrix, batch_size: int, n_classes: int,
             precision: str = "auto", keep_outputs: bool = False) -> dict:
    """Loss, accuracy, macro-F1 and confusion of the images at ``index`` in eval mode (no augmentation).

    MtL adds ``element_accuracy``: the share of element presence calls (p > 0.5) that are right. ``keep_outputs``
    adds ``logits`` (N, outputs) and, for image models, ``statistics`` (:func:`~tmdafm_core.models.
    stage_statistics`, N x F) as float32 arrays: what calibration and the novelty reference are fitted on.
    """
    model.eval()
    device = batches.device
    total_loss, predictions, strict, element_hits = 0.0, [], [], 0.0
    kept_logits, kept_statistics = [], []
    with_statistics = keep_outputs and isinstance(model, ResNetClassifier)
    for start in range(0, len(index), batch_size):
        part = index[start:start + batch_size]
        y = targets[part].to(device)
        with _autocast(device, precision):
            if with_statistics:
                outputs = model.forward_all(batches(part))
                logits = outputs.logits
                kept_statistics.append(outputs.statistics.float().cpu())
            else:
                logits = model(batches(part))
        logits = logits.float()
        if keep_outputs:
            kept_logits.append(logits.cpu())
        total_loss += float(criterion(logits, y)) * len(part)
        predictions.append(decode_classes(logits, task, element_matrix).cpu())
        if task == "mtl":
            element_hits += float(((logits > 0) == (y > 0.5)).float().sum())
            strict.append(decode_strict(logits, element_matrix).cpu())
    predicted = torch.cat(predictions).numpy() if predictions else np.zeros(0, dtype=np.int64)
    scores = classification_scores(class_index[index], predicted, n_classes)
    result = {"loss": total_loss / len(index) if len(index) else float("nan"), **scores, "predicted": predicted}
    if keep_outputs:
        result["logits"] = torch.cat(kept_logits).numpy() if kept_logits else np.zeros((0, targets.shape[-1]),
                                                                                       dtype=np.float32)
        result["statistics"] = torch.cat(kept_statistics).numpy() if kept_statistics else None
    if task == "mtl":
        n_calls = len(index) * targets.shape[1]
        result["element_accuracy"] = element_hits / n_calls if n_calls else float("nan")
        strict_predicted = torch.cat(strict).numpy() if strict else np.zeros(0, dtype=np.int64)
        # One extra class for "unknown": never true, so it only costs accuracy and adds a zero-F1 class when
        # predicted (scikit-learn's default labels, as the paper's f1_score).
        paper = classification_scores(class_index[index], strict_predicted, n_classes + 1)
        result["paper_rule"] = {"accuracy": paper["accuracy"], "f1_macro": paper["f1_macro"],
                                "confusion": paper["confusion"][:n_classes].tolist()}
    return result


def _is_better(val: dict, kept: dict | None, select: str) -> bool:
    if kept is None:
        return True
    f1, loss = val["f1_macro"], val["loss"]
    if select == "paper":
        return f1 >= kept["f1_macro"] and loss <= kept["loss"]
    return f1 > kept["f1_macro"] or (f1 == kept["f1_macro"] and loss < kept["loss"])


# --- one fold ---------------------------------------------------------------------------------------------------

@dataclass
class FoldData:
    """What one fold trains on: stored inputs (images or features), labels and the fold's partitions."""

    stored: torch.Tensor
    class_index: np.ndarray
    labels: LabelSpace
    partitions: dict
    image_size: int | None = None
    weights_source: str = ""
    extra: dict = field(default_factory=dict)


def _build_fold_model(data: FoldData, config: TrainConfig, n_outputs: int):
    if data.stored.ndim == 4:
        # Outputs are named so that a run checkpoint as start carries the rows of the classes / elements it knows;
        # head="reset" (the paper's sequential training) gives MtC a fresh output layer instead.
        names = data.labels.classes if config.task == "mtc" else data.labels.elements
        if data.extra.get("head", "keep") == "reset":
            names = None
        return build_model(config.arch, n_outputs, weights=config.weights, dropout=config.dropout,
                           output_names=names), IMAGENET_MEAN, IMAGENET_STD
    train = data.stored[torch.as_tensor(data.partitions["train"])]
    # Feature tables come in any scale; standardise with the training partition's statistics only.
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    return build_feature_mlp(data.stored.shape[1], n_outputs, dropout=config.dropout), mean.tolist(), std.tolist()


def fit_fold(data: FoldData, config: TrainConfig, fold: int, *, progress: bool = False) -> dict:
    """Train one fold, keep its best epoch, and score it on train / val / test.

    Returns
    -------
    dict
        The fold checkpoint: ``model`` and ``optimizer`` state of the kept epoch, ``epoch``, ``args`` (config),
        ``arch``, ``task``, ``classes``, ``elements``, ``image_size``, ``mean``, ``std``, ``in_features`` (feature
        runs), ``fold``, ``scores`` (per partition: loss, accuracy, f1_macro, confusion, element_accuracy for MtL),
        ``history`` (rows of history.csv) and ``complete=True``.
    """
    from tqdm.auto import tqdm

    device = resolve_device(config.device)
    labels, task = data.labels, config.task
    n_classes = len(labels.classes)
    n_outputs = n_classes if task == "mtc" else len(labels.elements)
    torch.manual_seed(config.seed * 1009 + fold)  # head (and scratch backbone) initialisation
    generator = torch.Generator().manual_seed(config.seed * 1009 + fold)
    model, mean, std = _build_fold_model(data, config, n_outputs)
    channels_last = data.stored.ndim == 4
    model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
    steps = _steps_per_epoch(len(data.partitions["train"]), config.batch_size)
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch=steps)
    criterion = _criterion(task)
    batches = InputBatches(data.stored, mean=mean, std=std, device=device, channels_last=channels_last)
    targets = _targets(data.class_index, labels, task)
    element_matrix = torch.as_tensor(labels.element_matrix, device=device) if task == "mtl" else None
    parts = data.partitions
    common = dict(task=task, element_matrix=element_matrix, batch_size=config.batch_size, n_classes=n_classes,
                  precision=config.precision)

    history, kept, best_state, best_optimizer, best_epoch = [], None, None, None, 0
    epochs = tqdm(range(1, config.epochs + 1), desc=f"fold {fold}", unit="epoch", disable=not progress,
                  leave=False)
    for epoch in epochs:
        order = epoch_order(parts["train"], data.class_index, weighted=config.weighted_sampler, generator=generator)
        train = train_one_epoch(model, optimizer, criterion, batches, targets, data.class_index, order,
                                flip_generator=generator, scheduler=scheduler, **common)
        val = evaluate(model, criterion, batches, targets, data.class_index, parts["val"], **common)
        history += [{"fold": fold, "epoch": epoch, "split": split, "loss": s["loss"], "accuracy": s["accuracy"],
                     "f1_macro": s["f1_macro"]} for split, s in (("train", train), ("val", val))]
        if _is_better(val, kept, config.select):
            kept, best_epoch = val, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            best_optimizer = copy.deepcopy(optimizer.state_dict())
        epochs.set_postfix(val_f1=f"{val['f1_macro']:.3f}", best=best_epoch)

    model.load_state_dict(best_state)
    scores, outputs = {}, {}
    for split in PARTITIONS:
        result = evaluate(model, criterion, batches, targets, data.class_index, parts[split], keep_outputs=True,
                          **common)
        outputs[split] = {key: result.pop(key) for key in ("logits", "statistics")}
        result.pop("predicted")
        result["confusion"] = result["confusion"].tolist()
        scores[split] = result
    best_optimizer = _to_cpu(best_optimizer)
    return {
        **held_out_trust(outputs, {split: data.class_index[parts[split]] for split in PARTITIONS}, labels, task),
        "model": {k: v.contiguous() for k, v in best_state.items()},
        "optimizer": best_optimizer,
        "epoch": best_epoch,
        "args": config.to_dict(),
        "arch": config.arch if data.stored.ndim == 4 else None,
        "task": task,
        "classes": list(labels.classes),
        "elements": list(labels.elements),
        "image_size": data.image_size,
        "in_features": int(data.stored.shape[1]) if data.stored.ndim == 2 else None,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "weights_source": getattr(model, "weights_source", data.weights_source),
        "precision_used": resolve_precision(config.precision, device),
        "fold": fold,
        "scores": scores,
        "history": history,
        "complete": True,
    }


def held_out_trust(outputs: dict, true: dict, labels: LabelSpace, task: str) -> dict:
    """What makes one fold model's predictions trustworthy, from its outputs on its own partitions.

    Parameters
    ----------
    outputs : dict
        Per partition (``train``, ``val``, ``test``): ``logits`` (N, outputs) and ``statistics`` (N, F) or None
        (feature-table runs), as :func:`evaluate` keeps them.
    true : dict
        Per partition: true class index per image.
    labels : LabelSpace
    task : {"mtc", "mtl"}

    Returns
    -------
    dict
        ``calibration``: :func:`tmdafm_core.calibration.calibration_report` (temperature fitted on validation
        images only); ``novelty`` (image models): :func:`tmdafm_core.novelty.fit_reference` on the training
        images, thresholded on the validation images, with the share of validation and test images it flags
        (``flagged``); tensors, so the checkpoint loads with ``weights_only=True``.
    """
    from .calibration import calibration_report
    from .novelty import fit_reference, novelty_scores, unfamiliar

    report = {"calibration": calibration_report({p: outputs[p]["logits"] for p in ("val", "test")},
                                                {p: true[p] for p in ("val", "test")}, task=task,
                                                element_matrix=labels.element_matrix if task == "mtl" else None)}
    if outputs["train"]["statistics"] is not None:
        reference = fit_reference(outputs["train"]["statistics"], outputs["val"]["statistics"])
        reference["flagged"] = {p: float(unfamiliar(novelty_scores(reference, outputs[p]["statistics"])).mean())
                                for p in ("val", "test") if len(outputs[p]["statistics"])}
        report["novelty"] = {key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
                             for key, value in reference.items()}
    return report


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


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
        from .calibration import summarize_calibration

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
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
    os.replace(temporary, path)


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


# --- cross-validation -------------------------------------------------------------------------------------------

def _labelled_frame(data) -> tuple[pd.DataFrame, torch.Tensor | None, list[str]]:
    """Manifest-like frame (material, sample_id, split) of a manifest or a feature table, plus stored features."""
    if isinstance(data, FeatureTable):
        frame = data.frame.copy()
        if "split" not in frame.columns:
            frame["split"] = pd.Series(pd.NA, index=frame.index, dtype="string")
        return frame, torch.as_tensor(np.ascontiguousarray(data.features, dtype=np.float32)), list(data.guessed)
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"expected a manifest DataFrame or a FeatureTable, got {type(data).__name__}")
    return data, None, []


def _check_classes_in_every_fold(frame: pd.DataFrame, labels: LabelSpace, folds: int) -> None:
    for fold in range(folds):
        parts = fold_partitions(frame, fold)
        present = set(frame["material"].iloc[parts["train"]])
        for material in labels.classes:
            if material not in present:
                outside_test = (frame["split"] == "train") & (frame["material"] == material)
                n_samples = frame.loc[outside_test, "sample_id"].nunique()
                raise ValueError(f"class {material!r} has no training images in fold {fold} (only {n_samples} "
                                 "sample(s) outside the test set); add samples of it, use fewer folds, or drop it")


def _check_labels(frame: pd.DataFrame, labels: LabelSpace) -> None:
    outside = sorted(set(frame["material"].dropna()) - set(labels.classes))
    if outside:
        raise ValueError(f"material {outside[0]!r} of the data is not one of the given classes {list(labels.classes)}")
    for material in labels.classes:
        labels.element_vector(material)  # raises when an element is missing from labels.elements


def _check_presplit(frame: pd.DataFrame, folds: int) -> pd.DataFrame:
    """A data set that carries its own ``split`` and ``fold`` columns (from :func:`split_dataset`)."""
    if "fold" not in frame.columns or "split" not in frame.columns:
        raise ValueError("presplit data needs 'split' and 'fold' columns; call split_dataset (or prepare_split) first")
    fold = frame["fold"].to_numpy()
    is_test = frame["split"].fillna("").astype(str).to_numpy() == "test"
    if (fold[is_test] != -1).any() or not np.isin(fold[~is_test], np.arange(folds)).all():
        raise ValueError(f"presplit data: 'fold' must be -1 for test rows and 0..{folds - 1} for the others")
    empty = sorted(set(range(folds)) - set(fold[~is_test].tolist()))
    if empty:
        raise ValueError(f"presplit data: fold {empty[0]} has no images; the split has fewer than {folds} folds")
    return frame


def prepare_split(data, *, folds: int, test_fraction: float = 0.1, seed: int = 0, labels: LabelSpace | None = None,
                  presplit: bool = False) -> tuple[pd.DataFrame, LabelSpace]:
    """Split a manifest / feature table by sample and check that every class can be trained in every fold.

    ``labels`` fixes the label space (class order, elements) instead of deriving it from the data; ``presplit``
    keeps the data's own ``split`` and ``fold`` columns (one split shared by several runs).
    """
    frame, _, _ = _labelled_frame(data)
    if len(frame) == 0:
        raise ValueError("the data set has no images")
    if labels is None:
        labels = LabelSpace.from_materials(frame["material"].dropna())
    else:
        _check_labels(frame, labels)
    if len(labels.classes) < 2:
        raise ValueError(f"only one class ({labels.classes[0]}) in the data set; classification needs >= 2")
    if presplit:
        split = _check_presplit(frame, folds)
    else:
        split = split_dataset(frame, n_folds=folds, test_fraction=test_fraction, seed=seed)
    _check_classes_in_every_fold(split, labels, folds)
    return split, labels


def limit_training_images(manifest: pd.DataFrame, positions, limits: dict, *, seed: int = 0) -> np.ndarray:
    """Cut the training images of some classes to a number of images, by sample.

    For each limited class, its samples among ``positions`` are put in a random order (seeded by ``seed`` and the
    class name), each sample's images too, and the first ``limit`` images of that sequence are kept: whole
    samples first, the last one partly. The same seed gives nested cuts (a cut of 8 is part of the cut of 16).

    Parameters
    ----------
    manifest : DataFrame
        With ``material`` and ``sample_id``.
    positions : array of int
        Row positions of a training partition.
    limits : dict of str -> int
        Material -> most training images to keep (>= 1); other classes are kept whole.
    seed : int

    Returns
    -------
    ndarray of int
        The kept positions, in their original order.
    """
    positions = np.asarray(positions, dtype=np.int64)
    materials = manifest["material"].to_numpy()[positions]
    samples = manifest["sample_id"].astype(str).to_numpy()[positions]
    keep = np.ones(len(positions), dtype=bool)
    for material, limit in limits.items():
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"training limit of {material!r} must be a whole number of images >= 1, got {limit!r}")
        rows = np.flatnonzero(materials == material)
        if len(rows) <= limit:
            continue
        rng = np.random.default_rng([int(seed), zlib.crc32(str(material).encode())])
        sequence = []
        for sample in rng.permutation(np.unique(samples[rows])):
            sequence.extend(rng.permutation(rows[samples[rows] == sample]).tolist())
        keep[rows] = False
        keep[sequence[:limit]] = True
    return positions[keep]


def fold_training_positions(split: pd.DataFrame, fold: int, *, train_limits: dict | None = None,
                            seed: int = 0) -> np.ndarray:
    """Training positions of one fold after the per-class limits (seeded per fold, as the training uses them)."""
    train = fold_partitions(split, fold)["train"]
    if not train_limits:
        return train
    return limit_training_images(split, train, train_limits, seed=seed * 1009 + fold)


def _fold_partitions(split: pd.DataFrame, fold: int, train_limits: dict | None, seed: int) -> dict:
    parts = fold_partitions(split, fold)
    parts["train"] = fold_training_positions(split, fold, train_limits=train_limits, seed=seed)
    return parts


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


def inner_split(split: pd.DataFrame, train: np.ndarray, *, fraction: float = 0.25, seed: int = 0) -> dict:
    """Training positions split again by sample: about ``fraction`` of each class's samples for inner validation.

    A class with a single training sample stays wholly in inner training. Returns ``{"train", "val", "test"}``
    position arrays (test empty), for tuning that never sees the fold's validation or the test set.
    """
    rng = np.random.default_rng([seed, 4099])
    frame = split.iloc[train]
    held = []
    for _, samples in frame.groupby("material", sort=True)["sample_id"]:
        unique = np.array(sorted(set(samples)))
        if len(unique) < 2:
            continue
        count = max(1, int(round(fraction * len(unique))))
        held += list(rng.choice(unique, size=min(count, len(unique) - 1), replace=False))
    is_val = frame["sample_id"].isin(held).to_numpy()
    return {"train": train[~is_val], "val": train[is_val], "test": np.zeros(0, dtype=np.int64)}


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


def cross_validate(data, out_dir, *, arch: str = "resnet18", weights: str = "imagenet-v1", task: str = "mtc",
                   folds: int = 5, epochs: int = 60, lr: float = 7.5e-5, batch_size: int = 32,
                   dropout: float = 0.0, image_size: int | None = None, device: str = "cpu", seed: int = 0,
                   select: str = "f1", weighted_sampler: bool = True, test_fraction: float = 0.1,
                   precision: str = "auto", schedule: str = "constant", optimizer: str = "adam",
                   dask_address: str | None = None, progress: bool = False, labels: LabelSpace | None = None,
                   presplit: bool = False, fold_weights: dict | None = None, train_limits: dict | None = None,
                   images: torch.Tensor | None = None, save_optimizer: bool = True, head: str = "keep",
                   weight_decay: float = 0.0, tune: bool | dict = False,
                   allow_duplicates: bool = False, fold_jobs: int = 1) -> dict:
    """Cross-validate a classifier and write its run directory.

    Parameters
    ----------
    data : DataFrame or FeatureTable
        A tidy image manifest (fine-tuning / scratch) or a feature table (feature-extraction MLP; ``arch``,
        ``weights`` and ``image_size`` are then unused).
    out_dir : str or Path
        Run directory; created. An existing run with the same settings is resumed: folds whose checkpoint is
        complete are not retrained.
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
    frame, features, notes = _labelled_frame(data)
    is_image = features is None
    config = TrainConfig(arch=arch if is_image else None, weights=str(weights) if is_image else None, task=task,
                         folds=folds, epochs=epochs, lr=lr, batch_size=batch_size, dropout=dropout,
                         image_size=(image_size or default_image_size(frame)) if is_image else None, device=device,
                         precision=precision, seed=seed, select=select, weighted_sampler=weighted_sampler,
                         test_fraction=test_fraction, weight_decay=weight_decay, schedule=schedule,
                         optimizer=optimizer).validate()
    if tune is True:
        tune = FEATURE_MLP_GRID
    tune = {k: [float(v) for v in tune[k]] for k in FEATURE_MLP_GRID} if tune else None
    if tune is not None and is_image:
        raise ValueError("tune searches the feature-extraction MLP; image runs use grid_search (comma lists)")
    if is_image and not allow_duplicates and "path" in frame.columns:
        from .data.readers import duplicates_message, find_duplicates

        repeats = find_duplicates(frame)
        if repeats:
            raise ValueError(duplicates_message(repeats) + "; remove them or pass --allow-duplicates")
    split, labels = prepare_split(data, folds=folds, test_fraction=test_fraction, seed=seed, labels=labels,
                                  presplit=presplit)
    fold_weights = {int(k): str(v) for k, v in (fold_weights or {}).items()}
    unknown_folds = sorted(set(fold_weights) - set(range(folds)))
    if unknown_folds:
        raise ValueError(f"fold_weights names fold {unknown_folds[0]}, but folds are 0..{folds - 1}")
    if fold_weights and not is_image:
        raise ValueError("fold_weights start image models; a feature-table run has no backbone to start")
    train_limits = {str(k): v for k, v in (train_limits or {}).items()}
    for material, limit in train_limits.items():
        labels.class_index(material)
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise ValueError(f"training limit of {material!r} must be a whole number of images >= 1, got {limit!r}")
    run_dir = Path(out_dir)
    config_document = {**config.to_dict(), "mode": "fine-tune" if is_image else "features",
                       "classes": list(labels.classes), "elements": list(labels.elements),
                       "n_images": len(split), "source": str(frame.attrs.get("root", "")), "notes": notes}
    if head not in HEAD_STARTS:
        raise ValueError(f"head must be one of {', '.join(HEAD_STARTS)}, got {head!r}")
    if fold_weights:
        # Relative to the run folder: a study trained in a staging folder and moved into place (the store) keeps
        # pointing at its real start checkpoints, and resumes after the move.
        config_document["fold_weights"] = {str(k): os.path.relpath(Path(v).resolve(), Path(out_dir).resolve())
                                           for k, v in sorted(fold_weights.items())}
        config_document["head"] = head
    if tune is not None:
        config_document["tune"] = tune
    if train_limits:
        config_document["train_limits"] = {k: int(v) for k, v in train_limits.items()}
    if is_image and config.weights not in ("none", "imagenet-v1", "imagenet-v2"):
        config_document["mode"] = "from-checkpoint"
    elif is_image and config.weights == "none":
        config_document["mode"] = "scratch"
    _check_resumable(run_dir, config_document)
    if is_image:  # fail on unavailable weights before anything is written or loaded
        build_model(config.arch, 1, weights=config.weights)
    missing = sorted(path for path in fold_weights.values() if not Path(path).is_file())
    if missing:
        raise FileNotFoundError(f"{missing[0]}: starting checkpoint of a fold not found; train that run first")
    if images is not None and is_image:
        expected = (len(split), 1, config.image_size, config.image_size)
        if tuple(images.shape) != expected:
            raise ValueError(f"images has shape {tuple(images.shape)}, expected {expected} (load_data of the same "
                             "rows at image_size)")
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    _write_json(run_dir / CONFIG_NAME, config_document)
    split_columns = [c for c in ("image", "sample_id", "material", "split", "fold") if c in split.columns]
    split[split_columns].to_csv(run_dir / SPLITS_NAME, index=False)

    class_index = np.array([labels.class_index(m) for m in split["material"]], dtype=np.int64)
    done = {k: _finished_fold(checkpoint_path(run_dir, k)) for k in range(folds)}
    todo = [k for k, ck in done.items() if ck is None]
    folds_done = progress if callable(progress) else None
    progress = progress is True  # tqdm bars of reading and of each fold's epochs
    report(folds_done, "training folds", folds - len(todo), folds)
    if isinstance(fold_jobs, bool) or not isinstance(fold_jobs, (int, np.integer)) or fold_jobs < 1:
        raise ValueError(f"fold_jobs must be a whole number >= 1, got {fold_jobs!r}")
    if todo and (dask_address is not None or (fold_jobs > 1 and len(todo) > 1)):
        from .parallel import imap_items

        # Local processes get the inputs read once here (the sequential study passes them in already); a Dask
        # worker reads its own, since the tensor would cross the network.
        stored = features if dask_address is not None else _stored_inputs(features, images, split, config, progress)
        spec = {"split": split, "stored": stored, "image_size": config.image_size, "class_index": class_index,
                "labels": (labels.classes, labels.elements), "train_limits": train_limits, "head": head,
                "tune": tune, "threads": None if dask_address is not None else 1}
        tasks = [{**spec, "fold": k, "config": _fold_config(config, fold_weights, k).to_dict()} for k in todo]
        # One fold per task; each checkpoint is written as soon as its fold finishes, so an interrupted run resumes.
        for position, checkpoint in imap_items(_fold_task, tasks, dask_address=dask_address, chunk_size=1,
                                               jobs=min(int(fold_jobs), len(todo)), start_method="spawn"):
            _save_fold(checkpoint, run_dir, todo[position], save_optimizer)
            done[todo[position]] = checkpoint
            report(folds_done, "training folds", sum(ck is not None for ck in done.values()), folds)
    elif todo:
        stored = _stored_inputs(features, images, split, config, progress)
        for k in todo:
            fold_data = FoldData(stored, class_index, labels, _fold_partitions(split, k, train_limits, config.seed),
                                 image_size=config.image_size, extra={"head": head})
            checkpoint = _fit_fold_tuned(fold_data, split, _fold_config(config, fold_weights, k), k, tune,
                                         progress=progress)
            _save_fold(checkpoint, run_dir, k, save_optimizer)
            done[k] = checkpoint
            report(folds_done, "training folds", sum(ck is not None for ck in done.values()), folds)

    checkpoints = [done[k] for k in range(folds)]
    history = pd.DataFrame([row for ck in checkpoints for row in ck["history"]], columns=list(HISTORY_COLUMNS))
    history.to_csv(run_dir / HISTORY_NAME, index=False)
    metrics = summarize_folds(checkpoints)
    _write_json(run_dir / METRICS_NAME, metrics)
    return metrics


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


# --- feature extraction -----------------------------------------------------------------------------------------

def extract(manifest: pd.DataFrame, *, arch: str = "resnet18", weights: str = "imagenet-v1",
            image_size: int | None = None, device: str = "cpu", batch_size: int = 32,
            progress: bool = False) -> pd.DataFrame:
    """Pooled features of a frozen backbone for every image (the paper's feature-extraction mode).

    Parameters
    ----------
    manifest : DataFrame
        Tidy image manifest.
    arch, weights : see :func:`tmdafm_core.models.build_model`
        The paper uses ``resnet18`` with ``imagenet-v1``.
    image_size : int, optional
        Model input side in pixels; default :func:`default_image_size`.
    device : {"cpu", "cuda"}
    batch_size : int
        Images per forward pass.
    progress : bool
        tqdm bars on stderr.

    Returns
    -------
    DataFrame
        ``image``, ``sample_id``, ``material``, ``split`` and ``f0 .. f{C-1}`` (float32; C = 512 for ResNet18/34,
        2048 for ResNet50/101/152): the global-average-pooled last convolutional stage.
    """
    from tqdm.auto import tqdm

    torch_device = resolve_device(device)
    model = build_model(arch, 1, weights=weights).to(torch_device, memory_format=torch.channels_last).eval()
    image_size = check_input_side(image_size or default_image_size(manifest))
    batches = InputBatches(load_data(manifest, image_size=image_size, progress=progress), mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, device=torch_device)
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(manifest), batch_size), desc="extracting", unit="batch",
                          disable=not progress, leave=False):
            with _autocast(torch_device):
                features = model.backbone_features(batches(np.arange(start, min(start + batch_size, len(manifest)))))
            chunks.append(features.float().cpu().numpy())
    features = np.concatenate(chunks)
    table = manifest[[c for c in ("image", "sample_id", "material", "split") if c in manifest.columns]]
    table = table.reset_index(drop=True)
    columns = pd.DataFrame(features, columns=[f"f{i}" for i in range(features.shape[1])])
    return pd.concat([table, columns], axis=1)


def write_table(table: pd.DataFrame, path) -> Path:
    """Write a table as ``.parquet`` or ``.csv`` (chosen by the suffix)."""
    path = Path(path)
    if path.suffix.lower() not in (".parquet", ".csv"):
        raise ValueError(f"{path}: output table must end in .parquet or .csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".parquet":
        table.to_parquet(path, index=False)
    else:
        table.to_csv(path, index=False)
    return path


# --- using a trained run ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """A trained fold, ready for inference (model in eval mode, BatchNorm folded into the convolutions).

    Attributes
    ----------
    model : ResNetClassifier or Head
        ResNet for image runs, the MLP head for feature-table runs.
    labels : LabelSpace
    task : {"mtc", "mtl"}
    image_size : int or None
        Model input side (image runs).
    mean, std : list of float
        Input normalisation.
    fold : int
    path : Path
        Run directory.
    device : torch.device
    scaling : {"min-max", "paper"}
        How pixel values become 0..1.
    temperature : float
        Logits are divided by it before probabilities are formed (calibration fitted on the fold's validation
        images; 1.0 for a run that has none).
    novelty : dict or None
        The fold's :func:`tmdafm_core.novelty.fit_reference` (None: trained before references were kept, or
        imported).
    """

    model: nn.Module
    labels: LabelSpace
    task: str
    image_size: int | None
    mean: list
    std: list
    fold: int
    path: Path
    device: torch.device
    scaling: str = "min-max"
    temperature: float = 1.0
    novelty: dict | None = None
    calibrated: bool = False

    @property
    def is_image(self) -> bool:
        return isinstance(self.model, ResNetClassifier)

    @property
    def trust_note(self) -> str | None:
        """Why this model's probabilities are not calibrated or its novelty is unknown, with the cure; None when
        both are there."""
        if self.calibrated and (self.novelty is not None or not self.is_image):
            return None
        config = self.path / CONFIG_NAME
        if config.is_file() and json.loads(config.read_text()).get("mode") == "imported":
            return (f"{self.path}: an imported model has no validation images to calibrate on and no training images "
                    "to judge novelty against: probabilities are uncalibrated and novelty is unknown")
        return (f"{self.path}: fold {self.fold} was trained before tmdafm kept calibration and a novelty reference: "
                "probabilities are uncalibrated and novelty is unknown; retrain it (`tmdafm train DATA --out "
                "NEW_FOLDER` with its settings) or rebuild the store (`tmdafm precompute --out STORE`)")

    def input_size(self, manifest: pd.DataFrame) -> int:
        """Model input side for a data set: the run's, or (a model imported without one) the images' own."""
        if self.image_size is not None:
            return int(self.image_size)
        sizes = set(zip(manifest["height"].astype(int), manifest["width"].astype(int), strict=True))
        if len(sizes) != 1 or len({*next(iter(sizes))}) != 1:
            raise ValueError(f"{self.path}: this model runs at the images' own size, but the images are "
                             f"{', '.join(f'{h}x{w}' for h, w in sorted(sizes)[:4])} px; re-import it with "
                             "--image-size N to resize them all")
        return next(iter(sizes))[0]

    def batches(self, stored: torch.Tensor) -> InputBatches:
        return InputBatches(stored, mean=self.mean, std=self.std, device=self.device, channels_last=self.is_image)


def best_fold(run_dir) -> int:
    """The fold with the highest validation macro-F1 in a run's ``metrics.json`` (ties: lower validation loss).

    An imported model (``tmdafm import-model``) has one fold and no scores: fold 0.
    """
    config = Path(run_dir) / CONFIG_NAME
    if config.is_file() and json.loads(config.read_text()).get("mode") == "imported":
        return 0
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {run_dir} is not a finished run directory (train it first)")
    per_fold = json.loads(path.read_text())["per_fold"]
    return min(per_fold, key=lambda f: (-f["f1_macro"]["val"], f["loss"]["val"]))["fold"]


def load_run(run_dir, fold="best", *, device: str = "cpu") -> Run:
    """Load one fold of a run directory for inference.

    Parameters
    ----------
    run_dir : str or Path
        Directory written by :func:`cross_validate`.
    fold : int or "best"
        Fold number, or the one with the best validation macro-F1.
    device : {"cpu", "cuda"}
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    fold = best_fold(run_dir) if fold == "best" else int(fold)
    checkpoint = load_checkpoint(checkpoint_path(run_dir, fold))
    labels = LabelSpace(tuple(checkpoint["classes"]), tuple(checkpoint["elements"]))
    n_outputs = len(labels.classes) if checkpoint["task"] == "mtc" else len(labels.elements)
    dropout = checkpoint["args"].get("dropout", 0.0)
    if checkpoint["arch"] is not None:
        model = build_model(checkpoint["arch"], n_outputs, weights="none", dropout=dropout,
                            latent_dim=checkpoint.get("latent_dim", LATENT_DIM))
    else:
        model = build_feature_mlp(checkpoint["in_features"], n_outputs, dropout=dropout)
    model.load_state_dict(checkpoint["model"])
    torch_device = resolve_device(device)
    model.eval()
    if checkpoint["arch"] is not None:
        model = fold_batchnorm(model).to(torch_device, memory_format=torch.channels_last)
    calibration, novelty = checkpoint.get("calibration"), checkpoint.get("novelty")
    if novelty is not None:
        novelty = {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in novelty.items()}
    return Run(model.to(torch_device), labels, checkpoint["task"], checkpoint["image_size"],
               checkpoint["mean"], checkpoint["std"], fold, run_dir, torch_device,
               scaling=checkpoint.get("scaling", "min-max"),
               temperature=float(calibration["temperature"]) if calibration else 1.0, novelty=novelty,
               calibrated=calibration is not None)


@dataclass
class Predictions:
    """Per-image results of :func:`predict`.

    Attributes
    ----------
    images : list of str
        Names of the inputs (file paths, or ``array<i>`` for arrays) that were classified.
    skipped : list of (str, str)
        Inputs left out and why (``on_error="skip"``).
    agreement, spread : ndarray, shape (N,), or None
        Fold ensembles only (:func:`predict_ensemble`): share of folds that pick the ensemble's material, and the
        standard deviation over folds of its probability.
    materials : list of str
        Predicted material (MtL: the most likely valid material).
    class_probabilities : ndarray, shape (N, n_classes)
        MtC: softmax. MtL: the decoded class likelihoods normalised over the valid materials. Of the logits divided
        by the fold's temperature (calibrated, see ``calibrated``).
    element_probabilities : ndarray, shape (N, n_elements) or None
        MtL only: sigmoid of each element output (divided by the temperature).
    novelty : ndarray, shape (N,)
        :func:`tmdafm_core.novelty.novelty_scores` (ensembles: the mean over folds); above 1 the image is unlike
        the training images (``unfamiliar``). NaN when the run keeps no reference (see ``notes``).
    calibrated : bool
        Whether every model used had a fitted temperature.
    notes : list of str
        Why probabilities are uncalibrated or novelty unknown (:attr:`Run.trust_note`), once per run.
    embeddings : ndarray of float32, shape (N, 100)
        The latent features.
    cams : list of ndarray (H, W) in 0..1, or None
        Class activation maps at each input's own size.
    classes, elements : tuple of str
    """

    images: list
    materials: list
    class_probabilities: np.ndarray
    element_probabilities: np.ndarray | None
    embeddings: np.ndarray
    cams: list | None
    classes: tuple
    elements: tuple
    skipped: list = field(default_factory=list)
    agreement: np.ndarray | None = None
    spread: np.ndarray | None = None
    novelty: np.ndarray | None = None
    calibrated: bool = False
    notes: list = field(default_factory=list)

    @property
    def unfamiliar(self) -> np.ndarray:
        """Whether each image is further from the training images than the held-out threshold (False if unknown)."""
        from .novelty import unfamiliar

        return unfamiliar(self.novelty if self.novelty is not None else np.full(len(self.images), np.nan))

    def to_frame(self) -> pd.DataFrame:
        """One row per image: ``image``, ``material``, ``p_<class>``, (MtL) ``p_<element>``, (ensembles)
        ``agreement`` and ``spread``, then ``novelty`` and ``unfamiliar`` (empty when unknown)."""
        frame = pd.DataFrame({"image": self.images, "material": self.materials})
        for i, name in enumerate(self.classes):
            frame[f"p_{name}"] = self.class_probabilities[:, i]
        if self.element_probabilities is not None:
            for i, name in enumerate(self.elements):
                frame[f"p_{name}"] = self.element_probabilities[:, i]
        if self.agreement is not None:
            frame["agreement"] = self.agreement
            frame["spread"] = self.spread
        novelty = self.novelty if self.novelty is not None else np.full(len(self.images), np.nan)
        frame["novelty"] = novelty
        frame["unfamiliar"] = pd.array([None if np.isnan(v) else bool(flag) for v, flag in
                                        zip(novelty, self.unfamiliar, strict=True)], dtype="boolean")
        return frame


def _as_height_map(item, index: int, scaling: str = "min-max",
                   crop_um: float | None = DEFAULT_CROP_UM) -> tuple[str, np.ndarray]:
    if isinstance(item, (str, os.PathLike)):
        name, image = str(item), load_image(item, scaling=scaling, crop_um=crop_um)[0]
    else:
        array = np.asarray(item)
        if array.ndim != 2:
            raise ValueError(f"image {index}: expected a file path or a 2-D array, got an array of shape "
                             f"{array.shape}")
        name, image = f"array{index}", scale_pixels(array, scaling=scaling, source=f"image {index}")
    if min(image.shape) < MIN_SIDE_PX:
        raise ValueError(f"{name}: {image.shape[1]} x {image.shape[0]} px is too small to classify (at least "
                         f"{MIN_SIDE_PX} px a side)")
    return name, image


def _same_shape_batches(tensors: list, batch_size: int):
    """Consecutive index ranges of at most ``batch_size`` tensors of one shape (a model at native size)."""
    start = 0
    while start < len(tensors):
        stop = start + 1
        while stop < len(tensors) and stop - start < batch_size and tensors[stop].shape == tensors[start].shape:
            stop += 1
        yield start, stop
        start = stop


def _check_finite(values: torch.Tensor, run: Run) -> None:
    """NaN/inf outputs come from a damaged checkpoint; never report them as a prediction."""
    if not torch.isfinite(values).all():
        raise ValueError(f"{run.path}: fold {run.fold} gives non-finite outputs (NaN/inf); its checkpoint "
                         f"fold{run.fold}.pt is damaged: retrain the run or restore the file")


def predict(run: Run, images, *, cam: bool | str = False, batch_size: int = 32,
            latent: str = "pre-relu", on_error: str = "raise", crop_um: float | None = DEFAULT_CROP_UM) -> Predictions:
    """Classify images with a trained image run.

    Parameters
    ----------
    run : Run
        From :func:`load_run`.
    images : sequence of (path or 2-D array)
        Image files (any :func:`load_image` type) or height maps (scaled to 0..1 here).
    cam : bool or {"paper", "grad"}
        Also compute class activation maps: ``True``/``"paper"`` the paper's map, ``"grad"`` Grad-CAM of the
        predicted class (see :mod:`tmdafm_core.cam`).
    batch_size : int
        Images per forward pass.
    latent : {"pre-relu", "post-relu"}
        Which head activations ``Predictions.embeddings`` holds (the paper's: pre-ReLU).
    on_error : {"raise", "skip"}
        An unreadable or too small (< 32 px) image stops the call, or is left out and listed in
        ``Predictions.skipped`` (ValueError when none is left).
    crop_um : float or None
        Instrument files: the central crop (µm) classified after levelling, or None for the whole scan.

    Returns
    -------
    Predictions
    """
    _check_predict_options(run, cam, latent)
    loaded, skipped = _load_inputs(images, run.scaling, on_error, crop_um)
    return _predict_loaded(run, loaded, skipped, cam=cam, batch_size=batch_size, latent=latent)


def _check_predict_options(run: Run, cam, latent: str) -> None:
    if not run.is_image:
        raise ValueError(f"{run.path}: a feature-table run classifies feature vectors, not images")
    if cam not in (False, True, "paper", "grad"):
        raise ValueError(f"cam must be False, True, 'paper' or 'grad', got {cam!r}")
    check_latent(latent)


def _load_inputs(images, scaling: str, on_error: str, crop_um: float | None = DEFAULT_CROP_UM) -> tuple[list, list]:
    """``([(name, height map 0..1)], [(name, why skipped)])`` of paths or arrays, read once for every fold."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    loaded, skipped = [], []
    for i, item in enumerate(images):
        try:
            loaded.append(_as_height_map(item, i, scaling, crop_um))
        except ValueError as exc:
            if on_error == "raise":
                raise
            name = str(item) if isinstance(item, (str, os.PathLike)) else f"array{i}"
            skipped.append((name, str(exc).removeprefix(f"{name}: ")))
    if not loaded:
        detail = f"; {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"no images to predict{detail}")
    return loaded, skipped


def _predict_loaded(run: Run, loaded: list, skipped: list, *, cam, batch_size: int, latent: str) -> Predictions:
    from .cam import grad_cam, maps_to_cam

    names = [name for name, _ in loaded]
    # A model imported without an input size sees every image at its own size.
    inputs = [resize_image(image, run.image_size) if run.image_size
              else torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None] for _, image in loaded]
    element_matrix = torch.as_tensor(run.labels.element_matrix) if run.task == "mtl" else None
    logits_all, latent_all, statistics_all, cams = [], [], [], [] if cam else None
    for start, stop in _same_shape_batches(inputs, batch_size):
        x = run.batches(torch.stack(inputs[start:stop]))(np.arange(stop - start))
        with torch.inference_mode(), _autocast(run.device):
            logits, embedding, maps, statistics = run.model.forward_all(x, latent=latent)
        logits_all.append(logits.float().cpu())
        latent_all.append(embedding.float().cpu())
        statistics_all.append(statistics.float().cpu())
        if cam in (True, "paper"):
            for j, (_, image) in enumerate(loaded[start:start + len(x)]):
                cams.append(maps_to_cam(maps[j:j + 1].float(), size=image.shape)[0].cpu().numpy())
        elif cam == "grad":
            for j, (_, image) in enumerate(loaded[start:start + len(x)]):
                heat, _ = grad_cam(run.model, x[j:j + 1], element_matrix=element_matrix, size=image.shape)
                cams.append(heat[0].cpu().numpy())
    logits = torch.cat(logits_all)
    _check_finite(logits, run)
    logits = logits / run.temperature
    scores = class_log_scores(logits, element_matrix=element_matrix)
    novelty = None
    if run.novelty is not None:
        from .novelty import novelty_scores

        novelty = novelty_scores(run.novelty, torch.cat(statistics_all).numpy())
    return Predictions(
        images=names,
        materials=[run.labels.classes[i] for i in scores.argmax(dim=1).tolist()],
        class_probabilities=torch.softmax(scores, dim=1).numpy(),
        element_probabilities=torch.sigmoid(logits).numpy() if run.task == "mtl" else None,
        embeddings=torch.cat(latent_all).numpy(),
        cams=cams,
        classes=run.labels.classes,
        elements=run.labels.elements,
        skipped=skipped,
        novelty=novelty,
        calibrated=run.calibrated,
        notes=[note] if (note := run.trust_note) else [],  # read once: it may open the run's config.json
    )


def load_ensemble(run_dir, *, device: str = "cpu") -> list[Run]:
    """Every fold model of a run, the best validation fold first (what :func:`predict_ensemble` averages)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    folds = sorted(int(p.stem[4:]) for p in run_dir.glob("fold*.pt") if p.stem[4:].isdigit())
    if not folds:
        raise FileNotFoundError(f"{run_dir}: no fold checkpoints (fold<k>.pt); train the run first")
    best = best_fold(run_dir)
    return [load_run(run_dir, fold, device=device) for fold in [best] + [f for f in folds if f != best]]


def predict_ensemble(runs, images, *, cam: bool | str = False, batch_size: int = 32, latent: str = "pre-relu",
                     on_error: str = "raise", crop_um: float | None = DEFAULT_CROP_UM) -> Predictions:
    """Classify images with every fold model of a run and average their probabilities (the paper reports test
    results over its fold models).

    Parameters
    ----------
    runs : list of Run
        From :func:`load_ensemble` (best fold first); all of one run (same classes, input size and scaling).
    images, cam, batch_size, latent, on_error, crop_um
        As in :func:`predict`; the images are read once. Activation maps and embeddings are the best fold's
        (each fold has its own latent space; an average of them means nothing).

    Returns
    -------
    Predictions
        ``class_probabilities`` (and MtL ``element_probabilities``) are the means over folds of each fold's
        calibrated probabilities; ``materials`` their argmax; ``agreement`` the share of folds whose own prediction
        is that material; ``spread`` the standard deviation (ddof 0) over folds of that material's probability;
        ``novelty`` the mean over folds of each fold's novelty (each against its own training images and
        held-out threshold).
    """
    runs = list(runs)
    if not runs:
        raise ValueError("no fold models to predict with")
    first = runs[0]
    if any((r.labels, r.task, r.image_size, r.scaling) != (first.labels, first.task, first.image_size, first.scaling)
           for r in runs):
        raise ValueError("the fold models differ in classes, task, input size or scaling; give the folds of one run")
    for run in runs:
        _check_predict_options(run, cam if run is first else False, latent)
    loaded, skipped = _load_inputs(images, first.scaling, on_error, crop_um)
    each = [_predict_loaded(run, loaded, skipped, cam=cam if run is first else False, batch_size=batch_size,
                            latent=latent) for run in runs]
    probabilities = np.stack([p.class_probabilities for p in each])  # (folds, images, classes)
    mean = probabilities.mean(axis=0)
    chosen = mean.argmax(axis=1)
    rows = np.arange(len(chosen))
    votes = np.stack([p.class_probabilities.argmax(axis=1) for p in each]) == chosen[None, :]
    elements = None if first.task != "mtl" else np.stack([p.element_probabilities for p in each]).mean(axis=0)
    known = all(p.novelty is not None for p in each)
    return dataclasses.replace(
        each[0], materials=[first.labels.classes[i] for i in chosen], class_probabilities=mean,
        element_probabilities=elements, agreement=votes.mean(axis=0),
        spread=probabilities[:, rows, chosen].std(axis=0),
        novelty=np.mean([p.novelty for p in each], axis=0) if known else None,
        calibrated=all(p.calibrated for p in each),
        notes=list(dict.fromkeys(note for p in each for note in p.notes))[:1])


def embed(run: Run, data, *, batch_size: int = 64, progress: bool = False, latent: str = "pre-relu") -> np.ndarray:
    """Latent features (the head's 100 hidden outputs, pre-ReLU as in the paper) of every image of a data set.

    Parameters
    ----------
    run : Run
        From :func:`load_run`.
    data : DataFrame or ndarray
        A tidy image manifest (image runs), or a (N, in_features) feature matrix (feature-table runs).
    batch_size : int
    progress : bool
    latent : {"pre-relu", "post-relu"}
        Outputs of the head's first Linear layer before (the paper's latent features) or after its ReLU.

    Returns
    -------
    ndarray of float32, shape (N, 100), in the row order of ``data``.
    """
    from tqdm.auto import tqdm

    if run.is_image:
        if not isinstance(data, pd.DataFrame):
            raise ValueError("an image run embeds a manifest DataFrame (read_dataset)")
        stored = load_data(data, image_size=run.input_size(data), progress=progress, scaling=run.scaling)
    else:
        stored = torch.as_tensor(np.asarray(data, dtype=np.float32))
        if stored.ndim != 2 or stored.shape[1] != run.model.in_features:
            raise ValueError(f"a feature run embeds an (N, {run.model.in_features}) matrix, got {tuple(stored.shape)}")
    batches = run.batches(stored)
    chunks = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(stored), batch_size), desc="embedding", unit="batch", disable=not progress,
                          leave=False):
            with _autocast(run.device):
                values = run.model.embed(batches(np.arange(start, min(start + batch_size, len(stored)))),
                                         latent=latent)
            _check_finite(values, run)
            chunks.append(values.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 100), dtype=np.float32)


def format_metrics(metrics: dict) -> str:
    """Short text summary of a ``metrics.json`` document (what ``tmdafm train`` prints)."""
    lines = [f"task {metrics['task']}, {metrics['folds']} folds, classes: {', '.join(metrics['classes'])}",
             f"{'':22s}{'train':>16s}{'val':>16s}{'test':>16s}   (%, mean ± sample std over folds)"]
    blocks = [("", metrics)]
    if "paper_rule" in metrics:
        blocks.append((" (paper rule)", metrics["paper_rule"]))
    for suffix, block in blocks:
        for metric in ("accuracy", "f1_macro"):
            cells = "".join(f"{100 * block[metric][s]['mean']:9.1f} ± {100 * block[metric][s]['std']:4.1f}"
                            for s in PARTITIONS)
            lines.append(f"{metric + suffix:22s}{cells}")
    if "paper_rule" in metrics:
        lines.append(f"MtL decoding: most likely valid material; paper rule: {MTL_RULES['paper']}")
    if "calibration" in metrics:
        block = metrics["calibration"]
        lines.append(f"calibration: temperature {min(block['temperature']):.2f}-{max(block['temperature']):.2f} "
                     f"(fitted on each fold's validation images); test ECE {block['ece_uncalibrated']['test']:.3f} "
                     f"-> {block['ece']['test']:.3f}, Brier {block['brier_uncalibrated']['test']:.3f} -> "
                     f"{block['brier']['test']:.3f}")
    if "novelty" in metrics:
        flagged = metrics["novelty"]["flagged"]
        lines.append(f"novelty: unfamiliar beyond the {100 * metrics['novelty']['quantile']:.0f}th percentile of "
                     f"held-out images; flags {100 * flagged['val']:.1f} % of validation and "
                     f"{100 * flagged['test']:.1f} % of test images")
    return "\n".join(lines)
