"""The precompute steps after the data set: what each computes, from which settings, into which staging folder
(:mod:`tmdafm_core.pipeline` runs them, records them and skips those already done)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .data import LabelSpace
from .layout import (
    BACKBONE_NAME,
    EMBEDDINGS_NAME,
    FEATURES_NAME,
    LATENT_DIR,
    PREDICTIONS_NAME,
    PRETRAINED_DIR,
    RUNS_DIR,
    SEQUENTIAL_DIR,
    STEPS,
    THUMBNAILS_DIR,
    THUMBNAILS_MARKER,
    load_manifest,
    staging_folder,
    thumbnail_name,
)
from .prepared import _FORMAT_VERSION
from .profiles import (
    PRETRAINED_TITLE,
    PRETRAINED_WEIGHTS,
    Profile,
    resolve_profile,
)
from .progress import as_callback, iterate, report
from .store import (
    file_digest,
    make_key,
    open_store,
    read_json,
    read_record,
    write_atomic,
    write_json,
)
from .thumbnails import THUMBNAIL_PX, prepare_thumbnails, write_atlas

# --- precompute: every step, recorded in store.json -------------------------------------------------------------

LATENT_COMPONENTS = 10
#: Pipeline steps in the order they run, and the steps each one reads.
_KEY_FILE = ".precompute.json"  # inside a run / study folder: what it was trained with, to resume or reuse it
_LATENT_FORMAT = 3  # 2: pre-ReLU latent features (the paper's); 3: predictions of the fold ensemble, with novelty
_RUN_FORMAT = 3  # 2: fold checkpoints keep a calibration temperature and a novelty reference; 3: and the training
# images' field-of-view range (the scale check)
#: How the store's sequential study grows its head and cuts its volumes: the paper's way (sequential_study).
_SEQUENTIAL_SEMANTICS = {"head": "reset", "volume_mode": "paper"}


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
        """Context: the profile's torch CPU threads while a step trains."""
        from .study_runs import torch_threads

        return torch_threads(self.profile.train_options.get("threads"))

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
    staging = staging_folder(target)
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
    ``threads`` and ``fold_jobs``), with ``run_epochs``, ``run_image_size``, ``run_lr`` and ``run_ema_decay`` when
    set."""
    profile = resolve_profile(profile)
    overrides = {"epochs": profile.run_epochs, "image_size": profile.run_image_size, "lr": profile.run_lr,
                 "ema_decay": profile.run_ema_decay}
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

    image_size = int(profile.pretrain_image_size)
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
    from .sequential import MODES, sequential_study

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
    from .embeddings import fit_projection
    from .latent import analyse, read_descriptors, write_latent_outputs
    from .training import load_ensemble, predict_ensemble

    manifest = ctx.manifest
    report(ctx.progress, f"latent {task}: embedding {len(manifest)} images", 0, 3)
    # The fold ensemble's calibrated probabilities, agreement and novelty; the best fold's latent space.
    runs = load_ensemble(ctx.cache / RUNS_DIR / task, device=ctx.train.get("device", "cpu"))
    predictions = predict_ensemble(runs, list(manifest["path"]), batch_size=64,
                                   pixel_size_nm=manifest["pixel_size_nm"].to_numpy())
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
    staging = staging_folder(out)
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
    from .embeddings import fit_projection, procrustes_align
    from .training import embed, load_run

    stages = _sequential_stage_runs(ctx.cache)
    out_root = ctx.cache / LATENT_DIR / SEQUENTIAL_DIR
    staging = staging_folder(out_root)
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
                "image_size": int(profile.pretrain_image_size),
                "precision": ctx.train.get("precision"), "format": 1}
    if step in ("mtc", "mtl"):
        if step in ctx.given_runs:
            folder = ctx.given_runs[step]
            return {"task": step, "given": str(folder),
                    "digests": {p.name: file_digest(p) for p in sorted(folder.iterdir()) if p.is_file()}}
        return {"task": step, "train": _run_options(ctx), "format": _RUN_FORMAT}
    if step == "sequential":
        # results 2: paired Sequential − ImageNet intervals in results.csv; 3: none where both arms are one run (the
        # first stage). Both rewrite results.csv from the kept runs, no training.
        return {"train": ctx.train, "order": ctx.order, "volumes": [str(v) for v in profile.volumes],
                "task": profile.sequential_task, **_SEQUENTIAL_SEMANTICS, "results": 3}
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
#: Steps that train under the profile's torch ``threads`` (one per fold process in the demo). The latent steps embed
#: in one process and keep torch's own setting, the whole machine: the demo's MtC fold ensemble on 600 store images,
#: 2 cores, 7.3-8.8 s with one thread, 5.1-5.2 s with two.
_TORCH_STEPS = ("mtc", "mtl", "sequential")
