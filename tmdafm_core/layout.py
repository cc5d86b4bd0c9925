"""Where everything lives in a store, whether it is there, and the command that builds what is not.

One place for every folder and file name of a store (``CACHE``): the precompute engine
(:mod:`tmdafm_core.pipeline`) writes through :class:`StoreLayout` and every reader (results, selection,
classification, the pages) reads through it, so a reader never imports the engine and a name is spelled once.

Layout of a store::

    .tmdafm-store, store.json                    marker; step record (:mod:`tmdafm_core.store`)
    dataset/manifest.parquet, prepared.json      the prepared data set (split and folds); dataset/images/ (demo)
    thumbnails/<hash>.png, thumbnails.json       96 px thumbnails; thumbnails/atlas.json (hover images)
    features.csv                                 the physical descriptors of every image
    pretrained/backbone.pt (+ backbone.json)     the store's own pretrained backbone (profiles that pretrain)
    runs/mtc/, runs/mtl/                         cross-validated run directories (metrics.json, fold<k>.pt, ...)
    sequential/results.csv, study.json, ...      the sequential-training study
    latent/<task>/, latent/sequential/           latent analyses (projection.csv/.npz, tables, predictions.csv)

Examples
--------
>>> layout = StoreLayout("cache")
>>> layout.run("mtc").as_posix()
'cache/runs/mtc'
>>> layout.build_command("descriptors")  # doctest: +SKIP
'tmdafm precompute --out cache --profile demo --steps descriptors'
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .profiles import PRETRAINED_TITLE, PROFILES, Profile, profile_arguments, resolve_profile
from .store import RECORD_NAME, read_json, read_record

DATASET_DIR, MANIFEST_NAME, PREPARED_NAME = "dataset", "manifest.parquet", "prepared.json"
SYNTHETIC_IMAGES_DIR = "images"
THUMBNAILS_DIR, THUMBNAILS_MARKER, ATLAS_NAME = "thumbnails", "thumbnails.json", "atlas.json"
FEATURES_NAME = "features.csv"
PRETRAINED_DIR, BACKBONE_NAME = "pretrained", "backbone.pt"
RUNS_DIR, LATENT_DIR, SEQUENTIAL_DIR = "runs", "latent", "sequential"
METRICS_NAME, CONFIG_NAME = "metrics.json", "config.json"
PREDICTIONS_NAME, EMBEDDINGS_NAME = "predictions.csv", "embeddings.parquet"
PROJECTION_NAME, PROJECTION_TABLE_NAME = "projection.npz", "projection.csv"
STUDY_RESULTS_NAME = "results.csv"
#: Optional experiments a store can hold beside its steps: the paper's Table 2 (``tmdafm ablation --store``), its
#: arms in the paper's order (a run folder each).
ABLATION_DIR, ABLATION_NAME = "ablation", "ablation.csv"
ABLATION_MODES = ("fine-tune", "feature-extraction", "scratch")
#: The tasks (a run folder each), the sequential study's arms (a folder each) and the partitions of every table.
TASKS = ("mtc", "mtl")
MODES = ("imagenet", "sequential")
PARTITIONS = ("train", "val", "test")
#: Written when a store is created: ``precompute`` only ever writes into a folder that holds it (or that is empty).
STORE_MARKER = ".tmdafm-store"

#: The precompute steps in the order they run, and the steps each reads.
STEPS = ("dataset", "thumbnails", "descriptors", "pretrain", "mtc", "mtl", "sequential", "latent-mtc", "latent-mtl",
         "latent-sequential")
DEPENDS = {"dataset": (), "thumbnails": ("dataset",), "descriptors": ("dataset",), "pretrain": (),
           "mtc": ("dataset", "pretrain"), "mtl": ("dataset", "pretrain"), "sequential": ("dataset", "pretrain"),
           "latent-mtc": ("mtc", "descriptors"),
           "latent-mtl": ("mtl", "descriptors"), "latent-sequential": ("sequential", "dataset")}

#: The file (or folder) whose presence shows a step's artifact, relative to the store.
STEP_PATHS = {"dataset": f"{DATASET_DIR}/{MANIFEST_NAME}", "thumbnails": f"{THUMBNAILS_DIR}/{ATLAS_NAME}",
              "descriptors": FEATURES_NAME, "pretrain": f"{PRETRAINED_DIR}/{BACKBONE_NAME}",
              "mtc": f"{RUNS_DIR}/mtc", "mtl": f"{RUNS_DIR}/mtl",
              "sequential": f"{SEQUENTIAL_DIR}/{STUDY_RESULTS_NAME}",
              "latent-mtc": f"{LATENT_DIR}/mtc", "latent-mtl": f"{LATENT_DIR}/mtl",
              "latent-sequential": f"{LATENT_DIR}/{SEQUENTIAL_DIR}"}
#: Where each step writes; only files the store recorded there are ever replaced or removed.
STEP_OUTPUTS = {"thumbnails": THUMBNAILS_DIR, "descriptors": FEATURES_NAME, "pretrain": PRETRAINED_DIR,
                "mtc": f"{RUNS_DIR}/mtc", "mtl": f"{RUNS_DIR}/mtl", "sequential": SEQUENTIAL_DIR,
                "latent-mtc": f"{LATENT_DIR}/mtc", "latent-mtl": f"{LATENT_DIR}/mtl",
                "latent-sequential": f"{LATENT_DIR}/{SEQUENTIAL_DIR}"}
ARTIFACT_TITLES = {
    "dataset": "data set (manifest with splits)", "thumbnails": "image thumbnails and hover atlas",
    "descriptors": "physical descriptors", "pretrain": f"{PRETRAINED_TITLE} backbone (profiles that pretrain)",
    "mtc": "MtC run (material classes)", "mtl": "MtL run (element labels)",
    "sequential": "sequential-training study", "latent-mtc": "MtC latent space (PCA/UMAP, tables, predictions)",
    "latent-mtl": "MtL latent space (PCA/UMAP, tables, predictions)",
    "latent-sequential": "sequential latent projections (aligned stage to stage)",
}


@dataclass(frozen=True)
class Artifact:
    """One kind of result in the store: where it lives, whether it is there, and the command that builds it."""

    key: str
    title: str
    path: Path
    present: bool
    command: str


@dataclass(frozen=True)
class StoreLayout:
    """The paths of one store, and what it holds.

    Parameters
    ----------
    root : str or Path
        The store folder (``CACHE``); nothing is created by making a layout.
    """

    root: Path

    def __init__(self, root):
        object.__setattr__(self, "root", Path(root))

    # --- paths --------------------------------------------------------------------------------------------------

    @property
    def record(self) -> Path:
        return self.root / RECORD_NAME

    @property
    def marker(self) -> Path:
        return self.root / STORE_MARKER

    @property
    def dataset(self) -> Path:
        return self.root / DATASET_DIR

    @property
    def manifest(self) -> Path:
        return self.dataset / MANIFEST_NAME

    @property
    def prepared(self) -> Path:
        return self.dataset / PREPARED_NAME

    @property
    def synthetic_images(self) -> Path:
        return self.dataset / SYNTHETIC_IMAGES_DIR

    @property
    def thumbnails(self) -> Path:
        return self.root / THUMBNAILS_DIR

    @property
    def thumbnails_marker(self) -> Path:
        return self.thumbnails / THUMBNAILS_MARKER

    @property
    def atlas(self) -> Path:
        return self.thumbnails / ATLAS_NAME

    @property
    def features(self) -> Path:
        return self.root / FEATURES_NAME

    @property
    def ablation(self) -> Path:
        return self.root / ABLATION_DIR

    @property
    def pretrained(self) -> Path:
        return self.root / PRETRAINED_DIR

    @property
    def backbone(self) -> Path:
        return self.pretrained / BACKBONE_NAME

    @property
    def sequential(self) -> Path:
        return self.root / SEQUENTIAL_DIR

    @property
    def sequential_results(self) -> Path:
        return self.sequential / STUDY_RESULTS_NAME

    @property
    def sequential_latent(self) -> Path:
        return self.root / LATENT_DIR / SEQUENTIAL_DIR

    def run(self, task: str) -> Path:
        """The run directory of the store's ``task`` run ("mtc" or "mtl")."""
        return self.root / RUNS_DIR / task

    def run_metrics(self, task: str) -> Path:
        return self.run(task) / METRICS_NAME

    def latent(self, task: str) -> Path:
        """The latent analysis of the store's ``task`` run."""
        return self.root / LATENT_DIR / task

    def thumbnail(self, image: str) -> Path:
        return self.thumbnails / thumbnail_name(image)

    def step_path(self, step: str) -> Path:
        """The file or folder that shows ``step``'s artifact (:data:`STEP_PATHS`)."""
        return self.root / STEP_PATHS[step]

    # --- what is there ------------------------------------------------------------------------------------------

    def prepared_record(self) -> dict | None:
        """The prepared.json of a data set whose manifest is there and readable, else None (to be rebuilt)."""
        import pyarrow.parquet

        record = read_json(self.prepared)
        if record is None or not {"settings", "fingerprint", "root"} <= set(record):
            return None
        try:  # the footer is enough to tell a whole file from a truncated or foreign one
            pyarrow.parquet.read_metadata(self.manifest)
        except (OSError, pyarrow.ArrowException):
            return None
        return record

    def thumbnails_complete(self) -> bool:
        return bool((read_json(self.thumbnails_marker) or {}).get("complete"))

    def ready(self) -> bool:
        """Whether the store holds a prepared data set and its thumbnails (what the overview page needs)."""
        return self.prepared_record() is not None and self.thumbnails_complete()

    def recorded_profile(self, record: dict | None = None) -> Profile | None:
        """The profile the store's data set was prepared with (from ``record``, its prepared.json, when already
        read), or None when it holds none (or an old record)."""
        record = (read_json(self.prepared) or {}) if record is None else record
        return Profile.from_dict(record["profile"]) if "profile" in record else None

    def recorded_source(self, profile="demo"):
        """(DATA or None, Profile) the store was prepared from; None and ``profile`` when it holds no data set."""
        record = read_json(self.prepared) or {}
        source = record.get("settings", {}).get("source", {})
        recorded = self.recorded_profile(record)
        if recorded is not None and source.get("kind") == "data" and Path(source["path"]).exists():
            return source["path"], recorded
        if recorded is not None and source.get("kind") == "synthetic":
            return None, recorded
        return None, resolve_profile(profile)

    def _source_arguments(self, profile) -> list[str]:
        """``[DATA] --out CACHE --profile ...``: the data and profile the store was prepared from (as recorded,
        even when a damaged manifest is to be rebuilt), else the synthetic demo of ``profile``."""
        record = read_json(self.prepared) or {}
        source = record.get("settings", {}).get("source", {})
        data = [source["path"]] if source.get("kind") == "data" else []
        recorded = self.recorded_profile(record)
        return [*data, "--out", str(self.root), *profile_arguments(recorded or resolve_profile(profile))]

    def build_command(self, step: str | None = None, *, profile="demo") -> str:
        """The ``tmdafm precompute`` command that builds ``step`` (and what it reads) with the store's own data
        and profile (``profile`` for a store not prepared yet); the whole store when ``step`` is None."""
        return _precompute(self._source_arguments(profile), step)

    def contents(self) -> list[Artifact]:
        """The artifacts the app shows, in pipeline order, each present or not with the command that builds it.

        An artifact is present when ``store.json`` records its step as done (the data set and thumbnails also
        count when their own markers say so, as the app prepares those itself).
        """
        records = read_record(self.root)
        prepared = self.prepared_record()
        # A store not prepared yet is filled with the demo, which pretrains.
        recorded = self.recorded_profile(prepared) if prepared is not None else None
        pretrains = (recorded or PROFILES["demo"]).pretrain_images > 0
        source = self._source_arguments("demo")  # read once: every step's command starts the same way
        artifacts = []
        for step in STEPS:
            if step == "pretrain" and not pretrains:
                continue  # this store's profile trains from other weights: nothing to show or build
            present = records.get(step, {}).get("status") == "done"
            if step == "dataset":
                present = prepared is not None
            elif step == "thumbnails":
                present = present or self.thumbnails_complete()
            artifacts.append(Artifact(step, ARTIFACT_TITLES[step], self.step_path(step), present,
                                      _precompute(source, step)))
        return artifacts

    def missing(self, keys) -> list[tuple[str, str]]:
        """``[(what, command that builds it)]`` for the artifacts ``keys`` (:data:`STEPS`).

        Call it for what a page could not read: an artifact is listed whatever its record says, so a half-written
        one is named too. Keys the store does not know fall back to the command that fills the whole store.
        """
        contents = {a.key: a for a in self.contents()}
        found = []
        for key in keys:
            artifact = contents.get(key)
            found.append((f"{artifact.title} ({artifact.path})", artifact.command) if artifact is not None
                         else (key, precompute_command(self.root)))
        return found

    # --- reading ------------------------------------------------------------------------------------------------

    def load_manifest(self) -> pd.DataFrame:
        """The prepared manifest, with ``path`` pointing at the images wherever the store now lives.

        ``attrs`` carry ``root`` (data root), ``source`` (layout), ``skipped`` and ``record`` (the prepared.json).
        Raises FileNotFoundError when the data set has not been prepared.
        """
        record = self.prepared_record()
        if record is None:
            raise FileNotFoundError(f"{self.manifest}: no prepared data set; run the app or "
                                    f"`{precompute_command(self.root)}`")
        try:
            manifest = pd.read_parquet(self.manifest)
        except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
            raise ValueError(f"{self.manifest}: unreadable ({exc}); prepare the data set again (the app or "
                             "`tmdafm precompute` rebuilds it)") from None
        root = self.root / record["root"] if record.get("root_in_store") else Path(record["root"])
        # Relative image paths make the store relocatable: a moved cache still finds its synthetic images.
        manifest["path"] = [str(root / image) for image in manifest["image"]]
        manifest.attrs = {"root": str(root), "source": record.get("layout", ""), "skipped": record.get("skipped", []),
                          "record": record}
        return manifest

    def thumbnail_uri(self, image: str) -> str | None:
        """``data:image/png;base64,...`` of one image's stored thumbnail, or None when it is not in the store."""
        try:
            png = self.thumbnail(image).read_bytes()
        except OSError:
            return None
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _precompute(source: list[str], step: str | None) -> str:
    return shlex.join(["tmdafm", "precompute", *source, *(["--steps", step] if step is not None else [])])


