"""Pretraining a ResNet backbone on unlabelled AFM images (``tmdafm pretrain``), the demo's stand-in for ImageNet.

ImageNet weights cannot be downloaded everywhere (not on the demo's machine), and a lab's archive of unlabelled
scans is closer to its films than photographs are. :func:`pretrain_backbone` trains a torchvision ResNet on such
images without labels and returns an ImageNet-style state dict (``fc`` left out) that ``--weights BACKBONE.pt``
fine-tunes from like any torchvision state dict (:func:`tmdafm_core.models.build_model`).

Objectives (``objective``):

``"contrastive"``
    SimCLR (Chen et al. 2020): two random views of each image (crop of 40-100 % of the area resized back, flips,
    quarter turns, height contrast and offset, noise) are pulled together and pushed away from the other images'
    views (NT-Xent loss, temperature 0.2) through a two-layer projection head that is discarded afterwards. Needs
    nothing but images: the objective for a lab's archive.
``"parameters"``
    Regression of the physical parameters an image was made with (standardised, log scale for densities and sizes;
    parameters a sample lacks, such as the terrace spacing of a film without terraces, are left out of its loss).
    Needs those parameters: the synthetic corpus has them (:func:`synthetic_corpus`), real archives do not.

Inputs go through the fine-tuning pipeline exactly (heights scaled to 0..1 per image, gray repeated against the
ImageNet mean/std), so the pretrained filters see what fine-tuning will show them.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from .models import IMAGENET_MEAN, IMAGENET_STD, backbone_width, check_arch

OBJECTIVES = ("contrastive", "parameters")
#: Generator parameters regressed by the ``parameters`` objective: manifest column -> log scale.
PARAMETER_TARGETS = {
    "truth_domain_density_per_um2": True, "truth_domain_size_nm": True, "truth_coverage": False,
    "truth_bilayer_probability": False, "truth_truncation": False, "truth_particle_density_per_um2": True,
    "truth_particle_diameter_nm": False, "truth_terrace_spacing_nm": True, "truth_granular_size_nm": False,
    "truth_tip_sigma_nm": False, "truth_noise_nm": True,
}
CONTRASTIVE_TEMPERATURE = 0.2
BACKBONE_FORMAT = 1


# --- data ---------------------------------------------------------------------------------------------------------

def _render_job(job: tuple) -> tuple[np.ndarray, dict]:
    from .data.images import scale_pixels
    from .data.synthetic import broad_params, render_surface, truth_columns
    from .training import resize_image

    sample_seed, crop_seed, size, image_size = job
    params = broad_params(sample_seed)
    height, truth = render_surface(params, size, seed=crop_seed)
    image = resize_image(scale_pixels(height, source="synthetic corpus"), image_size)
    return image.numpy(), {"sample_id": f"corpus-{sample_seed}", **truth_columns(params, truth)}


def synthetic_corpus(n: int, *, size: int = 128, image_size: int = 64, seed: int = 0, crops_per_sample: int = 2,
                     jobs: int = 1) -> tuple[torch.Tensor, pd.DataFrame]:
    """An unlabelled synthetic corpus from the generator's whole parameter space
    (:func:`tmdafm_core.data.synthetic.broad_params`), rendered in memory.

    Parameters
    ----------
    n : int
        Images (``n / crops_per_sample`` samples, each cropped ``crops_per_sample`` times at random places).
    size : int
        Rendered side in pixels per 1 µm crop (the demo data set's 128), then shrunk to ``image_size``.
    seed : int
        Seed; a corpus never shares samples with the demo data set (different seed streams).
    jobs : int
        Local processes rendering at once.

    Returns
    -------
    images : Tensor of float32, shape (n, 1, image_size, image_size), heights scaled to 0..1 per image
    truth : DataFrame
        One row per image: ``sample_id`` and the ``truth_*`` columns of a synthetic manifest
        (:func:`tmdafm_core.data.synthetic.truth_columns`), :data:`PARAMETER_TARGETS` among them.
    """
    if int(n) != n or n < 2:
        raise ValueError(f"n must be a whole number >= 2, got {n!r}")
    if int(crops_per_sample) != crops_per_sample or crops_per_sample < 1:
        raise ValueError(f"crops_per_sample must be a whole number >= 1, got {crops_per_sample!r}")
    rng = np.random.default_rng([int(seed), 4242])
    samples = rng.integers(2**62, size=math.ceil(n / crops_per_sample))
    work = [(int(sample), int(rng.integers(2**62)), int(size), int(image_size))
            for sample in samples for _ in range(crops_per_sample)][:n]
    from .parallel import imap_items

    rendered = [None] * len(work)
    for position, result in imap_items(_render_job, work, jobs=jobs, start_method="spawn"):
        rendered[position] = result
    images = torch.from_numpy(np.stack([image for image, _ in rendered]))
    return images, pd.DataFrame([row for _, row in rendered])


def parameter_targets(truth: pd.DataFrame) -> tuple[torch.Tensor, list[str]]:
    """Standardised regression targets (N, P) of the :data:`PARAMETER_TARGETS` columns ``truth`` has; NaN where a
    sample lacks the parameter (left out of the loss)."""
    columns = [c for c in PARAMETER_TARGETS if c in truth.columns]
    if not columns:
        raise ValueError("objective 'parameters' needs generator parameters (truth_* columns, e.g. "
                         f"{', '.join(list(PARAMETER_TARGETS)[:3])}); unlabelled images take objective 'contrastive'")
    values = truth[columns].to_numpy(dtype=np.float64, copy=True)
    for j, column in enumerate(columns):
        if PARAMETER_TARGETS[column]:
            values[:, j] = np.log(np.where(values[:, j] > 0, values[:, j], np.nan))
    mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
    values = (values - mean) / np.where(std > 0, std, 1.0)
    return torch.as_tensor(values, dtype=torch.float32), columns


# --- views and losses ---------------------------------------------------------------------------------------------

def random_views(x: torch.Tensor, generator: torch.Generator, *, min_area: float = 0.4) -> torch.Tensor:
    """One random view of each image of ``x`` (N, 1, S, S) in 0..1: a crop of ``min_area``..1 of the area (aspect
    3:4..4:3) resized back to S, random flips and quarter turns, a height contrast of 0.7-1.3 about the middle with
    an offset of ±0.1, and Gaussian noise of sd 0-0.03 (an AFM image's own nuisance factors)."""
    from torchvision.ops import roi_align

    n, _, side, _ = x.shape
    uniform = torch.rand((n, 8), generator=generator)
    area = min_area + (1.0 - min_area) * uniform[:, 0]
    aspect = torch.exp((uniform[:, 1] - 0.5) * 2 * math.log(4 / 3))
    width = (torch.sqrt(area * aspect) * side).clamp(4, side)
    height = (torch.sqrt(area / aspect) * side).clamp(4, side)
    left, top = uniform[:, 2] * (side - width), uniform[:, 3] * (side - height)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), left, top, left + width, top + height], dim=1)
    views = roi_align(x, boxes, output_size=(side, side), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    views = torch.where((uniform[:, 4] < 0.5)[:, None, None, None], views.flip(-1), views)
    turned = views.transpose(-1, -2).flip(-1)
    views = torch.where((uniform[:, 5] < 0.5)[:, None, None, None], turned, views)
    contrast = 0.7 + 0.6 * uniform[:, 6]
    offset = 0.2 * (uniform[:, 7] - 0.5)
    views = (views - 0.5) * contrast[:, None, None, None] + 0.5 + offset[:, None, None, None]
    noise = torch.randn(views.shape, generator=generator) * (0.03 * torch.rand((n, 1, 1, 1), generator=generator))
    return views + noise


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = CONTRASTIVE_TEMPERATURE) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy: each view must pick its partner among the 2N - 1 others."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(similarity, partner)


