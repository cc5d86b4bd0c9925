"""ResNet classifiers of the paper, their head, and where their starting weights come from.

A model is a torchvision ResNet whose ImageNet classifier is replaced by the paper's head
``Linear(in -> 100) -> ReLU -> Dropout -> Linear(100 -> outputs)`` (``in`` = 512 for ResNet18/34, 2048 for
ResNet50/101/152). The 100 outputs of the head's first Linear layer, *before* its ReLU, are the *latent features*
analysed against the physical image descriptors, as in the paper (its published feature tables are ~60 % negative);
``latent="post-relu"`` gives the activations after the ReLU instead.

Starting weights (``weights=``):

``"none"``
    random initialisation (training from scratch).
``"imagenet-v1"``, ``"imagenet-v2"``
    torchvision's ImageNet weights, read from the torchvision cache ``$TORCH_HOME/hub/checkpoints/<file>``. They
    are never downloaded here (our machines and many lab machines are offline): when the file is missing the error
    names it, the folder, and how to put it there. V2 exists for ResNet50/101/152 only.
a path
    a torchvision ResNet state dict (``.pth``), or a fold checkpoint of one of our runs (the starting point of
    sequential training: every tensor whose name and shape match is taken, so a head with a different number of
    outputs starts fresh). With ``output_names`` the output layer is matched by name instead: each output row
    whose class (MtC checkpoint) or element (MtL checkpoint) the checkpoint knows is copied from it, the others
    keep their fresh initialisation (an MtC head grown by a class keeps the rows of the known classes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
WEIGHT_CHOICES = ("none", "imagenet-v1", "imagenet-v2")
LATENT_DIM = 100
#: Which head activations are the latent features: the paper's pre-ReLU outputs of Linear(in -> 100), or after ReLU.
LATENT_KINDS = ("pre-relu", "post-relu")
#: Input normalisation of torchvision's ImageNet weights; the paper uses it for every mode.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_WEIGHT_ENUM_NAMES = {"imagenet-v1": "IMAGENET1K_V1", "imagenet-v2": "IMAGENET1K_V2"}


class Head(nn.Module):
    """The paper's classifier head: ``Linear(in -> 100) -> ReLU -> Dropout -> Linear(100 -> outputs)``.

    On its own it is the MLP of the feature-extraction mode (trained on precomputed feature vectors).
    """

    def __init__(self, in_features: int, n_outputs: int, *, dropout: float = 0.0, latent_dim: int | None = LATENT_DIM):
        super().__init__()
        self._in_features = int(in_features)
        # latent_dim=None: a plain torchvision classifier (one Linear on the pooled features, imported models); the
        # pooled ResNet features are non-negative, so the ReLU in front of the output layer changes nothing.
        first = nn.Linear(in_features, latent_dim) if latent_dim is not None else nn.Identity()
        self.hidden = nn.Sequential(first, nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(latent_dim if latent_dim is not None else in_features, n_outputs)

    @property
    def in_features(self) -> int:
        return self._in_features

    @property
    def n_outputs(self) -> int:
        return self.out.out_features

    def embed(self, features: torch.Tensor, *, latent: str = "pre-relu") -> torch.Tensor:
        """Latent features (N, 100): the hidden Linear layer's outputs before (paper) or after its ReLU."""
        return latent_view(self.hidden[0](features), latent)

    def classify(self, latent: torch.Tensor) -> torch.Tensor:
        """Logits (N, outputs) from pre-ReLU latent features (ReLU is idempotent, so post-ReLU ones work too)."""
        return self.out(self.dropout(torch.relu(latent)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(features))


class ForwardOutputs(NamedTuple):
    """What :meth:`ResNetClassifier.forward_all` returns."""

    logits: torch.Tensor  # (N, outputs)
    latent: torch.Tensor  # (N, 100)
    maps: torch.Tensor  # (N, C, h, w), last residual stage
    statistics: torch.Tensor  # (N, 2 C1), first residual stage: channel means then channel standard deviations


def stage_statistics(activations: torch.Tensor) -> torch.Tensor:
    """Per-channel mean and standard deviation of feature maps: (N, C, h, w) -> (N, 2 C), means first.

    Of the first residual stage they describe an image's local texture (edges, grain, noise) independently of where
    things are; :mod:`tmdafm_core.novelty` compares them with the training images'.
    """
    flat = activations.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2, correction=0)], dim=1)