def thumbnail_name(image: str) -> str:
    """File name of an image's thumbnail: a hash of its relative path (stable, any characters allowed)."""
    return hashlib.sha1(image.encode()).hexdigest()[:20] + ".png"


def staging_folder(target) -> Path:
    """The hidden ``.<name>.partial`` folder a step builds ``target`` in before it is swapped in."""
    target = Path(target)
    return target.with_name(f".{target.name}.partial")


def precompute_command(cache_dir) -> str:
    """The command that fills the whole store."""
    return f"tmdafm precompute --out {shlex.quote(str(cache_dir))}"


# Function forms of the readers, for callers that hold a folder rather than a layout.

def load_manifest(cache_dir) -> pd.DataFrame:
    """:meth:`StoreLayout.load_manifest` of the store ``cache_dir``."""
    return StoreLayout(cache_dir).load_manifest()


def thumbnail_uri(cache_dir, image: str) -> str | None:
    """:meth:`StoreLayout.thumbnail_uri` of the store ``cache_dir``."""
    return StoreLayout(cache_dir).thumbnail_uri(image)


def store_contents(cache_dir) -> list[Artifact]:
    """:meth:`StoreLayout.contents` of the store ``cache_dir``."""
    return StoreLayout(cache_dir).contents()


def store_ready(cache_dir) -> bool:
    """:meth:`StoreLayout.ready` of the store ``cache_dir``."""
    return StoreLayout(cache_dir).ready()


def recorded_source(cache_dir, profile="demo"):
    """:meth:`StoreLayout.recorded_source` of the store ``cache_dir``."""
    return StoreLayout(cache_dir).recorded_source(profile)
