"""Profiles: the one named bundle of settings a store is built with, and the training recipes they name.

A :class:`Profile` says which data (the synthetic demo set or DATA), how it is split, how its models are trained and
how they are analysed; ``tmdafm precompute --profile NAME``, the app and ``tmdafm reproduce`` take one. Its training
options come from the recipe it names (:data:`RECIPES`: ``demo`` for a 2-core CPU, ``paper`` for the study's
setting on a GPU), overridden field by field. The experiments' commands (``tmdafm train``, ``sequential``, ...) take
``--profile demo|paper`` for the same recipes. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from .data.scans import DEFAULT_CROP_UM

#: Training recipes (``cross_validate`` keywords and ``threads``) that profiles name in :attr:`Profile.training`.
#: ``demo`` aims at the whole default sequential grid of a 1026-image set in about five minutes on 2 CPU cores (32 px, 2
#: epochs; the precompute's demo starts it from its AFM-pretrained backbone). Its recipe was chosen by measurement on
#: the demo's MtC run (64 px, 10 epochs; validation macro-F1 pooled over the 922 non-test images): constant Adam 1e-3 at
#: batch 64 0.61 with validation F1 jumping between epochs; warm-up + cosine AdamW (lr 3e-3, weight decay 0.05) 0.61
#: rising steadily; the same at batch 32 (lr 2e-3) 0.68-0.77; bf16 autocast (``native`` on CPUs with AMX / AVX512-BF16)
#: 1.6x faster at 64 px with validation F1 within a point of float32 (and no faster at 32 px); for the demo's MtC run
#: (128 px, 20 epochs) 2.06x, macro-F1 on 1026 fresh films 80.7 against 81.0 in float32. It trains with one torch
#: thread: on a CPU shared with other processes, two threads on two cores ran ResNet18 about 30x slower than one
#: (threads wait for each other), and at 32 px one thread is as fast as two. Its two folds train at once in two
#: processes of one thread each (``fold_jobs``: 1.97x faster for the demo's MtC run on 2 cores, identical results;
#: ``benchmarks/bench_fold_jobs.py``); the precompute's latent steps, one process each, embed with every core.
#: ``paper`` is the paper's setting (native image size, 60 epochs, ResNet152 with
#: ImageNet V2 weights, the model of its Tables 4-5 and Figures 3-5) and wants a GPU; its Table 2 (the ablation) used
#: ResNet18 V1 (:data:`tmdafm_core.experiments.PAPER_ABLATION_MODEL`).
RECIPES = {
    "demo": {"arch": "resnet18", "weights": "none", "image_size": 32, "epochs": 2, "folds": 2, "lr": 2e-3,
             "batch_size": 32, "dropout": 0.0, "weight_decay": 0.05, "schedule": "warmup-cosine", "optimizer": "adamw",
             "precision": "native", "device": "cpu", "threads": 1, "fold_jobs": 2},
    "paper": {"arch": "resnet152", "weights": "imagenet-v2", "image_size": None, "epochs": 60, "folds": 5,
              "lr": 7.5e-5, "batch_size": 32, "dropout": 0.0, "device": "cuda", "threads": None, "fold_jobs": 1},
}


def recipe_options(recipe: str | None = None, **explicit) -> dict:
    """Training keywords of a recipe, overridden by every explicit keyword that is not None.

    Parameters
    ----------
    recipe : {"demo", "paper"}, optional
        No recipe: only the explicit keywords (the engine's defaults fill the rest).
    **explicit
        ``cross_validate`` keywords, and ``threads`` (torch CPU threads while the experiment runs); None means
        "not given".
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown profile {recipe!r}; use one of {', '.join(RECIPES)}")
    options = dict(RECIPES[recipe]) if recipe else {}
    options.update({k: v for k, v in explicit.items() if v is not None})
    return options


#: Descriptor definitions a store can be built with: our resolution-aware set, or the paper's pixel definitions.
DESCRIPTOR_SETS = ("physical", "paper")
#: ``weights`` of a profile whose runs start from the store's own pretrained backbone (the ``pretrain`` step).
PRETRAINED_WEIGHTS = "afm-pretrained"
PRETRAINED_TITLE = "AFM-pretrained (synthetic)"


@dataclass(frozen=True)
class Profile:
    """Settings of one precompute profile: which data, how it is split, trained and analysed.

    Training options come from the experiments profile named by ``training``
    (:data:`RECIPES`, ``"demo"`` or ``"paper"``); every field below that is not None
    overrides the option of the same meaning there. The split and the cross-validated runs use the same folds.

    Attributes
    ----------
    name : str
    n, size : int
        Synthetic data set generated when no DATA is given: images, and pixels per 1 µm side.
    seed : int
        Seed of the synthetic images, the split, training, UMAP and bootstrap.
    test_fraction : float
        Share of samples held out for test when the data carries no test marks.
    training : {"demo", "paper"}
        Training recipe (:data:`RECIPES`) with the training options.
    n_folds, epochs, image_size, lr, arch, weights, device : optional
        Overrides of the training profile (``n_folds`` is its ``folds``).
    run_epochs, run_image_size, run_lr : optional
        Epochs, input side (px) and peak learning rate of the MtC and MtL runs the app explores, when they should
        train longer, on larger inputs or at another rate than the sequential study's many runs (default:
        ``epochs``, ``image_size``, ``lr``). A ResNet's last feature map is the input side / 32: 64 px gives 2 x 2
        activation maps, 32 px a flat 1 x 1 one.
    run_ema_decay : float, optional
        Per-step decay of the weight average the MtC and MtL runs validate and keep (``TrainConfig.ema_decay``;
        default: the training profile's, none). Not for the sequential study's few-step runs: an average over
        30 steps still remembers the pretrained start.
    order : tuple of str, optional
        Class order of the sequential study; default every class of the data set, in MtC order.
    volumes : tuple
        Training-volume sweep of the sequential study (``"full"`` and image counts).
    sequential_task : {"mtc", "mtl", "both"}
    umap_dims : tuple of int
        UMAP layouts of the latent spaces (2 and/or 3; empty: PCA only).
    n_boot : int
        Bootstrap resamples of the correlation intervals.
    descriptors : {"physical", "paper"}
        ``physical``: the resolution-aware descriptors (densities per µm², sizes in nm, noise-robust defaults);
        ``paper``: the paper's pixel-based definitions exactly (``paper_pixels=True``).
    scan_crop_um : float or None
        Instrument files in DATA: side of the central crop (µm) taken after levelling (the paper's 1 µm), or None
        for whole scans.
    fold_jobs : int, optional
        Override of the training profile's folds trained at once in local processes (speed only; ``tiny`` uses 1:
        its runs are too short to repay starting processes).
    pretrain_images, pretrain_epochs, pretrain_objective, pretrain_image_size
        With ``pretrain_images > 0`` the ``pretrain`` step pretrains the profile's backbone on that many images of
        a synthetic corpus from the generator's whole parameter space (:mod:`tmdafm_core.pretrain`) at
        ``pretrain_image_size`` px, and every run whose ``weights`` is ``"afm-pretrained"``
        (:data:`PRETRAINED_WEIGHTS`) fine-tunes from it (at its own input side: a ResNet takes any): the demo's
        stand-in for ImageNet, titled "AFM-pretrained (synthetic)" on every page.
    """

    name: str
    n: int = 1026
    size: int = 128
    seed: int = 0
    test_fraction: float = 0.1
    training: str = "demo"
    n_folds: int | None = None
    epochs: int | None = None
    image_size: int | None = None
    lr: float | None = None
    arch: str | None = None
    weights: str | None = None
    device: str | None = None
    run_epochs: int | None = None
    run_image_size: int | None = None
    run_lr: float | None = None
    run_ema_decay: float | None = None
    order: tuple | None = None
    volumes: tuple = ("full", 64, 32, 16, 8)
    sequential_task: str = "both"
    umap_dims: tuple = (2, 3)
    n_boot: int = 1000
    descriptors: str = "physical"
    scan_crop_um: float | None = DEFAULT_CROP_UM
    fold_jobs: int | None = None
    pretrain_images: int = 0
    pretrain_epochs: int = 10
    pretrain_objective: str = "parameters"
    pretrain_image_size: int = 64

    def __post_init__(self):
        if self.descriptors not in DESCRIPTOR_SETS:
            raise ValueError(f"descriptors must be one of {', '.join(DESCRIPTOR_SETS)}, got {self.descriptors!r}")
        if self.weights == PRETRAINED_WEIGHTS and self.pretrain_images < 2:
            raise ValueError(f"weights {PRETRAINED_WEIGHTS!r} needs a pretraining corpus: set pretrain_images >= 2")

    @classmethod
    def from_dict(cls, document: dict) -> Profile:
        """A profile from :func:`dataclasses.asdict` output (e.g. read back from JSON, lists for tuples)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in document.items() if k in known}
        for name in ("order", "volumes", "umap_dims"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    @property
    def train_options(self) -> dict:
        """``cross_validate`` keywords: the experiments profile, these overrides, seed and test fraction."""
        return recipe_options(self.training, folds=self.n_folds, epochs=self.epochs, image_size=self.image_size,
                               lr=self.lr, arch=self.arch, weights=self.weights, device=self.device, seed=self.seed,
                               test_fraction=self.test_fraction, fold_jobs=self.fold_jobs)

    @property
    def folds(self) -> int:
        """Cross-validation folds of the split and of every run."""
        return int(self.n_folds) if self.n_folds is not None else int(self.train_options["folds"])


#: ``demo`` runs on a 2-core laptop without a download: it pretrains its own backbone on synthetic images and fine-tunes
#: from it (the experiments' demo training options otherwise). Pretraining was chosen by measurement (demo MtC run,
#: validation macro-F1 from 16 training images per class / from all): scratch 0.33 / 0.68, parameter regression
#: 0.48 / 0.72, SimCLR contrastive 0.49 / 0.69 at twice the pretraining time (2048 images, 10 epochs each). Its MtC and
#: MtL runs train at 128 px for 20 epochs, also by measurement (macro-F1 of the 2-fold ensemble on 1026 fresh films
#: of the demo generator, MtC / MtL, seconds per run on 2 cores): 64 px x 10 epochs 76.0 / 65.6 (80 s), 64 x 20
#: 78.7 / - (117 s), 96 x 15 78.5 / 79.4 (117-153 s), 128 x 12 80.7 / 79.2 (128-146 s), 128 x 20 81.3 / 82.4
#: (~210 s): at 64 px a ResNet18's last feature map is 2 x 2 and MtL's element calls suffer most. They validate and
#: keep a weight average (``run_ema_decay`` 0.98 per step, ~300 steps): at lr 2e-3 the raw weights' validation F1
#: jumped by up to 0.3 between epochs during the first 12 (MtC fold 1: 0.76 -> 0.44 -> 0.71); the average's rises
#: steadily (MtC mean over folds 0.45 -> 0.81 from epoch 4 to 15, never down by more than 0.01; per-fold test F1
#: MtC 80.3 -> 81.4, MtL 78.2 -> 81.4; 1026 fresh films 81.2 -> 80.7, 82.4 -> 80.2, within their run-to-run
#: spread). The backbone still pretrains at 64 px (``pretrain_image_size``). The sequential study's 28 runs fine-tune
#: it for 2 epochs at that same 64 px with a gentler peak rate (lr 5e-4): at the recipe's 32 px and 2e-3 the 5-class
#: stages scored test F1 0.43-0.50 and their latent projections showed no classes (silhouette -0.09..0.04); at 64 px
#: and 5e-4 they score MtC 0.69-0.77 / MtL 0.47-0.54 and separate (MtC 0.27 / 0.26, MtL 0.16 / 0.21, AFM-pretrained
#: / Sequential), for 292 s instead of 228 s in a cold demo build on 2 cores (426 s in one rerun of the step
#: alone). One 5-class MtC run (test F1, silhouette): 32 px 2e-3 44 / -0.09; 64 px x 2 epochs 5e-4 77 / 0.27, 2.5e-4
#: 73 / 0.23; 64 px x 3 epochs 1e-3 75 / 0.20, 5e-4 80 / 0.24. ``paper`` is the study's setting (the
#: experiments' paper options: ImageNet weights from the torchvision cache, 60 epochs, 5 folds) and is meant for a
#: GPU (``device="cuda"``); ``tiny`` builds a whole store in well under a minute, for tests and trying the app.
PROFILES = {
    "demo": Profile("demo", image_size=64, lr=5e-4, run_epochs=20, run_image_size=128, run_lr=2e-3,
                    run_ema_decay=0.98, volumes=("full", 16),
                    sequential_task="both",
                    weights=PRETRAINED_WEIGHTS, pretrain_images=1536, pretrain_epochs=8),
    "paper": Profile("paper", size=256, training="paper"),
    "tiny": Profile("tiny", n=80, size=32, n_folds=2, epochs=1, image_size=32, order=("MoS2", "WS2", "WSe2"),
                    fold_jobs=1,
                    volumes=("full", 8), umap_dims=(2,), n_boot=50),
}


def named_profile(name: str, *, descriptors: str | None = None) -> Profile:
    """The profile ``name`` of :data:`PROFILES`, with another descriptor set when ``descriptors`` is given."""
    profile = resolve_profile(name)
    return replace(profile, descriptors=descriptors) if descriptors else profile


def resolve_profile(profile) -> Profile:
    """A :class:`Profile` from a profile, its name in :data:`PROFILES` or its :func:`dataclasses.asdict` output."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, dict):
        return Profile.from_dict(profile)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def profile_arguments(profile) -> list[str]:
    """``tmdafm precompute`` options that rebuild ``profile``: ``--profile NAME`` and each setting that differs."""
    profile = resolve_profile(profile)
    base = PROFILES.get(profile.name) or PROFILES["paper" if profile.training == "paper" else "demo"]
    arguments = ["--profile", base.name]
    for field in fields(Profile):
        value = getattr(profile, field.name)
        if field.name == "name" or value == getattr(base, field.name) or value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        arguments += [PROFILE_FLAGS.get(field.name, "--" + field.name.replace("_", "-")), text]
    return arguments


#: ``tmdafm precompute`` flags whose name is not the field's.
PROFILE_FLAGS = {"n_folds": "--folds", "scan_crop_um": "--crop-um"}
