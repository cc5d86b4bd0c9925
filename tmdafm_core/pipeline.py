"""Precompute: the steps that fill the artifact store the app reads, each resumable and skipped when done.

Store layout (``cache_dir``, default ``./cache``)::

    dataset/manifest.parquet   the tidy manifest with ``split`` and ``fold`` (written last, atomically)
    dataset/prepared.json      what the manifest was built from: profile settings, source and its fingerprint
    dataset/images/            the synthetic demo images (only when no DATA was given)
    thumbnails/                one small AFM-coloured PNG per image, for pages and hover previews
    features.csv, runs/mtc/, runs/mtl/, latent/, sequential/   written by the later steps

Only the data-set and thumbnail steps live here so far; :func:`store_contents` lists the later artifacts and the
``tmdafm`` command that builds each missing one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import IMAGE_SUFFIXES, LabelSpace, load_image, read_dataset, split_dataset

DATASET_DIR = "dataset"
MANIFEST_NAME = "manifest.parquet"
PREPARED_NAME = "prepared.json"
SYNTHETIC_IMAGES_DIR = "images"
THUMBNAILS_DIR = "thumbnails"
THUMBNAIL_PX = 96
_FORMAT_VERSION = 1  # bump when the prepared manifest's meaning changes, so old stores are rebuilt


@dataclass(frozen=True)
class Profile:
    """Settings of one precompute profile.

    ``n`` and ``size`` say which synthetic data set is generated when no DATA is given (images, pixels per 1 µm
    side); ``arch`` and ``weights`` are the models the training steps fit; the split settings apply to any data.
    """

    name: str
    n: int = 1026
    size: int = 128
    seed: int = 0
    n_folds: int = 5
    test_fraction: float = 0.1
    arch: str = "resnet18"
    weights: str = "none"
    device: str = "cpu"


#: ``demo`` runs on a 2-core laptop and trains from scratch (no download); ``paper`` is the study's setting, for a
#: GPU and ImageNet weights in the torchvision cache.
PROFILES = {
    "demo": Profile("demo"),
    "paper": Profile("paper", size=256, arch="resnet152", weights="imagenet-v2", device="cuda"),
}


def _resolve_profile(profile) -> Profile:
    if isinstance(profile, Profile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


# --- small store helpers ----------------------------------------------------------------------------------------

def _write_atomic(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` then rename, so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, payload: dict) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=1, sort_keys=True)))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive(cache_dir: Path, name: str):
    """Hold an inter-process lock (released by the OS if the holder dies) so two writers never interleave."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: single-writer use only
        yield
        return
    with open(cache_dir / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _report(progress, step: str, done: int, total: int) -> None:
    if callable(progress):
        progress(step, done, total)


def _tqdm(items, progress, desc: str):
    if progress is True:
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="img")
    return items


# --- step 1: data set -------------------------------------------------------------------------------------------

def _dataset_settings(profile: Profile, data, cache_dir: Path) -> dict:
    settings = {"format": _FORMAT_VERSION, "n_folds": profile.n_folds, "test_fraction": profile.test_fraction,
                "seed": profile.seed}
    if data is None:
        settings["source"] = {"kind": "synthetic", "n": profile.n, "size": profile.size, "seed": profile.seed}
    else:
        settings["source"] = {"kind": "data", "path": str(Path(data).resolve())}
    return settings


def _data_root(settings: dict, cache_dir: Path) -> Path:
    if settings["source"]["kind"] == "synthetic":
        return cache_dir / DATASET_DIR / SYNTHETIC_IMAGES_DIR
    return Path(settings["source"]["path"])


def _prepared_record(cache_dir: Path) -> dict | None:
    """The prepared.json of a data set whose manifest is there and readable, else None (to be rebuilt)."""
    import pyarrow.parquet

    record = _read_json(cache_dir / DATASET_DIR / PREPARED_NAME)
    if record is None or not {"settings", "fingerprint", "root"} <= set(record):
        return None
    try:  # the footer is enough to tell a whole file from a truncated or foreign one
        pyarrow.parquet.read_metadata(cache_dir / DATASET_DIR / MANIFEST_NAME)
    except (OSError, pyarrow.ArrowException):
        return None
    return record


