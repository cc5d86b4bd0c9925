"""Precompute: the steps that fill the artifact store the app reads, each recorded, resumable and skipped when done.

``tmdafm precompute [DATA] --out CACHE --profile demo|paper|tiny`` (:func:`precompute`) runs :data:`STEPS`:

========================  ===============================================================================
step                      writes (under CACHE)
========================  ===============================================================================
dataset                   dataset/manifest.parquet (tidy manifest + split + fold), dataset/prepared.json,
                          dataset/images/ (the synthetic demo set, only when no DATA is given)
thumbnails                thumbnails/<hash>.png (96 px, AFM colours), thumbnails.json, thumbnails/atlas.json
                          (``{image: data URI}``: hover images with no server round trip)
descriptors               features.csv (image + the 14 descriptors); per-image values memoised in diskcache/
mtc, mtl                  runs/mtc/, runs/mtl/ (cross_validate run directories on the manifest's folds)
sequential                sequential/results.csv, study.json, <task>/<mode>/<n>cls_<volume>/ runs
latent-mtc, latent-mtl    latent/<task>/: projection.csv (PC1..PC10, UMAP), tables (table5, correlation,
                          cosine_*), galleries.json, projection.npz, embeddings.parquet, predictions.csv
latent-sequential         latent/sequential/<task>/<mode>/<n>cls/projection.csv: each full-volume stage's
                          2-D PCA, Procrustes-aligned to the previous stage on the images they share
========================  ===============================================================================

``CACHE/store.json`` records every step (:mod:`tmdafm_core.store`): status, a key over its settings and the outputs
of the steps it reads, its files with sizes and digests, its run time. A rerun skips a step whose key is unchanged
and whose files are whole, so changing data or a setting recomputes only the steps that depend on it, and a
damaged file is reported and made again instead of being served. Training steps run in ``.<name>.partial``
folders swapped in when complete, so an interrupted run (even ``kill -9``) resumes where it stopped and readers
never see half a run. Pages read the store only (:func:`store_contents`, :func:`dataset_overview`, ...).

Profiles (:data:`PROFILES`): ``demo`` for a 2-core CPU (the experiments' demo training: ResNet18 fine-tuned from the
store's own AFM-pretrained backbone (the ``pretrain`` step: 1536 synthetic images from the generator's whole
parameter space, parameter regression) at 32 px for the sequential study's many runs, 64 px and 10 epochs for the
MtC and MtL runs the app explores);
``paper`` is the study's setting (ImageNet weights from the torchvision cache, 60 epochs, 5 folds, native image
size, the full volume sweep) and is meant for a GPU (``device="cuda"``; hours on a CPU); ``tiny`` builds a whole
store in about a minute, for tests and trying the app.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import IMAGE_SUFFIXES, LabelSpace, afm_colours, load_image, read_dataset, split_dataset
from .data.images import scan_crops
from .data.scans import DEFAULT_CROP_UM
from .layout import (
    ATLAS_NAME,
    BACKBONE_NAME,
    DATASET_DIR,
    DEPENDS,
    EMBEDDINGS_NAME,
    FEATURES_NAME,
    LATENT_DIR,
    MANIFEST_NAME,
    PREDICTIONS_NAME,
    PREPARED_NAME,
    PRETRAINED_DIR,
    RUNS_DIR,
    SEQUENTIAL_DIR,
    STEP_OUTPUTS,
    STEP_PATHS,
    STEPS,
    STORE_MARKER,
    SYNTHETIC_IMAGES_DIR,
    THUMBNAILS_DIR,
    THUMBNAILS_MARKER,
    Artifact,
    StoreLayout,
    load_manifest,
    recorded_source,
    store_contents,
    store_ready,
    thumbnail_name,
    thumbnail_uri,
)
from .profiles import (
    DESCRIPTOR_SETS,
    PRETRAINED_TITLE,
    PRETRAINED_WEIGHTS,
    PROFILE_FLAGS,
    PROFILES,
    Profile,
    named_profile,
    profile_arguments,
    resolve_profile,
)
from .progress import as_callback, iterate, report
from .results import dataset_overview, example_thumbnails, split_table
from .store import (
    check_file,
    check_files,
    exclusive,
    file_digest,
    file_entries,
    file_problem,
    make_key,
    open_store,
    read_json,
    read_record,
    update_step,
    write_atomic,
    write_json,
)

#: Public names; those defined in :mod:`~tmdafm_core.layout`, :mod:`~tmdafm_core.profiles` and
#: :mod:`~tmdafm_core.results` stay importable from here.
__all__ = [
    "Artifact", "DATASET_DIR", "DEPENDS", "DESCRIPTOR_SETS", "MANIFEST_NAME", "PREPARED_NAME", "PRETRAINED_TITLE",
    "PRETRAINED_WEIGHTS", "PROFILE_FLAGS", "PROFILES", "Profile", "RUNS_DIR", "STEPS", "STORE_MARKER", "StepResult",
    "THUMBNAILS_DIR", "app_steps", "claim_store", "complete_store", "dataset_overview", "example_thumbnails",
    "format_summary", "given_runs", "load_manifest", "named_profile", "precompute", "prepare_dataset",
    "prepare_thumbnails", "profile_arguments", "recorded_source", "render_thumbnail", "run_training_options",
    "split_table", "store_contents", "store_ready", "thumbnail_name", "thumbnail_uri", "with_backbone",
    "write_atlas",
]

THUMBNAIL_PX = 96
_FORMAT_VERSION = 1  # bump when the prepared manifest's meaning changes, so old stores are rebuilt


# --- small store helpers ----------------------------------------------------------------------------------------

_write_atomic, _write_json, _read_json, _exclusive = write_atomic, write_json, read_json, exclusive


def _fingerprint(root: Path, *, exclude: Path | None = None) -> str:
    """Hash of the names, sizes and modification times of the image and CSV files under ``root`` (or of one file)."""
    digest = hashlib.sha256()
    if root.is_file():
        digest.update(root.read_bytes())
        root = root.parent  # a manifest CSV points at images in its folder
    entries = []
    for folder, dirs, files in os.walk(root):
        folder = Path(folder)
        if exclude is not None and (folder == exclude or exclude in folder.parents):
            dirs[:] = []
            continue
        dirs.sort()
        for name in files:
            path = folder / name
            if path.suffix.lower() in IMAGE_SUFFIXES or path.suffix.lower() == ".csv":
                stat = path.stat()
                entries.append(f"{path.relative_to(root)}\t{stat.st_size}\t{stat.st_mtime_ns}")
    digest.update("\n".join(sorted(entries)).encode())
    return digest.hexdigest()


# --- step 1: data set -------------------------------------------------------------------------------------------

def _dataset_settings(profile: Profile, data, cache_dir: Path) -> dict:
    settings = {"format": _FORMAT_VERSION, "n_folds": profile.folds, "test_fraction": profile.test_fraction,
                "seed": profile.seed}
    if data is None:
        settings["source"] = {"kind": "synthetic", "n": profile.n, "size": profile.size, "seed": profile.seed}
    else:
        from .data.scans import view_key

        settings["source"] = {"kind": "data", "path": str(Path(data).resolve()),
                              "scans": view_key(profile.scan_crop_um)}
    return settings


def _data_root(settings: dict, cache_dir: Path) -> Path:
    if settings["source"]["kind"] == "synthetic":
        return cache_dir / DATASET_DIR / SYNTHETIC_IMAGES_DIR
    return Path(settings["source"]["path"])


def _generate_synthetic(images_dir: Path, profile: Profile, progress) -> None:
    from .data.synthetic import write_synthetic_dataset

    if images_dir.exists():
        shutil.rmtree(images_dir)  # a half-written earlier attempt; start clean
    write_synthetic_dataset(images_dir, n=profile.n, size=profile.size, seed=profile.seed, progress=progress)


def prepare_dataset(cache_dir, data=None, *, profile="demo", progress=None) -> pd.DataFrame:
    """Read (or, with no ``data``, generate) the data set, assign splits and store the manifest.

    Skips all work when the store already holds a manifest built from the same settings and the same files
    (names, sizes and modification times under the data root).

    Parameters
    ----------
    cache_dir : str or Path
        Artifact store (created if missing).
    data : str or Path, optional
        Any source :func:`~tmdafm_core.data.read_dataset` reads, with material labels. ``None`` generates the
        synthetic demo set of the profile into ``cache_dir/dataset/images``.
    profile : str or Profile
        ``"demo"`` or ``"paper"`` (:data:`PROFILES`), or a :class:`Profile`.
    progress : None, True or callable, optional
        ``True`` shows tqdm bars on stderr; a callable receives ``(message, done, total)``
        (:mod:`tmdafm_core.progress`).

    Returns
    -------
    manifest : DataFrame
        The tidy manifest with ``split`` ("train"/"test") and ``fold`` (validation fold of train rows, -1 for test),
        as :func:`load_manifest` returns it.
    """
    profile = resolve_profile(profile)
    progress = as_callback(progress, unit="img")
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"{data}: no such file or folder; give a data set folder or manifest CSV")
    cache_dir = claim_store(cache_dir)
    settings = _dataset_settings(profile, data, cache_dir)
    dataset_dir = cache_dir / DATASET_DIR
    with _exclusive(cache_dir, "dataset"):
        record = StoreLayout(cache_dir).prepared_record()
        if record is not None and record.get("settings") == settings:
            root = _data_root(settings, cache_dir)
            if root.exists() and _fingerprint(root, exclude=cache_dir.resolve()) == record.get("fingerprint"):
                with contextlib.suppress(ValueError):  # an unreadable manifest is rebuilt below
                    manifest = load_manifest(cache_dir)
                    report(progress, "data set ready (from the store)", 1, 1)
                    return manifest
        (dataset_dir / PREPARED_NAME).unlink(missing_ok=True)  # from here on the store holds no valid data set
        root = _data_root(settings, cache_dir)
        if data is None:
            _generate_synthetic(root, profile, progress)
        report(progress, "reading the data set", 0, 1)
        manifest = read_dataset(root if data is None else data, crop_um=profile.scan_crop_um)
        skipped = [list(map(str, item)) for item in manifest.attrs.get("skipped", [])]
        layout = manifest.attrs.get("source", "")
        labelled = manifest["material"].notna()
        if not labelled.any():
            raise ValueError(f"{data}: no material labels; the store needs a labelled data set (TMD-AFM TIFF "
                             "folder, class folders or a manifest CSV with a material column)")
        manifest = split_dataset(manifest[labelled].reset_index(drop=True), n_folds=profile.folds,
                                 test_fraction=profile.test_fraction, seed=profile.seed)
        report(progress, "reading the data set", 1, 1)
        manifest.attrs = {}  # parquet keeps attrs as JSON; the record below carries them instead
        _write_atomic(dataset_dir / MANIFEST_NAME, lambda tmp: manifest.to_parquet(tmp, index=False))
        root_in_store = root.resolve().is_relative_to(cache_dir.resolve())
        _write_json(dataset_dir / PREPARED_NAME, {
            "settings": settings,
            "profile": asdict(profile),
            "fingerprint": _fingerprint(root, exclude=cache_dir.resolve()),
            "root": str(root.resolve().relative_to(cache_dir.resolve()) if root_in_store else root.resolve()),
            "root_in_store": root_in_store,
            "layout": layout,
            "skipped": skipped,
            "unlabelled_dropped": int((~labelled).sum()),
        })
    return load_manifest(cache_dir)


# --- step 2: thumbnails -----------------------------------------------------------------------------------------

def render_thumbnail(path, *, size: int = THUMBNAIL_PX, crop_um=DEFAULT_CROP_UM) -> bytes:
    """PNG bytes of an image as the models see it (scaled 0..1) in the AFM gold colour scale, ``size`` px wide
    (``crop_um``: of an instrument file, as :func:`tmdafm_core.data.load_image`)."""
    from io import BytesIO

    from PIL import Image

    image, _ = load_image(path, crop_um=crop_um)
    rgb = Image.fromarray(afm_colours(image))
    height = max(1, round(size * image.shape[0] / image.shape[1]))
    buffer = BytesIO()
    rgb.resize((size, height), Image.Resampling.LANCZOS).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare_thumbnails(cache_dir, *, size: int = THUMBNAIL_PX, progress=None) -> Path:
    """Write one thumbnail per image of the prepared data set into ``cache_dir/thumbnails`` (resumable).

    Thumbnails made for another data set or size are removed first. Returns the thumbnail folder.
    """
    if int(size) != size or not 8 <= size <= 512:
        raise ValueError(f"thumbnail size must be an integer in 8..512 px, got {size}")
    progress = as_callback(progress, unit="img")
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    folder = cache_dir / THUMBNAILS_DIR
    key = {"dataset": manifest.attrs["record"]["fingerprint"], "size": int(size), "format": _FORMAT_VERSION}
    with _exclusive(cache_dir, "thumbnails"):
        marker = _read_json(folder / THUMBNAILS_MARKER)
        if marker is None or marker.get("key") != key:
            if folder.exists():
                shutil.rmtree(folder)
            _write_json(folder / THUMBNAILS_MARKER, {"key": key, "complete": False})
        elif marker.get("complete"):
            report(progress, "thumbnails ready (from the store)", 1, 1)
            return folder
        todo = [(image, path, crop) for image, path, crop in zip(manifest["image"], manifest["path"],
                                                                 scan_crops(manifest), strict=True)
                if not (folder / thumbnail_name(image)).is_file()]
        for image, path, crop in iterate(todo, progress, "making thumbnails", start=len(manifest) - len(todo),
                                         every=25):
            png = render_thumbnail(path, size=size, crop_um=crop)
            _write_atomic(folder / thumbnail_name(image), lambda tmp, png=png: tmp.write_bytes(png))
        _write_json(folder / THUMBNAILS_MARKER, {"key": key, "complete": True})
    return folder


# --- precompute: every step, recorded in store.json -------------------------------------------------------------

LATENT_COMPONENTS = 10
#: Pipeline steps in the order they run, and the steps each one reads.
_KEY_FILE = ".precompute.json"  # inside a run / study folder: what it was trained with, to resume or reuse it
_LATENT_FORMAT = 3  # 2: pre-ReLU latent features (the paper's); 3: predictions of the fold ensemble, with novelty
_RUN_FORMAT = 2  # 2: fold checkpoints keep a calibration temperature and a novelty reference
#: How the store's sequential study grows its head and cuts its volumes: the paper's way (sequential_study).
_SEQUENTIAL_SEMANTICS = {"head": "reset", "volume_mode": "paper"}


def write_atlas(cache_dir) -> Path:
    """Write ``thumbnails/atlas.json``: ``{image: "data:image/png;base64,..."}`` for every image of the data set.

    The browser fetches it once and shows hover thumbnails with no further server round trip. Needs the
    thumbnails (:func:`prepare_thumbnails`); returns the atlas path.
    """
    cache_dir = Path(cache_dir)
    atlas = {}
    for image in load_manifest(cache_dir)["image"]:
        uri = thumbnail_uri(cache_dir, image)
        if uri is None:
            raise FileNotFoundError(f"{cache_dir / THUMBNAILS_DIR / thumbnail_name(image)}: thumbnail of {image} "
                                    "missing; make the thumbnails first (tmdafm precompute)")
        atlas[image] = uri
    return write_json(cache_dir / THUMBNAILS_DIR / ATLAS_NAME, atlas)


@dataclass
class StepResult:
    """What one :func:`precompute` step did.

    ``status`` is ``"computed"`` or ``"from cache"``; ``reason`` says why a step was computed (``"not in the
    store"``, ``"settings changed"``, ``"input changed: <step>"``, ``"corrupt: <file>: <problem>"``,
    ``"interrupted earlier"``); ``path`` is where the app finds the step's results.
    """

    step: str
    status: str
    reason: str
    seconds: float
    path: Path


class _Context:
    def __init__(self, cache: Path, data, profile: Profile, progress, given_runs: dict | None = None):
        self.cache, self.data, self.profile, self.progress = cache, data, profile, as_callback(progress)
        self.verbose = progress is True  # the command line: a line per step besides the bars
        self.records = read_record(cache)
        self._manifest = None
        self.given_runs = given_runs or {}
        # Without a record (a new store, or a lost store.json) nothing tells the store's files from others'.
        self.guard_foreign = bool(self.records)

    @property
    def manifest(self) -> pd.DataFrame:
        if self._manifest is None:
            self._manifest = load_manifest(self.cache)
        return self._manifest

    @property
    def train(self) -> dict:
        """Training keywords (without ``threads`` and ``fold_jobs``, which change speed, not results)."""
        return _result_options(self.profile)

    @property
    def fold_jobs(self) -> int:
        """Folds trained at once in local processes (:func:`tmdafm_core.training.cross_validate`)."""
        return int(self.profile.train_options.get("fold_jobs") or 1)

    def threads(self):
        """Context: the profile's torch CPU threads while a step trains or embeds."""
        from . import experiments

        threads = self.profile.train_options.get("threads")
        if threads is None or not hasattr(experiments, "torch_threads"):
            return contextlib.nullcontext()
        return experiments.torch_threads(threads)

    @property
    def order(self) -> list:
        if self.profile.order is not None:
            return list(self.profile.order)
        return list(LabelSpace.from_materials(self.manifest["material"]).classes)