class ResNetClassifier(nn.Module):
    """A torchvision ResNet backbone (classifier removed) followed by :class:`Head`.

    ``forward`` gives logits; :meth:`embed` the 100-d latent features; :meth:`feature_maps` the last convolutional
    stage (for class activation maps); :meth:`forward_all` all of them from one pass.
    """

    def __init__(self, arch: str, backbone: nn.Module, head: Head):
        super().__init__()
        self.arch = arch
        backbone.fc = nn.Identity()
        self.backbone = backbone
        self.head = head

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Activations of the last residual stage, shape (N, C, h, w) (C = 512 or 2048, h = w = size / 32)."""
        return self._stages(images)[1]

    def _stages(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs of the first and of the last residual stage."""
        b = self.backbone
        first = b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(images)))))
        return first, b.layer4(b.layer3(b.layer2(first)))

    @staticmethod
    def pool(maps: torch.Tensor) -> torch.Tensor:
        """Global average pool of feature maps: (N, C, h, w) -> (N, C), torchvision's ``avgpool`` + flatten."""
        return maps.mean(dim=(2, 3))

    def backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, 512 or 2048): the input of the head (feature-extraction mode)."""
        return self.pool(self.feature_maps(images))

    def embed(self, images: torch.Tensor, *, latent: str = "pre-relu") -> torch.Tensor:
        return self.head.embed(self.backbone_features(images), latent=latent)

    def forward_all(self, images: torch.Tensor, *, latent: str = "pre-relu") -> ForwardOutputs:
        """Logits, latent features (as in :meth:`Head.embed`), last feature maps and the first stage's texture
        statistics (:func:`stage_statistics`, what novelty is judged by) of one forward pass."""
        first, maps = self._stages(images)
        pre = self.head.embed(self.pool(maps))
        return ForwardOutputs(self.head.classify(pre), latent_view(pre, latent), maps, stage_statistics(first))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone_features(images))


def fold_batchnorm(model: ResNetClassifier) -> ResNetClassifier:
    """Fold every BatchNorm of the backbone into the convolution before it, for inference only.

    The model must be in eval mode (BatchNorm then is a fixed affine map); the outputs stay the same up to float
    rounding and a forward pass skips one memory-bound layer per convolution. Training such a model is wrong.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (call model.eval() first)")
    b = model.backbone
    pairs = [(b, "conv1", "bn1")]
    for stage in (b.layer1, b.layer2, b.layer3, b.layer4):
        for block in stage:
            pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
            if block.downsample is not None:
                pairs.append((block.downsample, "0", "1"))
    for owner, conv, bn in pairs:
        fused = fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn))
        setattr(owner, conv, fused)
        setattr(owner, bn, nn.Identity())
    return model


def backbone_width(arch: str) -> int:
    """Number of pooled backbone features of an architecture (512 or 2048)."""
    check_arch(arch)
    return 512 if arch in ("resnet18", "resnet34") else 2048


def check_latent(latent: str) -> str:
    if latent not in LATENT_KINDS:
        raise ValueError(f"unknown latent kind {latent!r}; use one of {', '.join(LATENT_KINDS)}")
    return latent


def latent_view(pre: torch.Tensor, latent: str) -> torch.Tensor:
    """The latent features of kind ``latent`` from the hidden layer's pre-ReLU outputs."""
    return pre if check_latent(latent) == "pre-relu" else torch.relu(pre)


def check_arch(arch: str) -> str:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; use one of {', '.join(ARCHITECTURES)}")
    return arch


def imagenet_weights(arch: str, version: str):
    """The torchvision weights enum member for ``weights="imagenet-v1"|"imagenet-v2"``."""
    from torchvision.models import get_model_weights

    check_arch(arch)
    enum = get_model_weights(arch)
    name = _WEIGHT_ENUM_NAMES[version]
    if name not in enum.__members__:
        having = [a for a in ARCHITECTURES if _WEIGHT_ENUM_NAMES[version] in get_model_weights(a).__members__]
        raise ValueError(f"{arch} has no ImageNet {version[-2:].upper()} weights in torchvision; use --weights "
                         f"imagenet-v1 (V2 exists for {', '.join(having)})")
    return enum[name]