def _generate_synthetic(images_dir: Path, profile: Profile, progress) -> None:
    from .data.synthetic import write_synthetic_dataset

    if images_dir.exists():
        shutil.rmtree(images_dir)  # a half-written earlier attempt; start clean so the count below is honest
    if not callable(progress):
        write_synthetic_dataset(images_dir, n=profile.n, size=profile.size, seed=profile.seed,
                                progress=progress is True)
        return
    # The generator reports progress only as a tqdm bar; the files it has written are an exact count instead.
    finished = threading.Event()

    def watch():
        while not finished.wait(0.25):
            written = sum(1 for _ in images_dir.glob("*.tif")) if images_dir.is_dir() else 0
            _report(progress, "generating synthetic images", min(written, profile.n), profile.n)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        write_synthetic_dataset(images_dir, n=profile.n, size=profile.size, seed=profile.seed)
    finally:
        finished.set()
        watcher.join()
    _report(progress, "generating synthetic images", profile.n, profile.n)


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
        ``True`` shows tqdm bars on stderr; a callable receives ``(step, done, total)``.

    Returns
    -------
    manifest : DataFrame
        The tidy manifest with ``split`` ("train"/"test") and ``fold`` (validation fold of train rows, -1 for test),
        as :func:`load_manifest` returns it.
    """
    profile = _resolve_profile(profile)
    cache_dir = Path(cache_dir)
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"{data}: no such file or folder; give a data set folder or manifest CSV")
    settings = _dataset_settings(profile, data, cache_dir)
    dataset_dir = cache_dir / DATASET_DIR
    with _exclusive(cache_dir, "dataset"):
        record = _prepared_record(cache_dir)
        if record is not None and record.get("settings") == settings:
            root = _data_root(settings, cache_dir)
            if root.exists() and _fingerprint(root, exclude=cache_dir.resolve()) == record.get("fingerprint"):
                with contextlib.suppress(ValueError):  # an unreadable manifest is rebuilt below
                    manifest = load_manifest(cache_dir)
                    _report(progress, "data set ready (from the store)", 1, 1)
                    return manifest
        (dataset_dir / PREPARED_NAME).unlink(missing_ok=True)  # from here on the store holds no valid data set
        root = _data_root(settings, cache_dir)
        if data is None:
            _generate_synthetic(root, profile, progress)
        _report(progress, "reading the data set", 0, 1)
        manifest = read_dataset(root if data is None else data)
        skipped = [list(map(str, item)) for item in manifest.attrs.get("skipped", [])]
        layout = manifest.attrs.get("source", "")
        labelled = manifest["material"].notna()
        if not labelled.any():
            raise ValueError(f"{data}: no material labels; the store needs a labelled data set (TMD-AFM TIFF "
                             "folder, class folders or a manifest CSV with a material column)")
        manifest = split_dataset(manifest[labelled].reset_index(drop=True), n_folds=profile.n_folds,
                                 test_fraction=profile.test_fraction, seed=profile.seed)
        _report(progress, "reading the data set", 1, 1)
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


def load_manifest(cache_dir) -> pd.DataFrame:
    """The prepared manifest of the store, with ``path`` pointing at the images wherever the store now lives.

    ``attrs`` carry ``root`` (data root), ``source`` (layout), ``skipped`` and ``record`` (the prepared.json).
    Raises FileNotFoundError when the data set has not been prepared.
    """
    cache_dir = Path(cache_dir)
    record = _prepared_record(cache_dir)
    if record is None:
        raise FileNotFoundError(f"{cache_dir / DATASET_DIR / MANIFEST_NAME}: no prepared data set; run the app or "
                                f"`tmdafm precompute --out {shlex.quote(str(cache_dir))}`")
    try:
        manifest = pd.read_parquet(cache_dir / DATASET_DIR / MANIFEST_NAME)
    except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
        raise ValueError(f"{cache_dir / DATASET_DIR / MANIFEST_NAME}: unreadable ({exc}); prepare the data set "
                         "again (the app or `tmdafm precompute` rebuilds it)") from None
    root = cache_dir / record["root"] if record.get("root_in_store") else Path(record["root"])
    # Relative image paths make the store relocatable: a moved cache still finds its synthetic images.
    manifest["path"] = [str(root / image) for image in manifest["image"]]
    manifest.attrs = {"root": str(root), "source": record.get("layout", ""), "skipped": record.get("skipped", []),
                      "record": record}
    return manifest


# --- step 2: thumbnails -----------------------------------------------------------------------------------------

def thumbnail_name(image: str) -> str:
    """File name of an image's thumbnail: a hash of its relative path (stable, any characters allowed)."""
    return hashlib.sha1(image.encode()).hexdigest()[:20] + ".png"


