"""The prepared data set of a store (the ``dataset`` step): read DATA or generate the synthetic demo, split it by
sample into test and folds, and record it (``dataset/manifest.parquet``, ``prepared.json``); a store folder is
claimed before anything is written into it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .data import IMAGE_SUFFIXES, read_dataset, split_dataset
from .layout import (
    DATASET_DIR,
    MANIFEST_NAME,
    PREPARED_NAME,
    STORE_MARKER,
    SYNTHETIC_IMAGES_DIR,
    StoreLayout,
    load_manifest,
)
from .profiles import (
    Profile,
    resolve_profile,
)
from .progress import as_callback, report
from .store import (
    exclusive,
    is_memo_folder,
    write_atomic,
    write_json,
)

_FORMAT_VERSION = 1  # bump when the prepared manifest's meaning changes, so old stores are rebuilt


# --- small store helpers ----------------------------------------------------------------------------------------


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
    with exclusive(cache_dir, "dataset"):
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
        write_atomic(dataset_dir / MANIFEST_NAME, lambda tmp: manifest.to_parquet(tmp, index=False))
        root_in_store = root.resolve().is_relative_to(cache_dir.resolve())
        write_json(dataset_dir / PREPARED_NAME, {
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


def claim_store(cache_dir) -> Path:
    """Make ``cache_dir`` a store, or check that it is one; refuse a non-empty folder that is not a store.

    A store is recognised by :data:`STORE_MARKER` (or, made by an earlier version, by its ``store.json``).
    """
    cache_dir = Path(cache_dir)
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(f"{cache_dir}: exists and is not a folder; give a folder for the store")
    marker = cache_dir / STORE_MARKER
    if not marker.is_file():
        # Hidden entries are the app's build status and locks, which may come first; so may the per-image memo.
        visible = cache_dir.is_dir() and any(not p.name.startswith(".") and not is_memo_folder(p)
                                             for p in cache_dir.iterdir())
        if visible and not (cache_dir / "store.json").is_file():
            raise ValueError(f"{cache_dir}: not empty and not a tmdafm store (no {STORE_MARKER}); give a new or "
                             "empty folder (or an existing store) so that none of your files is replaced")
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json(marker, {"tmdafm_store": 1})
    return cache_dir
