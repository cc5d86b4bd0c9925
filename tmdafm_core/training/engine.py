"""The training engine: scores, MtL decoding, the optimizer and its schedule, one epoch (:func:`train_one_epoch`,
:func:`evaluate`) and one fold (:func:`fit_fold`) with its held-out calibration and novelty reference."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..data import LabelSpace
from ..layout import PARTITIONS
from ..models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ResNetClassifier,
    build_feature_mlp,
    build_model,
    class_log_scores,
)
from .config import WARMUP_SHARE, TrainConfig, _autocast, resolve_device, resolve_precision
from .inputs import InputBatches, _criterion, _targets, epoch_order

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


def _warmup_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    return max(1, round(WARMUP_SHARE * config.epochs * steps_per_epoch))


class WeightAverage:
    """Exponential moving average of a model's weights and BatchNorm statistics (torchvision references'
    ``--model-ema``), updated after every optimizer step from ``start_step`` on.

    It starts after the learning-rate warm-up: the weights before are far from where training settles. Validating
    the average instead of the last step's weights removes most of the epoch-to-epoch jumps of a short, high-rate
    training.
    """

    def __init__(self, model: nn.Module, decay: float, *, start_step: int):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self._averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._start_step, self._steps = start_step, 0

    def update(self, model: nn.Module) -> None:
        self._steps += 1
        if self._steps >= self._start_step:
            self._averaged.update_parameters(model)

    def scored(self, model: nn.Module) -> nn.Module:
        """The model to validate and keep: the average once it has started, else ``model`` itself."""
        return self._averaged.module if int(self._averaged.n_averaged) > 0 else model


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
    warmup = _warmup_steps(config, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --- one epoch --------------------------------------------------------------------------------------------------

def train_one_epoch(model, optimizer, criterion, batches: InputBatches, targets: torch.Tensor,
                    class_index: np.ndarray, order: np.ndarray, *, task: str, element_matrix, batch_size: int,
                    flip_generator: torch.Generator, n_classes: int, precision: str = "auto",
                    scheduler=None, averaged: WeightAverage | None = None) -> dict:
    """One pass over ``order`` (training positions) in train mode; ``scheduler`` and ``averaged`` step after every
    batch.

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
        if averaged is not None:
            averaged.update(model)
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
    averaged = WeightAverage(model, config.ema_decay, start_step=_warmup_steps(config, steps)) \
        if config.ema_decay > 0 else None
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
                                flip_generator=generator, scheduler=scheduler, averaged=averaged, **common)
        scored = averaged.scored(model) if averaged is not None else model
        val = evaluate(scored, criterion, batches, targets, data.class_index, parts["val"], keep_outputs=True,
                       **common)
        history += [{"fold": fold, "epoch": epoch, "split": split, "loss": s["loss"], "accuracy": s["accuracy"],
                     "f1_macro": s["f1_macro"]} for split, s in (("train", train), ("val", val))]
        if _is_better(val, kept, config.select):
            kept, best_epoch = val, epoch
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in scored.state_dict().items()}
            best_optimizer = copy.deepcopy(optimizer.state_dict())
        epochs.set_postfix(val_f1=f"{val['f1_macro']:.3f}", best=best_epoch)

    model.load_state_dict(best_state)
    scores, outputs = {}, {}
    for split in PARTITIONS:
        # The kept epoch's validation pass scored these very weights: its result is taken, not computed again.
        result = dict(kept) if split == "val" else evaluate(model, criterion, batches, targets, data.class_index,
                                                            parts[split], keep_outputs=True, **common)
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
    from ..calibration import calibration_report
    from ..novelty import fit_reference, novelty_scores, unfamiliar

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