def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))


def _swap_in(staging: Path, target: Path) -> None:
    """Put a finished folder in place of ``target`` (two renames; readers see the old folder, then the new one)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def _staging(target: Path, compat: dict, *, reuse: bool) -> Path:
    """The folder a resumable step trains in: an interrupted attempt with the same settings, the finished
    ``target`` when ``reuse`` allows (its finished runs are kept), else a fresh one."""
    staging = target.with_name(f".{target.name}.partial")
    if staging.exists() and read_json(staging / _KEY_FILE) != compat:
        shutil.rmtree(staging)
    if not staging.exists() and reuse and target.is_dir() and read_json(target / _KEY_FILE) == compat:
        os.replace(target, staging)
    staging.mkdir(parents=True, exist_ok=True)
    write_json(staging / _KEY_FILE, compat)
    return staging


# --- the steps: each returns the files it wrote (and optionally its output id) ---

def _step_thumbnails(ctx: _Context):
    folder = ctx.cache / THUMBNAILS_DIR
    marker = read_json(folder / THUMBNAILS_MARKER)
    if marker and marker.get("complete") and not all((folder / thumbnail_name(image)).is_file()
                                                     for image in ctx.manifest["image"]):
        write_json(folder / THUMBNAILS_MARKER, {**marker, "complete": False})  # remake the missing ones
    folder = prepare_thumbnails(ctx.cache, progress=ctx.progress)
    write_atlas(ctx.cache)
    return _files_under(folder)


def _step_descriptors(ctx: _Context):
    from .features import FEATURE_COLUMNS, compute_table

    with open_store(ctx.cache) as memo:
        table = compute_table(ctx.manifest, cache=memo, progress=ctx.progress,
                              paper_pixels=ctx.profile.descriptors == "paper")
    path = ctx.cache / FEATURES_NAME
    write_atomic(path, lambda tmp: table[["image", *FEATURE_COLUMNS]].to_csv(tmp, index=False))
    return [path]


def run_training_options(profile) -> dict:
    """``cross_validate`` keywords of a profile's MtC / MtL runs: its training options (without the speed-only
    ``threads`` and ``fold_jobs``), with ``run_epochs`` and ``run_image_size`` when set."""
    profile = resolve_profile(profile)
    overrides = {"epochs": profile.run_epochs, "image_size": profile.run_image_size}
    return {**_result_options(profile), **{key: value for key, value in overrides.items() if value is not None}}


def _result_options(profile: Profile) -> dict:
    return {k: v for k, v in profile.train_options.items() if k not in ("threads", "fold_jobs")}


def _run_options(ctx: _Context) -> dict:
    return run_training_options(ctx.profile)


def with_backbone(cache_dir, options: dict) -> dict:
    """Training keywords with :data:`PRETRAINED_WEIGHTS` replaced by the store's backbone file (store keys keep the
    name, so a moved store keeps its keys; the backbone's content enters them through the ``pretrain`` step)."""
    if options.get("weights") != PRETRAINED_WEIGHTS:
        return options
    return {**options, "weights": str(Path(cache_dir) / PRETRAINED_DIR / BACKBONE_NAME)}


