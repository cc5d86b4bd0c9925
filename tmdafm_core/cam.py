"""Class activation maps: where in an image a ResNet classifier looks.

Two maps, both returned at image size and scaled to 0..1 so they can be drawn over the image directly:

* :func:`activation_map` — the paper's map: the feature maps of the last convolutional stage summed over channels
  and divided by their maximum. It is class-agnostic (it shows what the network responds to at all) and needs no
  backward pass.
* :func:`grad_cam` — Grad-CAM (Selvaraju et al. 2017): the feature maps weighted by the spatially averaged gradient
  of one class's score, rectified and divided by the maximum. For MtL models the class score is the summed
  log-probability of the class's element vector (:func:`tmdafm_core.models.class_log_scores`), so the map explains
  the material decision, not a single element.

References
----------
.. [1] B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba, "Learning deep features for discriminative
   localization", CVPR 2016, 2921-2929. :DOI:`10.1109/CVPR.2016.319`
.. [2] R. R. Selvaraju, M. Cogswell, A. Das, R. Vedantam, D. Parikh, D. Batra, "Grad-CAM: visual explanations from
   deep networks via gradient-based localization", ICCV 2017, 618-626. :DOI:`10.1109/ICCV.2017.74`
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from .models import ResNetClassifier, class_log_scores


def _to_unit_maps(maps: torch.Tensor, size) -> torch.Tensor:
    """(N, h, w) non-negative maps -> (N, H, W) bilinear-upsampled and divided by each map's maximum."""
    maps = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return (maps / peak[:, None, None]).clamp_(0.0, 1.0)


def maps_to_cam(feature_maps: torch.Tensor, *, size) -> torch.Tensor:
    """The paper's CAM from last-stage feature maps.

    Parameters
    ----------
    feature_maps : Tensor, shape (N, C, h, w)
        Output of :meth:`ResNetClassifier.feature_maps` (post-ReLU, so non-negative).
    size : (int, int)
        Output height and width in pixels (the image's).

    Returns
    -------
    Tensor of float32, shape (N, H, W), values in 0..1 (an all-zero activation gives an all-zero map).
    """
    return _to_unit_maps(feature_maps.detach().sum(dim=1).clamp_min(0.0), size)


@torch.no_grad()
def activation_map(model: ResNetClassifier, images: torch.Tensor, *, size=None) -> torch.Tensor:
    """The paper's class activation map of a batch of model inputs.

    Parameters
    ----------
    model : ResNetClassifier
    images : Tensor, shape (N, 3, h, w)
        Normalised model inputs.
    size : (int, int), optional
        Output size; default the input's ``(h, w)``.

    Returns
    -------
    Tensor of float32, shape (N, H, W), values in 0..1.
    """
    was_training = model.training
    model.eval()
    try:
        maps = model.feature_maps(images)
    finally:
        model.train(was_training)
    return maps_to_cam(maps, size=size or images.shape[-2:])


def grad_cam(model: ResNetClassifier, images: torch.Tensor, *, target=None, element_matrix=None,
             size=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-specific Grad-CAM of a batch of model inputs.

    Parameters
    ----------
    model : ResNetClassifier
    images : Tensor, shape (N, 3, h, w)
        Normalised model inputs.
    target : int or sequence of int, optional
        Class index to explain, one for all images or one per image. Default: each image's predicted class.
    element_matrix : array, shape (n_classes, n_elements), optional
        Required for MtL models (class score = summed element log-probability); None for MtC.
    size : (int, int), optional
        Output size; default the input's ``(h, w)``.

    Returns
    -------
    cams : Tensor of float32, shape (N, H, W), values in 0..1
    target : Tensor of int64, shape (N,)
        The class explained in each map.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            maps = model.feature_maps(images).detach().requires_grad_(True)
            logits = model.head(model.pool(maps))
            scores = class_log_scores(logits, element_matrix=element_matrix)
            if target is None:
                target = scores.argmax(dim=1)
            target = torch.as_tensor(target, dtype=torch.long).expand(len(images)).to(scores.device)
            if ((target < 0) | (target >= scores.shape[1])).any():
                raise ValueError(f"target class must be in 0..{scores.shape[1] - 1}, got {target.tolist()}")
            (gradients,) = torch.autograd.grad(scores.gather(1, target[:, None]).sum(), maps)
    finally:
        model.train(was_training)
    channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((channel_weights * maps.detach()).sum(dim=1))
    return _to_unit_maps(cams, size or images.shape[-2:]), target.cpu()


# Anchor colours of the heat scale (black -> purple -> orange -> pale yellow, like matplotlib's "inferno").
_HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def overlay(image, heat, *, alpha: float = 0.5) -> np.ndarray:
    """Blend a 0..1 heat map over a grayscale image.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Height map in 0..1.
    heat : ndarray, shape (H, W)
        Activation map in 0..1 (e.g. from :func:`activation_map`).
    alpha : float
        Weight of the heat colours, 0..1.

    Returns
    -------
    ndarray of uint8, shape (H, W, 3)
    """
    image, heat = np.asarray(image, dtype=np.float64), np.asarray(heat, dtype=np.float64)
    if image.shape != heat.shape or image.ndim != 2:
        raise ValueError(f"image and heat must be 2-D of one shape, got {image.shape} and {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in 0..1, got {alpha}")
    position = np.clip(heat, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.minimum(position.astype(int), len(_HEAT_ANCHORS) - 2)
    t = (position - low)[..., None]
    colours = (1 - t) * _HEAT_ANCHORS[low] + t * _HEAT_ANCHORS[low + 1]
    gray = np.clip(image, 0.0, 1.0)[..., None] * 255.0
    return np.round((1 - alpha) * gray + alpha * colours).astype(np.uint8)