def render_thumbnail(path, *, size: int = THUMBNAIL_PX) -> bytes:
    """PNG bytes of an image as the models see it (scaled 0..1) in the AFM gold colour scale, ``size`` px wide."""
    from io import BytesIO

    from PIL import Image

    from .data.synthetic import _afm_colours

    image, _ = load_image(path)
    rgb = Image.fromarray(_afm_colours(image))
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
    cache_dir = Path(cache_dir)
    manifest = load_manifest(cache_dir)
    folder = cache_dir / THUMBNAILS_DIR
    key = {"dataset": manifest.attrs["record"]["fingerprint"], "size": int(size), "format": _FORMAT_VERSION}
    with _exclusive(cache_dir, "thumbnails"):
        marker = _read_json(folder / "thumbnails.json")
        if marker is None or marker.get("key") != key:
            if folder.exists():
                shutil.rmtree(folder)
            _write_json(folder / "thumbnails.json", {"key": key, "complete": False})
        elif marker.get("complete"):
            _report(progress, "thumbnails ready (from the store)", 1, 1)
            return folder
        todo = [(image, path) for image, path in zip(manifest["image"], manifest["path"], strict=True)
                if not (folder / thumbnail_name(image)).is_file()]
        done = len(manifest) - len(todo)
        for image, path in _tqdm(todo, progress, "thumbnails"):
            png = render_thumbnail(path, size=size)
            _write_atomic(folder / thumbnail_name(image), lambda tmp, png=png: tmp.write_bytes(png))
            done += 1
            if done % 25 == 0 or done == len(manifest):
                _report(progress, "making thumbnails", done, len(manifest))
        _write_json(folder / "thumbnails.json", {"key": key, "complete": True})
    return folder


def thumbnail_uri(cache_dir, image: str) -> str | None:
    """``data:image/png;base64,...`` of one image's stored thumbnail, or None when it is not in the store."""
    try:
        png = (Path(cache_dir) / THUMBNAILS_DIR / thumbnail_name(image)).read_bytes()
    except OSError:
        return None
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def example_thumbnails(cache_dir, *, per_material: int = 6) -> dict[str, list[dict]]:
    """Up to ``per_material`` thumbnails per material, one per sample where possible, spread over the samples.

    Returns ``{material: [{"image", "sample_id", "split", "uri"}, ...]}`` in class (MtC) order; images whose
    thumbnail is missing are left out.
    """
    manifest = load_manifest(cache_dir)
    space = LabelSpace.from_materials(manifest["material"])
    examples = {}
    for material in space.classes:
        rows = manifest[manifest["material"] == material]
        picks = rows.drop_duplicates("sample_id")
        if len(picks) < per_material:
            picks = pd.concat([picks, rows.drop(picks.index)])
        picks = picks.iloc[np.unique(np.linspace(0, len(picks) - 1, min(per_material, len(picks))).round()
                                     .astype(int))]
        examples[material] = [
            {"image": row.image, "sample_id": row.sample_id, "split": row.split, "uri": uri}
            for row in picks.itertuples() if (uri := thumbnail_uri(cache_dir, row.image)) is not None
        ]
    return examples


# --- what the app can build by itself ---------------------------------------------------------------------------