def _step_pretrain(ctx: _Context):
    """The profile's backbone, pretrained on a synthetic corpus (nothing when the profile does not pretrain)."""
    folder = ctx.cache / PRETRAINED_DIR
    profile = ctx.profile
    if profile.pretrain_images <= 0:
        shutil.rmtree(folder, ignore_errors=True)
        return []
    from .pretrain import backbone_description_path, pretrain_backbone, save_backbone, synthetic_corpus

    image_size = _pretrain_image_size(ctx)
    report(ctx.progress, f"pretrain: rendering {profile.pretrain_images} corpus images", 0, 2)
    images, truth = synthetic_corpus(profile.pretrain_images, size=profile.size, image_size=image_size,
                                     seed=profile.seed, jobs=os.cpu_count() or 1)
    report(ctx.progress, "pretrain: training the backbone", 1, 2)
    result = pretrain_backbone(images, arch=ctx.train.get("arch", "resnet18"), objective=profile.pretrain_objective,
                               truth=truth, epochs=profile.pretrain_epochs, seed=profile.seed,
                               precision=ctx.train.get("precision", "native"), device=ctx.train.get("device", "cpu"),
                               progress=ctx.progress)
    path = save_backbone(result, folder / BACKBONE_NAME, title=PRETRAINED_TITLE)
    return [path, backbone_description_path(path)]


