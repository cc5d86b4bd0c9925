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
never see half a run. Pages read the store only, through :mod:`tmdafm_core.layout` and :mod:`tmdafm_core.results`.

This module runs the steps and records them; the steps themselves are in :mod:`tmdafm_core.prepared` (data set),
:mod:`tmdafm_core.thumbnails` and :mod:`tmdafm_core.steps` (descriptors, pretraining, runs, study, latent analyses);
the profiles in :mod:`tmdafm_core.profiles`; where everything lives in :mod:`tmdafm_core.layout`.

Profiles (:data:`PROFILES`): ``demo`` for a 2-core CPU (the experiments' demo training: ResNet18 fine-tuned from the
store's own AFM-pretrained backbone (the ``pretrain`` step: 1536 synthetic images from the generator's whole
parameter space, parameter regression, at 64 px) at 64 px and a gentle rate for 2 epochs for the sequential study's
many runs, 128 px and 20 epochs for the MtC and MtL runs the app explores);
``paper`` is the study's setting (ImageNet weights from the torchvision cache, 60 epochs, 5 folds, native image
size, the full volume sweep) and is meant for a GPU (``device="cuda"``; hours on a CPU); ``tiny`` builds a whole
store in about a minute, for tests and trying the app.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .layout import (
    DATASET_DIR,
    DEPENDS,
    MANIFEST_NAME,
    PREPARED_NAME,
    RUNS_DIR,
    STEP_OUTPUTS,
    STEP_PATHS,
    STEPS,
    STORE_MARKER,
    THUMBNAILS_DIR,
    Artifact,
    load_manifest,
    recorded_source,
    store_contents,
    store_ready,
    thumbnail_name,
    thumbnail_uri,
)
from .prepared import claim_store, prepare_dataset
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
from .progress import report
from .results import dataset_overview, example_thumbnails, split_table
from .steps import (
    _STEP_FUNCTIONS,
    _TORCH_STEPS,
    _Context,
    _dataset_digest,
    _now,
    _settings,
    run_training_options,
    with_backbone,
)
from .store import (
    check_file,
    check_files,
    exclusive,
    file_entries,
    file_problem,
    make_key,
    read_json,
    read_record,
    update_step,
)
from .thumbnails import prepare_thumbnails, render_thumbnail, write_atlas

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

    Examples
    --------
    The whole store of the ``tiny`` profile (about a minute on 2 CPU cores), then a warm rerun that recomputes
    nothing:

    >>> results = precompute("cache", profile="tiny")  # doctest: +SKIP
    >>> {r.status for r in precompute("cache", profile="tiny")}  # doctest: +SKIP
    {'from cache'}
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