def _masked_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = torch.isfinite(target)
    return ((prediction.float() - torch.nan_to_num(target)) ** 2)[known].mean()


# --- training -----------------------------------------------------------------------------------------------------

def pretrain_backbone(images: torch.Tensor, *, arch: str = "resnet18", objective: str = "contrastive",
                      truth: pd.DataFrame | None = None, epochs: int = 10, batch_size: int = 128, lr: float = 2e-3,
                      weight_decay: float = 0.05, precision: str = "native", device: str = "cpu", seed: int = 0,
                      progress=None) -> dict:
    """Pretrain a ResNet backbone on unlabelled images.

    Parameters
    ----------
    images : Tensor of float32, shape (N, 1, S, S)
        Heights scaled to 0..1 per image (:func:`tmdafm_core.training.load_data` or :func:`synthetic_corpus`).
    arch : str
        torchvision ResNet (:func:`tmdafm_core.models.check_arch`).
    objective : {"contrastive", "parameters"}
        See the module docstring; ``parameters`` needs ``truth``.
    truth : DataFrame, optional
        Generator parameters per image (the :data:`PARAMETER_TARGETS` columns), row order of ``images``.
    epochs, batch_size, lr, weight_decay : training length and AdamW settings (warm-up and cosine decay per step)
    precision : {"native", "auto", "bf16", "fp32"}
        See :func:`tmdafm_core.training.resolve_precision`.
    seed : int
        Seeds the initialisation, the order and the views; equal seeds give equal backbones on the CPU.
    progress : callable, optional
        Called as ``progress("pretraining epochs", epoch, epochs)`` after every epoch (:mod:`tmdafm_core.progress`;
        the losses are in the result's ``history``).

    Returns
    -------
    dict
        The backbone file's content: ``state_dict`` (torchvision names, no ``fc``), ``arch``, ``objective``,
        ``image_size``, ``n_images``, ``epochs``, ``history`` (loss per epoch), ``seconds``, ``precision_used``,
        ``format``.
    """
    from torchvision.models import get_model

    from .training import TrainConfig, _autocast, build_optimizer, resolve_device, resolve_precision

    check_arch(arch)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1 or len(images) < 2:
        raise ValueError("images must be a tensor of shape (N >= 2, 1, S, S); read them with load_data")
    targets = None
    if objective == "parameters":
        if truth is None or len(truth) != len(images):
            raise ValueError("objective 'parameters' needs truth: one row of generator parameters per image")
        targets, _ = parameter_targets(truth)
    batch_size = min(int(batch_size), len(images))
    config = TrainConfig(arch=arch, weights="none", epochs=int(epochs), lr=float(lr), batch_size=batch_size,
                         weight_decay=float(weight_decay), device=device, precision=precision,
                         schedule="warmup-cosine", optimizer="adamw").validate()
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    backbone = get_model(arch, weights=None)
    width = backbone_width(arch)
    backbone.fc = nn.Identity()
    head = (nn.Sequential(nn.Linear(width, 512), nn.ReLU(inplace=True), nn.Linear(512, 128))
            if objective == "contrastive" else nn.Linear(width, targets.shape[1]))
    model = nn.Sequential(backbone, head).to(torch_device, memory_format=torch.channels_last)
    steps = len(images) // batch_size
    optimizer, scheduler = build_optimizer(model, config, steps_per_epoch=steps)
    mean = torch.as_tensor(IMAGENET_MEAN, device=torch_device).reshape(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=torch_device).reshape(1, 3, 1, 1)

    def prepare(x):
        return ((x.to(torch_device) - mean) / std).contiguous(memory_format=torch.channels_last)

    history, started = [], time.perf_counter()
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for step in range(steps):  # full batches only: a contrastive batch needs its negatives
            index = order[step * batch_size:(step + 1) * batch_size]
            batch = images[index]
            with _autocast(torch_device, precision):
                if objective == "contrastive":
                    outputs = (model(prepare(random_views(batch, generator))),
                               model(prepare(random_views(batch, generator))))
                else:
                    outputs = model(prepare(random_views(batch, generator, min_area=1.0)))
            loss = (nt_xent(*outputs) if objective == "contrastive"
                    else _masked_mse(outputs, targets[index].to(torch_device)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach())
        history.append(total / steps)
        if progress is not None:
            progress("pretraining epochs", epoch, config.epochs)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in backbone.state_dict().items()}
    return {"state_dict": state, "arch": arch, "objective": objective, "image_size": int(images.shape[-1]),
            "n_images": int(len(images)), "epochs": config.epochs, "history": history,
            "seconds": time.perf_counter() - started, "precision_used": resolve_precision(precision, torch_device),
            "format": BACKBONE_FORMAT}