def store_ready(cache_dir) -> bool:
    """Whether the store holds a prepared data set and its thumbnails (what the overview page needs)."""
    cache_dir = Path(cache_dir)
    thumbs = _read_json(cache_dir / THUMBNAILS_DIR / "thumbnails.json") or {}
    return _prepared_record(cache_dir) is not None and bool(thumbs.get("complete"))


def complete_store(cache_dir, *, profile="demo", progress=None) -> None:
    """Build what the app needs and can make by itself, then the thumbnails.

    A store that was prepared before is brought up to date with the source and profile it was built from (a data
    set from DATA stays that data set); a store with no (or an unreadable) data set gets the synthetic demo of
    ``profile``.
    """
    cache_dir = Path(cache_dir)
    record = _read_json(cache_dir / DATASET_DIR / PREPARED_NAME) or {}
    source = record.get("settings", {}).get("source", {})
    if "profile" in record and source.get("kind") == "data" and Path(source["path"]).exists():
        prepare_dataset(cache_dir, source["path"], profile=Profile(**record["profile"]), progress=progress)
    elif "profile" in record and source.get("kind") == "synthetic":
        prepare_dataset(cache_dir, profile=Profile(**record["profile"]), progress=progress)
    else:
        prepare_dataset(cache_dir, profile=profile, progress=progress)
    prepare_thumbnails(cache_dir, progress=progress)


# --- what the store holds ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Artifact:
    """One kind of result in the store: where it lives, whether it is there, and the command that builds it."""

    key: str
    title: str
    path: Path
    present: bool
    command: str


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_file() for p in folder.iterdir())


def store_contents(cache_dir) -> list[Artifact]:
    """The artifacts the app shows, in pipeline order, each present or not with the command that builds it."""
    cache_dir = Path(cache_dir)
    q = lambda p: shlex.quote(str(p))
    record = _prepared_record(cache_dir)
    profile = Profile(**record["profile"]) if record and "profile" in record else PROFILES["demo"]
    if record is not None:
        data = cache_dir / record["root"] if record.get("root_in_store") else Path(record["root"])
        data_arg = q(data) if record["settings"]["source"]["kind"] == "synthetic" \
            else q(record["settings"]["source"]["path"])
    else:
        data_arg = "DATA"
    thumbs = _read_json(cache_dir / THUMBNAILS_DIR / "thumbnails.json") or {}
    model = f"--arch {profile.arch} --weights {profile.weights} --device {profile.device}"
    split = f"--folds {profile.n_folds} --test-fraction {profile.test_fraction} --seed {profile.seed}"
    runs = cache_dir / "runs"
    return [
        Artifact("dataset", "data set (manifest with splits)", cache_dir / DATASET_DIR / MANIFEST_NAME,
                 record is not None, f"tmdafm precompute --out {q(cache_dir)}"),
        Artifact("thumbnails", "image thumbnails", cache_dir / THUMBNAILS_DIR, bool(thumbs.get("complete")),
                 f"tmdafm precompute --out {q(cache_dir)}"),
        Artifact("descriptors", "physical descriptors", cache_dir / "features.csv",
                 (cache_dir / "features.csv").is_file(),
                 f"tmdafm features {data_arg} --out {q(cache_dir / 'features.csv')}"),
        Artifact("mtc", "MtC run (material classes)", runs / "mtc" / "metrics.json",
                 (runs / "mtc" / "metrics.json").is_file(),
                 f"tmdafm train {data_arg} --out {q(runs / 'mtc')} --task mtc {model} {split}"),
        Artifact("mtl", "MtL run (element labels)", runs / "mtl" / "metrics.json",
                 (runs / "mtl" / "metrics.json").is_file(),
                 f"tmdafm train {data_arg} --out {q(runs / 'mtl')} --task mtl {model} {split}"),
        Artifact("latent", "latent space (embeddings, PCA/UMAP, tables)", cache_dir / "latent",
                 _has_files(cache_dir / "latent"),
                 f"tmdafm latent {q(runs / 'mtc')} {data_arg} --out {q(cache_dir / 'latent')} "
                 f"--features {q(cache_dir / 'features.csv')} --method umap"),
        Artifact("sequential", "sequential-training study", cache_dir / "sequential" / "results.csv",
                 (cache_dir / "sequential" / "results.csv").is_file(),
                 f"tmdafm sequential {data_arg} --out {q(cache_dir / 'sequential')} --task both "
                 + (f"--profile {profile.name}" if profile.name in ("demo", "paper") else model)),
    ]