def _pretrain_image_size(ctx: _Context) -> int:
    """The backbone learns at the input side of the MtC / MtL runs it serves (64 px when the profile has none)."""
    return _run_options(ctx).get("image_size") or 64


def _train_run(ctx: _Context, task: str):
    from .training import cross_validate

    target = ctx.cache / RUNS_DIR / task
    if task in ctx.given_runs:  # an existing run stands in for training: a copy, so the store stays whole
        staging = target.with_name(f".{task}.given")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(ctx.given_runs[task], staging)
        _swap_in(staging, target)
        return _files_under(target)
    compat = {"task": task, "train": _run_options(ctx), "inputs": {"dataset": ctx.records["dataset"]["output"]},
              "format": _RUN_FORMAT}
    staging = _staging(target, compat, reuse=True)
    cross_validate(ctx.manifest, staging, task=task, presplit=True, save_optimizer=False, progress=ctx.progress,
                   fold_jobs=ctx.fold_jobs, **with_backbone(ctx.cache, _run_options(ctx)))
    _swap_in(staging, target)
    return _files_under(target)


def _step_sequential(ctx: _Context):
    from .experiments import MODES, sequential_study

    target = ctx.cache / SEQUENTIAL_DIR
    # Runs trained with the same options on the same data are kept when only the order or volumes change.
    compat = {"train": ctx.train, "inputs": {"dataset": ctx.records["dataset"]["output"]},
              "semantics": _SEQUENTIAL_SEMANTICS}
    options = dict(order=ctx.order, volumes=ctx.profile.volumes, task=ctx.profile.sequential_task, modes=MODES,
                   progress=ctx.progress, fold_jobs=ctx.fold_jobs, **_SEQUENTIAL_SEMANTICS,
                   **with_backbone(ctx.cache, ctx.train))
    staging = _staging(target, compat, reuse=True)
    try:
        sequential_study(ctx.manifest, staging, **options)
    except ValueError as exc:
        if "holds a run with other settings" not in str(exc):
            raise
        # A kept run was trained elsewhere (the store moved, so its recorded start paths differ): start over.
        shutil.rmtree(staging)
        staging = _staging(target, compat, reuse=False)
        sequential_study(ctx.manifest, staging, **options)
    _swap_in(staging, target)
    return _files_under(target)


