"""Model inputs: images read once into one tensor (:func:`load_data`), seeded augmented batches
(:class:`InputBatches`), targets and the class-balanced epoch order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from ..data import LabelSpace, load_image
from ..data.images import scan_crops
from .config import FALLBACK_IMAGE_SIZE

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
