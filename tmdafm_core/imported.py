"""Models trained elsewhere as run directories of ours: the paper's published state dicts, plain torchvision ResNets.

``tmdafm import-model STATE_DICT --arch --task --classes --out RUN`` (:func:`import_model`) writes a one-fold run
directory (``config.json`` with ``mode: imported``, ``fold0.pt``) that ``predict``, ``latent`` and ``load_run``
use like a trained run. Two layouts are recognised from the state dict's keys:

``paper``
    the paper's code: a torchvision ResNet whose ``fc`` is ``Sequential(Linear(in, 100), ReLU, Dropout,
    Linear(100, n))``, keys ``fc.0.*`` and ``fc.3.*``. Its latent features are ``fc.0``'s outputs (pre-ReLU).
``plain``
    a torchvision classifier, ``fc = Linear(in, n)``. It has no 100-d head: its "latent features" are the pooled
    backbone features (512 or 2048).

Preprocessing is the paper's: gray repeated to three channels, 8-bit images divided by 255 (other bit depths scaled
to 0..1 per image), ImageNet mean/std, no resizing unless ``image_size`` is given. No scores are invented: an
imported run has no ``metrics.json`` until it is evaluated.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import LabelSpace, parse_elements
from .data.images import check_input_side
from .models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LATENT_DIM,
    backbone_width,
    build_model,
    check_arch,
)
from .store import write_json
from .training import CONFIG_NAME, TASKS, checkpoint_path, save_checkpoint

LAYOUTS = ("paper", "plain")


def _read_state_dict(path: Path) -> dict:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways; the user needs one message
        raise ValueError(f"{path}: not a readable state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a state dict (tensor names -> tensors), as torch.save(model.state_dict()) "
                         "writes")
    if loaded and all(k.startswith("module.") for k in loaded):  # saved from nn.DataParallel
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def detect_layout(state: dict) -> str:
    """``paper`` (keys ``fc.0.*``, ``fc.3.*``) or ``plain`` (``fc.weight``); ValueError for anything else."""
    if {"fc.0.weight", "fc.0.bias", "fc.3.weight", "fc.3.bias"} <= set(state):
        return "paper"
    if {"fc.weight", "fc.bias"} <= set(state):
        return "plain"
    heads = sorted(k for k in state if k.startswith("fc."))
    raise ValueError(f"no classifier head recognised (keys {heads[:4] or 'none starting with fc.'}); expected the "
                     "paper's fc.0.*/fc.3.* or a torchvision fc.weight/fc.bias")


def _our_state(state: dict, layout: str) -> dict:
    """Tensor names of our ResNetClassifier for a torchvision-layout state dict."""
    renamed = {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    heads = {"paper": {"fc.0": "head.hidden.0", "fc.3": "head.out"}, "plain": {"fc": "head.out"}}[layout]
    for theirs, ours in heads.items():
        renamed[f"{ours}.weight"] = state[f"{theirs}.weight"]
        renamed[f"{ours}.bias"] = state[f"{theirs}.bias"]
    return renamed


def import_model(state_dict, out_dir, *, arch: str, task: str, classes, elements=None,
                 image_size: int | None = None) -> Path:
    """Turn a state dict trained elsewhere into a run directory of ours.

    Parameters
    ----------
    state_dict : str or Path
        ``torch.save(model.state_dict())`` of a torchvision ResNet with the paper's head or a plain ``fc``; read
        with ``weights_only=True``.
    out_dir : str or Path
        Run directory to write (new or empty).
    arch : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    task : {"mtc", "mtl"}
    classes : sequence of str
        Material names in the order of the model's outputs (MtC) or the materials it tells apart (MtL).
    elements : sequence of str, optional
        MtL output order; default the elements of ``classes`` in the paper's order (Mo, W, S, Se, then others).
    image_size : int, optional
        Resize every image to this square side; default: each image at its own size, as the paper.

    Returns
    -------
    Path
        The run directory.

    Raises
    ------
    ValueError
        Unreadable file, unknown head layout, outputs that do not match ``classes``/``elements``, tensors that do
        not fit ``arch``, or a non-empty ``out_dir``.
    """
    path = Path(state_dict)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such state dict file")
    check_arch(arch)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    classes = tuple(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"--classes needs at least two different materials, got {', '.join(classes) or 'none'}")
    for material in classes:
        parse_elements(material)
    labels = LabelSpace.from_materials(classes)
    labels = LabelSpace(classes, tuple(elements) if elements else labels.elements)
    missing = {e for m in classes for e in parse_elements(m)} - set(labels.elements)
    if missing:
        raise ValueError(f"--elements lacks {', '.join(sorted(missing))}, present in the classes")
    if image_size is not None:
        check_input_side(image_size)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is not empty; give a new folder for the imported run")

    state = _read_state_dict(path)
    try:
        layout = detect_layout(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    n_outputs = len(classes) if task == "mtc" else len(labels.elements)
    out_key = "fc.3.weight" if layout == "paper" else "fc.weight"
    if state[out_key].shape[0] != n_outputs:
        names = "classes" if task == "mtc" else f"elements ({', '.join(labels.elements)})"
        raise ValueError(f"{path}: the model has {state[out_key].shape[0]} outputs but {n_outputs} {names} were "
                         f"given; list one per output in the model's order")
    latent_dim = LATENT_DIM if layout == "paper" else None
    if layout == "paper" and tuple(state["fc.0.weight"].shape) != (LATENT_DIM, backbone_width(arch)):
        raise ValueError(f"{path}: fc.0 is {tuple(state['fc.0.weight'].shape)}, expected ({LATENT_DIM}, "
                         f"{backbone_width(arch)}) for {arch}; check --arch")
    model = build_model(arch, n_outputs, weights="none", latent_dim=latent_dim)
    try:
        model.load_state_dict(_our_state(state, layout))
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"{path}: does not fit {arch} ({first}); check --arch") from None

    out.mkdir(parents=True, exist_ok=True)
    config = {"mode": "imported", "source": str(path.resolve()), "layout": layout, "arch": arch, "task": task,
              "classes": list(labels.classes), "elements": list(labels.elements), "image_size": image_size,
              "scaling": "paper", "latent_dim": latent_dim, "folds": 1}
    checkpoint = {"model": {k: v.contiguous() for k, v in model.state_dict().items()}, "optimizer": None,
                  "epoch": None, "args": {"dropout": 0.0, "weights": str(path.resolve())}, "arch": arch,
                  "task": task, "classes": list(labels.classes), "elements": list(labels.elements),
                  "image_size": image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                  "weights_source": str(path.resolve()), "fold": 0, "scaling": "paper", "latent_dim": latent_dim,
                  "layout": layout, "complete": True}
    save_checkpoint(checkpoint, checkpoint_path(out, 0))
    write_json(out / CONFIG_NAME, config, indent=2, sort_keys=False)
    return out