def _latent_outputs(out: Path, written: dict) -> list[Path]:
    """Move freshly written files from their staging folder into ``out`` one by one (each replace is atomic) and
    remove files of an earlier analysis that this one did not write."""
    out.mkdir(parents=True, exist_ok=True)
    staging = written["staging"]
    names = {p.name for p in staging.iterdir() if p.is_file()}
    for name in sorted(names):
        os.replace(staging / name, out / name)
    for path in out.iterdir():
        if path.is_file() and path.name not in names:
            path.unlink()
    shutil.rmtree(staging, ignore_errors=True)
    return sorted(out / name for name in names)


def _prediction_table(manifest: pd.DataFrame, predictions) -> pd.DataFrame:
    table = manifest[["image", "sample_id", "material", "split", "fold"]].reset_index(drop=True)
    probabilities = predictions.to_frame().drop(columns="image").rename(columns={"material": "predicted"})
    table = pd.concat([table, probabilities], axis=1)
    table.insert(table.columns.get_loc("predicted") + 1, "correct", table["predicted"] == table["material"])
    return table


def _latent_run(ctx: _Context, task: str):
    from .latent import analyse, fit_projection, read_descriptors, write_latent_outputs
    from .training import load_ensemble, predict_ensemble

    manifest = ctx.manifest
    report(ctx.progress, f"latent {task}: embedding {len(manifest)} images", 0, 3)
    # The fold ensemble's calibrated probabilities, agreement and novelty; the best fold's latent space.
    runs = load_ensemble(ctx.cache / RUNS_DIR / task, device=ctx.train.get("device", "cpu"))
    predictions = predict_ensemble(runs, list(manifest["path"]), batch_size=64)
    embeddings = manifest[["image", "sample_id", "material"]].reset_index(drop=True).copy()
    latent = pd.DataFrame(predictions.embeddings, columns=[f"latent{i + 1}" for i in range(
        predictions.embeddings.shape[1])])
    embeddings = pd.concat([embeddings, latent], axis=1)
    report(ctx.progress, f"latent {task}: PCA" + (" and UMAP" if ctx.profile.umap_dims else ""), 1, 3)
    projection = fit_projection(latent.to_numpy(), n_components=LATENT_COMPONENTS, umap=bool(ctx.profile.umap_dims),
                                umap_components=tuple(ctx.profile.umap_dims) or (2,), seed=ctx.profile.seed)
    report(ctx.progress, f"latent {task}: correlation tables", 2, 3)
    tables = analyse(embeddings, read_descriptors(ctx.cache / FEATURES_NAME), projection=projection,
                     seed=ctx.profile.seed, n_boot=ctx.profile.n_boot)
    tables["projection"].insert(3, "split", manifest["split"].to_numpy())
    out = ctx.cache / LATENT_DIR / task
    staging = out.with_name(f".{task}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    write_latent_outputs(staging, tables, projection=projection)
    _prediction_table(manifest, predictions).to_csv(staging / PREDICTIONS_NAME, index=False)
    embeddings.to_parquet(staging / EMBEDDINGS_NAME, index=False)
    report(ctx.progress, f"latent {task}: written", 3, 3)
    return _latent_outputs(out, {"staging": staging})


def _sequential_stage_runs(cache: Path) -> list[tuple[str, str, int, Path]]:
    """(task, mode, n classes, run folder) of every full-volume stage of the stored study, by class count."""
    results = pd.read_csv(cache / SEQUENTIAL_DIR / "results.csv", dtype={"volume": str})
    full = results[(results["volume"] == "full") & (results["split"] == "test")]
    full = full.sort_values(["task", "mode", "n_classes"], kind="stable")
    return [(row.task, row.mode, int(row.n_classes), cache / SEQUENTIAL_DIR / row.run) for row in full.itertuples()]


def _step_latent_sequential(ctx: _Context):
    from .latent import fit_projection, procrustes_align
    from .training import embed, load_run

    stages = _sequential_stage_runs(ctx.cache)
    out_root = ctx.cache / LATENT_DIR / SEQUENTIAL_DIR
    staging = out_root.with_name(f".{SEQUENTIAL_DIR}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    previous: dict[tuple, pd.DataFrame] = {}
    for task, mode, n_classes, run_dir in iterate(stages, ctx.progress, "sequential latent projections"):
        run = load_run(run_dir, "best", device=ctx.train.get("device", "cpu"))
        frame = pd.read_csv(run_dir / "splits.csv", dtype={"image": str, "sample_id": str})
        frame = frame.merge(ctx.manifest[["image", "path", "pixel_size_nm"]], on="image", how="left")
        values = embed(run, frame)
        scores = fit_projection(values, n_components=2, seed=ctx.profile.seed).transform(values)
        before = previous.get((task, mode))
        if before is not None:  # keep the classes seen so far where the previous stage drew them
            position = pd.Series(np.arange(len(frame)), index=frame["image"].to_numpy())
            shared = before[before["image"].isin(position.index)]
            scores, _ = procrustes_align(scores, shared[["PC1", "PC2"]].to_numpy(),
                                         shared=position.loc[shared["image"]].to_numpy())
        table = pd.DataFrame({"image": frame["image"], "sample_id": frame["sample_id"], "label": frame["material"],
                              "split": frame["split"], "fold": frame["fold"], "PC1": scores[:, 0],
                              "PC2": scores[:, 1]})
        folder = staging / task / mode / f"{n_classes}cls"
        folder.mkdir(parents=True, exist_ok=True)
        table.to_csv(folder / "projection.csv", index=False)
        previous[(task, mode)] = table
    if out_root.exists():
        _swap_in(staging, out_root)
    else:
        os.replace(staging, out_root)
    return _files_under(out_root)


def _dataset_digest(manifest: pd.DataFrame) -> str:
    """Content digest of a prepared data set: its tidy columns and every image file's bytes."""
    columns = [c for c in ("image", "material", "sample_id", "split", "fold", "height", "width", "pixel_size_nm")
               if c in manifest.columns]
    rows = manifest[columns].astype(str).to_numpy().tolist()
    return make_key("dataset", rows, [file_digest(path) for path in manifest["path"]])


def _settings(ctx: _Context, step: str) -> dict:
    profile = ctx.profile
    if step == "thumbnails":
        return {"px": THUMBNAIL_PX, "format": _FORMAT_VERSION}
    if step == "descriptors":
        from .features.table import FEATURE_CODE_VERSION

        return {"code": FEATURE_CODE_VERSION, "paper_pixels": profile.descriptors == "paper"}
    if step == "pretrain":
        if profile.pretrain_images <= 0:
            return {"pretrain": None}
        return {"images": profile.pretrain_images, "epochs": profile.pretrain_epochs, "size": profile.size,
                "objective": profile.pretrain_objective, "seed": profile.seed, "arch": ctx.train.get("arch"),
                "image_size": _pretrain_image_size(ctx),
                "precision": ctx.train.get("precision"), "format": 1}
    if step in ("mtc", "mtl"):
        if step in ctx.given_runs:
            folder = ctx.given_runs[step]
            return {"task": step, "given": str(folder),
                    "digests": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}}
        return {"task": step, "train": _run_options(ctx), "format": _RUN_FORMAT}
    if step == "sequential":
        # results 2: paired Sequential − ImageNet intervals in results.csv (rewritten from the kept runs, no training)
        return {"train": ctx.train, "order": ctx.order, "volumes": [str(v) for v in profile.volumes],
                "task": profile.sequential_task, **_SEQUENTIAL_SEMANTICS, "results": 2}
    if step in ("latent-mtc", "latent-mtl"):
        return {"n_components": LATENT_COMPONENTS, "umap_dims": list(profile.umap_dims), "n_boot": profile.n_boot,
                "seed": profile.seed, "device": ctx.train.get("device", "cpu"), "format": _LATENT_FORMAT}
    if step == "latent-sequential":
        return {"n_components": 2, "align": "procrustes", "seed": profile.seed, "format": _LATENT_FORMAT}
    raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")


_STEP_FUNCTIONS = {
    "thumbnails": _step_thumbnails, "descriptors": _step_descriptors, "pretrain": _step_pretrain,
    "mtc": lambda ctx: _train_run(ctx, "mtc"), "mtl": lambda ctx: _train_run(ctx, "mtl"),
    "sequential": _step_sequential,
    "latent-mtc": lambda ctx: _latent_run(ctx, "mtc"), "latent-mtl": lambda ctx: _latent_run(ctx, "mtl"),
    "latent-sequential": _step_latent_sequential,
}
_TORCH_STEPS = ("mtc", "mtl", "sequential", "latent-mtc", "latent-mtl", "latent-sequential")
def _drop_damaged(cache: Path, files: dict) -> None:
    """Delete the recorded files that are no longer as written, so the resumable steps make them again."""
    for name, entry in files.items():
        path = cache / name
        if path.is_file() and file_problem(path, entry):
            path.unlink()


def _stale(ctx: _Context, record: dict | None, key: str, inputs: dict) -> str | None:
    """Why a step must be computed, or None when its record and files can be served."""
    if record is None:
        return "not in the store"
    if record.get("status") != "done":
        return "interrupted earlier" if record.get("key") == key else "not in the store"
    if record.get("key") != key:
        changed = [name for name, value in inputs.items() if record.get("inputs", {}).get(name) != value]
        return f"input changed: {', '.join(changed)}" if changed else "settings changed"
    problem = check_files(ctx.cache, record.get("files", {}))
    return f"corrupt: {problem}" if problem else None


def _finish(ctx: _Context, step: str, key: str, settings: dict, inputs: dict, files, started: float,
            output: str | None = None) -> None:
    entries = file_entries(ctx.cache, files)
    for name in entries:  # never record a file that does not read back as its type
        problem = check_file(ctx.cache / name)
        if problem:
            raise ValueError(f"{ctx.cache / name}: {problem} right after {step} wrote it")
    record = {"status": "done", "key": key, "settings": settings, "inputs": inputs, "files": entries,
              "output": output or make_key(step, key, entries, time.time_ns()),
              "seconds": round(time.perf_counter() - started, 3), "finished_at": _now()}
    ctx.records = update_step(ctx.cache, step, record)


def _run_dataset_step(ctx: _Context) -> StepResult:
    started = time.perf_counter()
    before = read_json(ctx.cache / DATASET_DIR / PREPARED_NAME)
    manifest = prepare_dataset(ctx.cache, ctx.data, profile=ctx.profile, progress=ctx.progress)
    ctx._manifest = manifest
    prepared = manifest.attrs["record"]
    settings = prepared["settings"]
    inputs = {"source": prepared["fingerprint"]}
    key = make_key("dataset", settings, inputs)
    record = ctx.records.get("dataset")
    reason = _stale(ctx, record, key, inputs)
    if reason is None and before == prepared:
        return StepResult("dataset", "from cache", "", 0.0, ctx.cache / STEP_PATHS["dataset"])
    if reason is None:
        reason = "rebuilt (the manifest was unreadable)"
    files = [ctx.cache / DATASET_DIR / MANIFEST_NAME, ctx.cache / DATASET_DIR / PREPARED_NAME]
    _finish(ctx, "dataset", key, settings, inputs, files, started, output=_dataset_digest(manifest))
    return StepResult("dataset", "computed", reason, time.perf_counter() - started, ctx.cache / STEP_PATHS["dataset"])


def _run_step(ctx: _Context, step: str) -> StepResult:
    if step == "dataset":
        return _run_dataset_step(ctx)
    started = time.perf_counter()
    settings = _settings(ctx, step)
    inputs = {name: ctx.records[name]["output"] for name in DEPENDS[step]}
    key = make_key(step, settings, inputs)
    reason = _stale(ctx, ctx.records.get(step), key, inputs)
    path = ctx.cache / STEP_PATHS[step]
    if reason is None:
        return StepResult(step, "from cache", "", 0.0, path)
    if ctx.verbose:
        print(f"tmdafm precompute: {step}: computing ({reason})", file=sys.stderr, flush=True)
    foreign = _foreign_files(ctx, step) if ctx.guard_foreign else []
    if foreign:
        raise ValueError(f"{ctx.cache / STEP_OUTPUTS[step]}: holds {len(foreign)} file(s) the store did not write "
                         f"(e.g. {foreign[0]}); move them out of the store, then run precompute again")
    report(ctx.progress, f"{step}: computing ({reason})", 0, 1)
    if reason.startswith("corrupt"):
        _drop_damaged(ctx.cache, ctx.records[step].get("files", {}))
    # Dependants see a running step as not done from here on; a crash leaves it so and the next run resumes it.
    ctx.records = update_step(ctx.cache, step, {"status": "running", "key": key, "settings": settings,
                                                "inputs": inputs, "started_at": _now()})
    with ctx.threads() if step in _TORCH_STEPS else contextlib.nullcontext():
        files = _STEP_FUNCTIONS[step](ctx)
    _finish(ctx, step, key, settings, inputs, files, started)
    return StepResult(step, "computed", reason, time.perf_counter() - started, path)


def _with_dependencies(steps) -> list[str]:
    wanted = set()

    def add(step):
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        wanted.add(step)
        for name in DEPENDS[step]:
            add(name)

    for step in steps:
        add(step)
    return [step for step in STEPS if step in wanted]


def given_runs(paths) -> dict:
    """``{task: run directory}`` of existing runs (``tmdafm train`` or ``import-model`` output) named by path.

    Each folder's ``config.json`` says its task; two runs of one task, or a folder that is no run, are refused.
    """
    runs = {}
    for path in map(Path, paths or ()):
        config = read_json(path / "config.json")
        if not isinstance(config, dict):
            raise ValueError(f"{path}: not a run directory (no readable config.json); give a folder written by "
                             "`tmdafm train` or `tmdafm import-model`")
        task = config.get("task")
        if task not in ("mtc", "mtl") or not any(path.glob("fold*.pt")):
            raise ValueError(f"{path}: not an image run with fold checkpoints (task {task!r})")
        if task in runs:
            raise ValueError(f"two {task} runs given ({runs[task]}, {path}); give one per task")
        runs[task] = path.resolve()
    return runs


def claim_store(cache_dir) -> Path:
    """Make ``cache_dir`` a store, or check that it is one; refuse a non-empty folder that is not a store.

    A store is recognised by :data:`STORE_MARKER` (or, made by an earlier version, by its ``store.json``).
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(f"{cache_dir}: exists and is not a folder; give a folder for the store")
    marker = cache_dir / STORE_MARKER
    if not marker.is_file():
        # Hidden entries are the app's build status and locks, which may come first.
        visible = cache_dir.is_dir() and any(not p.name.startswith(".") for p in cache_dir.iterdir())
        if visible and not (cache_dir / "store.json").is_file():
            raise ValueError(f"{cache_dir}: not empty and not a tmdafm store (no {STORE_MARKER}); give a new or "
                             "empty folder (or an existing store) so that none of your files is replaced")
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"tmdafm_store": 1})
    return cache_dir


def _foreign_files(ctx, step: str) -> list[str]:
    """Files (not hidden) where ``step`` writes that no step of the store recorded: someone else's."""
    target = ctx.cache / STEP_OUTPUTS.get(step, "")
    if step not in STEP_OUTPUTS or not target.exists():
        return []
    recorded = {name for record in ctx.records.values() for name in record.get("files", {})}
    present = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
    return [p.relative_to(ctx.cache).as_posix() for p in present
            if not any(part.startswith(".") for part in p.relative_to(ctx.cache).parts)
            and p.relative_to(ctx.cache).as_posix() not in recorded]


def precompute(cache_dir, data=None, *, profile="demo", progress=None, steps=None, runs=None) -> list[StepResult]:
    """Build every artifact the app shows into the store, skipping what is already there and still valid.

    Steps (:data:`STEPS`): read or generate the data set and split it → thumbnails and their atlas → physical
    descriptors → MtC and MtL cross-validated runs → sequential study → for each run its embeddings, PCA/UMAP,
    analysis tables and predictions → per-stage projections of the sequential study, aligned stage to stage.

    Each step is recorded in ``CACHE/store.json`` with a key over its settings and the outputs of the steps it
    reads. A step is skipped when its record is done, its key is unchanged and its files are whole (sizes, content
    digests, and that each reads as its type); otherwise it is computed again, and so is every step that reads it.
    Training steps resume an interrupted attempt (finished folds and stages are kept). Two writers never run the
    same step at once (a lock per step; the second then finds the step done). Readers may read while a writer
    runs: every file is replaced atomically and training happens in a separate folder that is swapped in when
    complete.

    Parameters
    ----------
    cache_dir : str or Path
        The store (created if missing).
    data : str or Path, optional
        Labelled data set (any source :func:`~tmdafm_core.data.read_dataset` reads); None: the profile's synthetic
        demo set, generated into the store.
    profile : str, dict or Profile
        ``"demo"`` (2-core CPU, minutes), ``"paper"`` (for a GPU), ``"tiny"`` (seconds, tests) or a
        :class:`Profile`.
    progress : None, True or callable, optional
        ``True``: a line per step and tqdm bars with ETAs on stderr; a callable receives ``(step, done, total)``.
    steps : sequence of str, optional
        Only these steps (and the steps they read); default all.
    runs : sequence of path, optional
        Existing run directories (:func:`given_runs`) used as the store's MtC / MtL runs instead of training them
        (e.g. a model imported with ``tmdafm import-model``); copied into the store.

    Returns
    -------
    list of StepResult
        One per step run, in order (:func:`format_summary` prints them).
    """
    profile = resolve_profile(profile)
    runs = given_runs(runs)
    cache_dir = claim_store(cache_dir)
    if (cache_dir / "store.json").is_file() and not read_record(cache_dir):
        print(f"tmdafm precompute: {cache_dir / 'store.json'} is unreadable: every step is made again",
              file=sys.stderr, flush=True)
    wanted = _with_dependencies(STEPS if steps is None else steps)
    results = []
    ctx = _Context(cache_dir, data, profile, progress, given_runs=runs)
    for number, step in enumerate(wanted, 1):
        # One writer per step (a lock per step, not per run: the app's own preparation of the data set and
        # thumbnails goes ahead once another precompute has finished those steps).
        with exclusive(cache_dir, f"step-{step}"):
            ctx.records = read_record(cache_dir)
            result = _run_step(ctx, step)
        if step == "pretrain" and ctx.profile.pretrain_images <= 0:
            continue  # recorded (its dependants' keys read it) but nothing was made: not a step to report
        results.append(result)
        if progress is True:
            result = results[-1]
            print(f"tmdafm precompute: [{number}/{len(wanted)}] {step}: {result.status}"
                  + (f" in {result.seconds:.1f} s" if result.status == "computed" else ""),
                  file=sys.stderr, flush=True)
    return results


def format_summary(results: list[StepResult], cache_dir) -> str:
    """The closing summary of :func:`precompute`: each step, computed or from cache (and why), and where it is."""
    cache_dir = Path(cache_dir)
    width = max(len(r.step) for r in results) if results else 4
    lines = [f"{'step':{width}s}  {'status':10s}  {'seconds':>8s}  where (in {cache_dir})"]
    for r in results:
        where = r.path.relative_to(cache_dir).as_posix() if r.path.is_relative_to(cache_dir) else str(r.path)
        note = f"  ({r.reason})" if r.status == "computed" and r.reason else ""
        lines.append(f"{r.step:{width}s}  {r.status:10s}  {r.seconds:8.1f}  {where}{note}")
    computed = sum(r.status == "computed" for r in results)
    lines.append(f"{computed} step(s) computed, {len(results) - computed} from the cache; the app reads the store "
                 f"with: tmdafm app --cache {shlex.quote(str(cache_dir))}")
    return "\n".join(lines)


# --- what the app can build by itself ---------------------------------------------------------------------------

def app_steps(cache_dir, *, profile="demo") -> tuple[str, ...]:
    """The steps the app builds by itself for this store: all of :data:`STEPS` for the synthetic demo trained from
    scratch (minutes on a CPU), only the data set and thumbnails for a data set of yours or the paper profile
    (ImageNet weights, meant for a GPU: train those with ``tmdafm precompute``)."""
    data, profile = recorded_source(cache_dir, profile)
    return _steps_of(profile, STEPS) if data is None and profile.training != "paper" else ("dataset", "thumbnails")


def _steps_of(profile: Profile, steps) -> tuple[str, ...]:
    """``steps`` without ``pretrain`` for a profile that does not pretrain (it is recorded, not shown)."""
    return tuple(step for step in steps if step != "pretrain" or profile.pretrain_images > 0)


def complete_store(cache_dir, *, profile="demo", progress=None, steps=("thumbnails",),
                   on_step=None) -> list[StepResult]:
    """Build what the app needs: by default the data set, the thumbnails and their atlas (seconds).

    A store that was prepared before is brought up to date with the source and profile it was built from (a data
    set from DATA stays that data set); a store with no (or an unreadable) data set gets the synthetic demo of
    ``profile``. ``steps`` (and the steps they read) run one at a time, each skipped when done
    (:func:`precompute`), so an interrupted build resumes; ``on_step(step, number, count)`` is called before each.
    """
    cache_dir = Path(cache_dir)
    data, profile = recorded_source(cache_dir, profile)
    wanted = _steps_of(profile, _with_dependencies(steps))  # precompute records a skipped pretrain by itself
    results = []
    for number, step in enumerate(wanted, 1):
        if on_step is not None:
            on_step(step, number, len(wanted))
        results.append(precompute(cache_dir, data, profile=profile, progress=progress, steps=(step,))[-1])
    return results
