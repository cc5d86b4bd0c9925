"""Training settings: :class:`TrainConfig` (stored as ``config.json``), devices and autocast precision."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data.images import check_input_side
from ..layout import TASKS
from ..models import (
    check_arch,
)

SELECT_RULES = ("f1", "paper")
PRECISIONS = ("auto", "fp32", "bf16", "native")
#: Learning-rate schedules: the paper's constant Adam rate, or a linear warm-up over the first
#: :data:`WARMUP_SHARE` of the steps followed by a cosine decay to zero (what scratch training needs to settle).
SCHEDULES = ("constant", "warmup-cosine")
WARMUP_SHARE = 0.1
#: ``adam``: weight decay as an L2 term in the gradient (the paper's optimizer); ``adamw``: decoupled decay.
OPTIMIZERS = ("adam", "adamw")
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

    ``arch``/``weights``/``image_size`` are ignored (None) for feature-table runs. ``ema_decay`` > 0 validates,
    keeps and saves an exponential moving average of the weights (per optimizer step, from the end of the warm-up;
    torchvision references' ``--model-ema``) instead of the raw weights; 0 (the paper) keeps the raw weights.
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
    ema_decay: float = 0.0

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
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no weight averaging), got {self.ema_decay}")
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
