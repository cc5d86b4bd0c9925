"""Using trained runs: feature extraction (:func:`extract`), loading runs (:func:`load_run`,
:func:`load_ensemble`), :func:`predict`, :func:`predict_ensemble` and :func:`embed`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import LabelSpace, load_image
from ..data.images import MIN_SIDE_PX, check_input_side, scale_pixels
from ..data.scans import DEFAULT_CROP_UM
from ..layout import PARTITIONS
from ..models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LATENT_DIM,
    ResNetClassifier,
    build_feature_mlp,
    build_model,
    check_latent,
    class_log_scores,
    fold_batchnorm,
)
from ..novelty import field_of_view_nm
from .config import CONFIG_NAME, METRICS_NAME, _autocast, resolve_device
from .engine import MTL_RULES
from .inputs import InputBatches, default_image_size, load_data, resize_image
from .rundir import checkpoint_path, load_checkpoint

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
    precision : {"auto", "native", "bf16", "fp32"}
        The run's training precision, which its forward passes here use too (resolved on this machine by
        :func:`~tmdafm_core.training.config.resolve_precision`): its temperature and novelty reference were
        fitted on outputs computed that way, and bf16 is ~3x faster on CPUs that compute it in hardware.
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
    precision: str = "auto"

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
                            latent_dim=checkpoint.get("latent_dim", LATENT_DIM), device="meta")
        # Every tensor comes from the checkpoint, so none is initialised first; assigned tensors keep their dtype.
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in checkpoint["model"].items()},
                              assign=True)
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
               calibrated=calibration is not None, precision=checkpoint["args"].get("precision", "auto"))


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
    field_of_view_nm : ndarray, shape (N,)
        Side (nm) of the square each image covers (the scale check's input); NaN where the pixel size is unknown.
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
    field_of_view_nm: np.ndarray | None = None
    calibrated: bool = False
    notes: list = field(default_factory=list)

    @property
    def unfamiliar(self) -> np.ndarray:
        """Whether each image is further from the training images than the held-out threshold (False if unknown)."""
        from ..novelty import unfamiliar

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


def _as_height_map(item, index: int, scaling: str = "min-max", crop_um: float | None = DEFAULT_CROP_UM,
                   pixel_size_nm: float | None = None) -> tuple[str, np.ndarray, float]:
    """``(name, height map 0..1, field of view in nm or NaN when the pixel size is unknown)``."""
    if isinstance(item, (str, os.PathLike)):
        name = str(item)
        image, pixel_size_nm = load_image(item, scaling=scaling, crop_um=crop_um, pixel_size_nm=pixel_size_nm,
                                          default_scan_nm=None)
    else:
        array = np.asarray(item)
        if array.ndim != 2:
            raise ValueError(f"image {index}: expected a file path or a 2-D array, got an array of shape "
                             f"{array.shape}")
        name, image = f"array{index}", scale_pixels(array, scaling=scaling, source=f"image {index}")
    if min(image.shape) < MIN_SIDE_PX:
        raise ValueError(f"{name}: {image.shape[1]} x {image.shape[0]} px is too small to classify (at least "
                         f"{MIN_SIDE_PX} px a side)")
    # Sizes were checked positive (_pixel_sizes, load_image); unknown is None or NaN, and NaN carries through.
    return name, image, float(field_of_view_nm(np.nan if pixel_size_nm is None else pixel_size_nm, *image.shape))


def _pixel_sizes(pixel_size_nm, n: int) -> list:
    """One pixel size (nm, or None: the file's own / unknown) per input."""
    if pixel_size_nm is None or np.ndim(pixel_size_nm) == 0:
        return _pixel_sizes([pixel_size_nm] * n, n)
    sizes = [None if value is None or not np.isfinite(value) else float(value) for value in pixel_size_nm]
    if any(value is not None and value <= 0 for value in sizes):
        raise ValueError("pixel_size_nm must be positive (NaN or None where unknown)")
    if len(sizes) != n:
        raise ValueError(f"pixel_size_nm has {len(sizes)} values for {n} images; give one per image or one for all")
    return sizes


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
            latent: str = "pre-relu", on_error: str = "raise", crop_um: float | None = DEFAULT_CROP_UM,
            pixel_size_nm=None) -> Predictions:
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
    pixel_size_nm : float or sequence of float, optional
        Nanometres per pixel, one for all images or one per image (NaN/None: unknown). Files default to their own
        (instrument files, TIFF resolution tags); arrays have none. It sets each image's field of view for the
        scale check of the novelty (:mod:`tmdafm_core.novelty`); an image of unknown size gets no scale check.

    Returns
    -------
    Predictions

    Examples
    --------
    Train a small model on a synthetic data set (80 images of 32 px, one epoch, seconds on a CPU), then classify:

    >>> import tempfile
    >>> from tmdafm_core.data import read_dataset
    >>> from tmdafm_core.data.synthetic import write_synthetic_dataset
    >>> from tmdafm_core.training import cross_validate, load_run
    >>> scratch = tempfile.TemporaryDirectory()
    >>> folder = scratch.name
    >>> _ = write_synthetic_dataset(f"{folder}/images", n=80, size=32, seed=0)
    >>> manifest = read_dataset(f"{folder}/images")
    >>> metrics = cross_validate(manifest, f"{folder}/run", weights="none", folds=2, epochs=1, image_size=32)
    >>> sorted(metrics["f1_macro"])
    ['test', 'train', 'val']
    >>> predictions = predict(load_run(f"{folder}/run"), manifest["path"][:3])
    >>> predictions.class_probabilities.shape, predictions.classes
    ((3, 5), ('MoS2', 'WS2', 'WSe2', 'MoSe2', 'Mo-WSe2'))
    >>> scratch.cleanup()
    """
    _check_predict_options(run, cam, latent)
    loaded, skipped = _load_inputs(images, run.scaling, on_error, crop_um, pixel_size_nm)
    return _predict_loaded(run, loaded, skipped, cam=cam, batch_size=batch_size, latent=latent)


def _check_predict_options(run: Run, cam, latent: str) -> None:
    if not run.is_image:
        raise ValueError(f"{run.path}: a feature-table run classifies feature vectors, not images")
    if cam not in (False, True, "paper", "grad"):
        raise ValueError(f"cam must be False, True, 'paper' or 'grad', got {cam!r}")
    check_latent(latent)


def _load_inputs(images, scaling: str, on_error: str, crop_um: float | None = DEFAULT_CROP_UM,
                 pixel_size_nm=None) -> tuple[list, list]:
    """``([(name, height map 0..1, field of view nm)], [(name, why skipped)])`` of paths or arrays, read once for
    every fold."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    images = list(images)
    loaded, skipped = [], []
    for i, (item, pixel_nm) in enumerate(zip(images, _pixel_sizes(pixel_size_nm, len(images)), strict=True)):
        try:
            loaded.append(_as_height_map(item, i, scaling, crop_um, pixel_nm))
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
    from ..cam import grad_cam, maps_to_cam

    names = [name for name, _, _ in loaded]
    # A model imported without an input size sees every image at its own size.
    inputs = [resize_image(image, run.image_size) if run.image_size
              else torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None] for _, image, _ in loaded]
    element_matrix = torch.as_tensor(run.labels.element_matrix) if run.task == "mtl" else None
    logits_all, latent_all, statistics_all, cams = [], [], [], [] if cam else None
    for start, stop in _same_shape_batches(inputs, batch_size):
        x = run.batches(torch.stack(inputs[start:stop]))(np.arange(stop - start))
        with torch.inference_mode(), _autocast(run.device, run.precision):
            logits, embedding, maps, statistics = run.model.forward_all(x, latent=latent)
        logits_all.append(logits.float().cpu())
        latent_all.append(embedding.float().cpu())
        statistics_all.append(statistics.float().cpu())
        if cam in (True, "paper"):
            for j, (_, image, _) in enumerate(loaded[start:start + len(x)]):
                cams.append(maps_to_cam(maps[j:j + 1].float(), size=image.shape)[0].cpu().numpy())
        elif cam == "grad":
            for j, (_, image, _) in enumerate(loaded[start:start + len(x)]):
                heat, _ = grad_cam(run.model, x[j:j + 1], element_matrix=element_matrix, size=image.shape)
                cams.append(heat[0].cpu().numpy())
    logits = torch.cat(logits_all)
    _check_finite(logits, run)
    logits = logits / run.temperature
    scores = class_log_scores(logits, element_matrix=element_matrix)
    field_of_view = np.array([fov for _, _, fov in loaded], dtype=np.float64)
    novelty = None
    if run.novelty is not None:
        from ..novelty import novelty_scores

        novelty = novelty_scores(run.novelty, torch.cat(statistics_all).numpy(), field_of_view=field_of_view)
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
        field_of_view_nm=field_of_view,
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
                     on_error: str = "raise", crop_um: float | None = DEFAULT_CROP_UM,
                     pixel_size_nm=None) -> Predictions:
    """Classify images with every fold model of a run and average their probabilities (the paper reports test
    results over its fold models).

    Parameters
    ----------
    runs : list of Run
        From :func:`load_ensemble` (best fold first); all of one run (same classes, input size and scaling).
    images, cam, batch_size, latent, on_error, crop_um, pixel_size_nm
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
    loaded, skipped = _load_inputs(images, first.scaling, on_error, crop_um, pixel_size_nm)
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
            with _autocast(run.device, run.precision):
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