def save_backbone(result: dict, path, *, title: str | None = None) -> Path:
    """Write :func:`pretrain_backbone`'s result where ``--weights`` can read it (tensors, numbers and strings only:
    it loads with ``weights_only=True``), and beside it ``<name>.json``: everything but the tensors, with ``title``,
    the name pages give models that start from it (default ``"AFM-pretrained (<file name>)"``)."""
    from .store import write_atomic, write_json

    path = Path(path)
    document = {k: v for k, v in result.items() if k != "state_dict"}
    document["title"] = title or f"AFM-pretrained ({path.stem})"
    write_atomic(path, lambda tmp: torch.save({**result, "title": document["title"]}, tmp))
    write_json(backbone_description_path(path), document)
    return path


def backbone_description_path(path) -> Path:
    """Where :func:`save_backbone` describes a backbone file: the same name with ``.json``."""
    return Path(path).with_suffix(".json")


# --- unlabelled folders -------------------------------------------------------------------------------------------

def unlabelled_images(folder) -> list[Path]:
    """Image files (TIFF, PNG, JPEG) and instrument files under ``folder``, sorted; no labels needed."""
    from .data.images import IMAGE_SUFFIXES
    from .data.scans import is_raw_scan

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (p.suffix.lower() in IMAGE_SUFFIXES or is_raw_scan(p)))


def read_unlabelled(paths, *, image_size: int, crop_um: float | None = 1.0) -> tuple[torch.Tensor, list[str]]:
    """Every readable image of ``paths`` at ``image_size`` (0..1 per image) and one line per unreadable file."""
    from .data import load_image
    from .training import resize_image

    images, problems = [], []
    for path in paths:
        try:
            image, _ = load_image(path, crop_um=crop_um)
        except (ValueError, OSError) as exc:
            problems.append(f"{path}: skipped ({exc})")
            continue
        images.append(resize_image(image, image_size))
    if len(images) < 2:
        raise ValueError(f"{len(images)} readable image(s); pretraining needs at least 2")
    return torch.stack(images), problems