def weights_cache_file(weights) -> Path:
    """Where torchvision keeps a weights enum member's file: ``$TORCH_HOME/hub/checkpoints/<file name of its URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]


def load_imagenet_state_dict(arch: str, version: str) -> dict:
    """Read torchvision ImageNet weights from the local cache, never from the network.

    Raises
    ------
    FileNotFoundError
        When the file is not in the cache; the message names the file, the folder and how to fix it.
    """
    weights = imagenet_weights(arch, version)
    path = weights_cache_file(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{arch} ImageNet {version[-2:].upper()} weights not found: expected {path.name} in {path.parent} "
            f"(nothing is downloaded). Fix: copy {path.name} (from {weights.url}) into that folder or set TORCH_HOME "
            f"to a folder holding hub/checkpoints/{path.name}; or pass --weights PATH to the file; "
            "or --weights none to train from scratch")
    return _torch_load(path)


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or foreign file fails in many ways; the user needs one message
        raise ValueError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from None


def _strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_backbone_state(backbone: nn.Module, state: dict, source: str, *, assign: bool = False) -> None:
    """Load an ImageNet-style ResNet state dict into a backbone whose ``fc`` is removed."""
    state = _strip_prefix(state, "module.")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch in {wrong[:3]}")
        raise ValueError(f"{source}: not a state dict of this ResNet architecture ({detail}); "
                         "check --arch against the weights file")
    backbone.load_state_dict(state, assign=assign)


def _load_run_checkpoint(model: nn.Module, checkpoint: dict, source: str, output_names=None, *,
                         assign: bool = False) -> None:
    """Start from a fold checkpoint of one of our runs: take every tensor whose name and shape match.

    With ``output_names`` (one name per output of ``model``), the output layer is taken row by row by name.
    """
    arch = checkpoint.get("arch")
    model_arch = getattr(model, "arch", None)
    if arch is None:
        raise ValueError(f"{source}: checkpoint holds no ResNet (a feature-MLP run?); pass a fine-tuning run's fold")
    if arch != model_arch:
        raise ValueError(f"{source}: checkpoint is a {arch} model, not {model_arch}; use --arch {arch}")
    own = model.state_dict()
    taken = {k: v for k, v in checkpoint["model"].items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in taken):
        raise ValueError(f"{source}: no backbone tensors match {model_arch}; the file is not a checkpoint of it")
    if output_names is not None:
        taken.update(_output_rows_by_name(own, checkpoint, output_names))
    model.load_state_dict(taken, strict=False, assign=assign)


_OUTPUT_KEYS = ("head.out.weight", "head.out.bias")


def _output_rows_by_name(own: dict, checkpoint: dict, output_names) -> dict:
    """Output-layer tensors of ``own`` with the rows of outputs the checkpoint also has copied from it."""
    known = list(checkpoint.get("classes" if checkpoint.get("task") == "mtc" else "elements") or [])
    rows = {k: own[k].clone() for k in _OUTPUT_KEYS}
    for row, name in enumerate(output_names):
        if name in known:
            for key in _OUTPUT_KEYS:
                rows[key][row] = checkpoint["model"][key][known.index(name)]
    return rows


def build_model(arch: str, n_outputs: int, *, weights: str | Path = "none", dropout: float = 0.0,
                output_names=None, latent_dim: int | None = LATENT_DIM, device: str | None = None) -> ResNetClassifier:
    """Build the paper's ResNet classifier.

    Parameters
    ----------
    arch : {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    n_outputs : int
        Number of classes (MtC) or elements (MtL).
    weights : {"none", "imagenet-v1", "imagenet-v2"} or path
        Starting weights (see the module docstring). ImageNet weights come from the torchvision cache only.
    dropout : float
        Dropout probability of the head, 0 <= p < 1.
    output_names : sequence of str, optional
        Name of each output (class names for MtC, element symbols for MtL). Used with a run checkpoint as
        ``weights``: output rows are then taken from the checkpoint by name, not by position and shape.
    latent_dim : int or None
        Width of the head's hidden layer (the paper's 100); None for a plain classifier (imported models).
    device : {None, "meta"}
        ``"meta"``: build without allocating or initialising any tensor (what ``weights`` gives is assigned as
        read). For checking weights, or for a model whose every tensor comes from a checkpoint next
        (``model.load_state_dict(state, assign=True)``): the random initialisation is most of the build time
        (ResNet18 0.13 s, ResNet152 0.74 s on a 2-core CPU).

    Returns
    -------
    ResNetClassifier
        In training mode, on the CPU (or on the meta device). ``model.weights_source`` says where the weights came
        from.

    Raises
    ------
    ValueError
        Unknown architecture, V2 for ResNet18/34, bad dropout or outputs, a weights file of another architecture.
    FileNotFoundError
        ImageNet weights not in the cache, or a weights path that does not exist.
    """
    from torchvision.models import get_model

    check_arch(arch)
    if int(n_outputs) < 1:
        raise ValueError(f"n_outputs must be >= 1, got {n_outputs}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if output_names is not None and len(output_names) != int(n_outputs):
        raise ValueError(f"output_names has {len(output_names)} names for {n_outputs} outputs; give one per output")
    if device not in (None, "meta"):
        raise ValueError(f"device must be None or 'meta', got {device!r}; move a built model with .to(device)")
    state, checkpoint, source = None, None, "random initialisation"
    if isinstance(weights, str) and weights in WEIGHT_CHOICES:
        if weights != "none":
            state = load_imagenet_state_dict(arch, weights)  # fails before any model is built
            source = f"torchvision {imagenet_weights(arch, weights)}"
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found; --weights takes {', '.join(WEIGHT_CHOICES)} "
                                    "or the path of a .pth state dict or run checkpoint")
        loaded = _torch_load(path)
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a state dict or a run checkpoint, got {type(loaded).__name__}")
        if isinstance(loaded.get("model"), dict):
            checkpoint = loaded
        else:
            state = loaded.get("state_dict", loaded)
        source = str(path)

    with torch.device("meta") if device == "meta" else contextlib.nullcontext():
        backbone = get_model(arch, weights=None)
        model = ResNetClassifier(arch, backbone, Head(backbone_width(arch), int(n_outputs), dropout=dropout,
                                                      latent_dim=latent_dim))
    assign = device == "meta"
    if state is not None:
        _load_backbone_state(model.backbone, state, source, assign=assign)
    if checkpoint is not None:
        _load_run_checkpoint(model, checkpoint, source, output_names, assign=assign)
    model.weights_source = source
    return model


def build_feature_mlp(in_features: int, n_outputs: int, *, dropout: float = 0.0) -> Head:
    """The MLP of the feature-extraction mode: the paper's head on precomputed feature vectors."""
    if int(in_features) < 1 or int(n_outputs) < 1:
        raise ValueError(f"in_features and n_outputs must be >= 1, got {in_features}, {n_outputs}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return Head(int(in_features), int(n_outputs), dropout=dropout)


def class_log_scores(logits: torch.Tensor, *, element_matrix: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of every class, the quantity both tasks decode by (argmax over classes).

    Parameters
    ----------
    logits : Tensor, shape (N, outputs)
        Model outputs: class logits (MtC) or element logits (MtL).
    element_matrix : Tensor of float, shape (n_classes, n_elements), optional
        Given for MtL: row ``c`` is the element-presence vector of class ``c``. The score of a class is then the
        summed log-probability of its element vector, ``log p`` for present and ``log(1 - p)`` for absent elements,
        so the decoded prediction is always a valid material.

    Returns
    -------
    Tensor, shape (N, n_classes)
    """
    if element_matrix is None:
        return torch.log_softmax(logits, dim=1)
    logits = logits.float()
    matrix = torch.as_tensor(element_matrix, dtype=torch.float32, device=logits.device)
    return nn.functional.logsigmoid(logits) @ matrix.T + nn.functional.logsigmoid(-logits) @ (1.0 - matrix).T