# --- overview ---------------------------------------------------------------------------------------------------

def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per material × partition, the paper's Table 1, from a manifest with ``split`` and ``fold``.

    Rows are the classes in MtC order plus ``total``. Columns: ``train_pool`` (all non-test images),
    ``train_mean``/``val_mean`` (images per fold, averaged over the folds), ``val_fold_<k>`` (validation images of
    fold k), ``test``, ``images``, and ``samples``, ``samples_train``, ``samples_test``.
    """
    space = LabelSpace.from_materials(manifest["material"])
    folds = manifest["fold"].to_numpy()
    n_folds = int(folds.max()) + 1 if (folds >= 0).any() else 0
    is_test = manifest["split"].astype(str).to_numpy() == "test"

    def counts(rows: pd.DataFrame, test: np.ndarray) -> dict:
        fold = rows["fold"].to_numpy()
        pool = int((~test).sum())
        val = [int((fold == k).sum()) for k in range(n_folds)]
        row = {"train_pool": pool,
               "train_mean": pool - float(np.mean(val)) if val else float(pool),
               "val_mean": float(np.mean(val)) if val else 0.0}
        row.update({f"val_fold_{k}": v for k, v in enumerate(val)})
        row.update({"test": int(test.sum()), "images": len(rows),
                    "samples": rows["sample_id"].nunique(),
                    "samples_train": rows.loc[~test, "sample_id"].nunique(),
                    "samples_test": rows.loc[test, "sample_id"].nunique()})
        return row

    table = {material: counts(manifest[mask], is_test[mask])
             for material in space.classes if (mask := (manifest["material"] == material).to_numpy()).any()}
    table["total"] = counts(manifest, is_test)
    return pd.DataFrame.from_dict(table, orient="index")


def dataset_overview(cache_dir) -> dict:
    """Everything the overview page shows, from the store alone (no image is read).

    Returns a dict with ``prepared`` (bool) and ``artifacts`` (:func:`store_contents`); when prepared also
    ``synthetic`` (bool), ``root``, ``layout``, ``profile``, ``n_images``, ``n_samples``, ``n_folds``, ``table``
    (:func:`split_table`), ``classes``, ``elements``, ``element_matrix`` (classes × elements, 0/1),
    ``image_sizes`` (list of ``(height, width, count)``, most common first), ``pixel_size_nm`` (min, median, max),
    ``scan_size_nm`` (median width × pixel size), ``skipped`` (list of (file, reason)).
    """
    cache_dir = Path(cache_dir)
    overview = {"prepared": False, "cache": str(cache_dir.resolve()), "artifacts": store_contents(cache_dir)}
    try:
        manifest = load_manifest(cache_dir)
    except FileNotFoundError:
        return overview
    record = manifest.attrs["record"]
    space = LabelSpace.from_materials(manifest["material"])
    sizes = manifest.groupby(["height", "width"]).size().sort_values(ascending=False)
    pixel = manifest["pixel_size_nm"].astype(float)
    overview.update({
        "prepared": True,
        "synthetic": record["settings"]["source"]["kind"] == "synthetic",
        "root": manifest.attrs["root"],
        "layout": manifest.attrs["source"],
        "profile": record.get("profile", {}),
        "n_images": len(manifest),
        "n_samples": int(manifest["sample_id"].nunique()),
        "n_folds": int(manifest["fold"].max()) + 1,
        "table": split_table(manifest),
        "classes": list(space.classes),
        "elements": list(space.elements),
        "element_matrix": space.element_matrix.astype(int),
        "image_sizes": [(int(h), int(w), int(n)) for (h, w), n in sizes.items()],
        "pixel_size_nm": (float(pixel.min()), float(pixel.median()), float(pixel.max())),
        "scan_size_nm": float((pixel * manifest["width"]).median()),
        "skipped": record.get("skipped", []),
    })
    return overview
