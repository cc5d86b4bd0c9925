"""The batch engine: all 14 descriptors for every image of a manifest, in parallel, cached per image."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..progress import as_callback, iterate
from .descriptors import compute_all, default_parameters
from .registry import DESCRIPTORS, FEATURE_COLUMNS


def descriptor_code_version(sources=None) -> str:
    """A digest of the descriptor code: the syntax trees of :mod:`.descriptors` and :mod:`.registry` (or of the
    given source texts) without docstrings, so comments, docstrings and formatting do not count and any change to
    what is computed does."""
    import ast
    import hashlib
    import inspect

    if sources is None:
        from . import descriptors, registry

        sources = [inspect.getsource(module) for module in (descriptors, registry)]
    digest = hashlib.blake2b(digest_size=10)
    for source in sources:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()


#: Part of every cached descriptor value's key: cached values are recomputed whenever the descriptor code changes.
FEATURE_CODE_VERSION = descriptor_code_version()


def _parameters() -> dict:
    return {descriptor.name: default_parameters(descriptor.function) for descriptor in DESCRIPTORS}


def _feature_key(digest: str, pixel_size_nm: float, paper_pixels: bool, view: str = "") -> str:
    from ..store import make_key

    parts = ("features", FEATURE_CODE_VERSION, digest, repr(float(pixel_size_nm)), bool(paper_pixels), _parameters())
    # An instrument file's descriptors depend on how it was levelled and cropped, not only on its bytes.
    return make_key(*parts, view) if view else make_key(*parts)


def _compute_one(task: tuple) -> list[float] | str:
    """Worker: load one image and compute its descriptors (module-level so that processes can pickle it).

    Returns the values, or the reason the image cannot be used (one bad file must not stop a whole table).
    """
    from ..data import load_image

    path, pixel_size_nm, paper_pixels, crop_um = task
    try:
        image, pixel_size_nm = load_image(path, pixel_size_nm=pixel_size_nm, crop_um=crop_um)
        values = compute_all(image, pixel_size_nm, paper_pixels=paper_pixels)
    except (ValueError, OSError) as exc:
        return str(exc).removeprefix(f"{path}: ")
    return [values[name] for name in FEATURE_COLUMNS]


def _pixel_size(value) -> float | None:
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def compute_table(manifest: pd.DataFrame, *, jobs: int | None = None, dask_address: str | None = None,
                  cache=None, progress: bool = True, paper_pixels: bool = False, strict: bool = False) -> pd.DataFrame:
    """Physical descriptors of every image in a manifest.

    Each image is looked up in the store by its file content, pixel size, the descriptors' parameters and
    :data:`FEATURE_CODE_VERSION`; only missing ones are computed, in parallel, and each is stored as soon as it is
    done, so an interrupted run resumes where it stopped.

    Parameters
    ----------
    manifest : DataFrame
        Tidy manifest (:func:`tmdafm_core.data.read_dataset`): ``image``, ``path`` and, optionally,
        ``pixel_size_nm`` (NaN or absent: from the file, else 1 µm across the image).
    jobs : int, optional
        Local worker processes (default: all cores).
    dask_address : str, optional
        Run on this Dask scheduler instead (workers must see the image paths).
    cache : str, Path, Store, False or None
        Store folder or open :class:`~tmdafm_core.store.Store`; None: the default (``./cache`` or
        ``$TMDAFM_CACHE``); False: no caching.
    progress : bool or callable
        tqdm bar on stderr (True) or ``progress(message, done, total)`` (:mod:`tmdafm_core.progress`).
    paper_pixels : bool
        The paper's pixel-based numbers (see :mod:`tmdafm_core.features.descriptors`).
    strict : bool
        Raise on the first image that cannot be read or measured, instead of leaving it out.

    Returns
    -------
    DataFrame
        ``image`` then the 14 :data:`FEATURE_COLUMNS` (float), one row per usable manifest row, in manifest order;
        ``sample_id``, ``material`` and ``split`` follow when the manifest has them. ``attrs["skipped"]`` lists
        ``(path, reason)`` of the images left out.

    Examples
    --------
    >>> import tempfile
    >>> from tmdafm_core.data import read_dataset
    >>> from tmdafm_core.data.synthetic import write_synthetic_dataset
    >>> scratch = tempfile.TemporaryDirectory()
    >>> folder = scratch.name
    >>> _ = write_synthetic_dataset(folder, n=10, size=32, seed=0)
    >>> table = compute_table(read_dataset(folder), jobs=1, progress=False, cache=False)
    >>> len(table), list(table.columns[:3])
    (10, ['image', 'rms_roughness', 'local_variation'])
    >>> scratch.cleanup()
    """
    from ..parallel import imap_items
    from ..store import Store, file_digest, open_store

    missing = [c for c in ("image", "path") if c not in manifest.columns]
    if missing:
        raise ValueError(f"manifest lacks column(s) {missing}; build it with tmdafm_core.data.read_dataset")
    from ..data.images import scan_crops
    from ..data.scans import is_raw_scan, view_key

    paths = [str(p) for p in manifest["path"]]
    sizes = ([_pixel_size(v) for v in manifest["pixel_size_nm"]] if "pixel_size_nm" in manifest.columns
             else [None] * len(paths))
    crops = scan_crops(manifest)
    values = np.full((len(paths), len(FEATURE_COLUMNS)), np.nan)
    failed: dict[int, str] = {}

    def fail(row: int, reason: str) -> None:
        if strict:
            raise ValueError(f"{paths[row]}: {reason} (remove --strict to skip such files)")
        failed[row] = reason

    store = None if cache is False else cache if isinstance(cache, Store) else open_store(cache)
    try:
        keys: list[str | None] = [None] * len(paths)
        todo = []
        if store is not None:
            for row, (path, size) in enumerate(zip(paths, sizes, strict=True)):
                # The key needs the pixel size actually used; files without one default to 1 µm across.
                try:
                    digest = file_digest(path)
                except OSError as exc:
                    fail(row, f"not readable ({exc.strerror or exc})")
                    continue
                view = view_key(crops[row]) if is_raw_scan(path) else ""
                keys[row] = _feature_key(digest, size if size is not None else math.nan, paper_pixels, view)
            found = store.get_many([k for k in keys if k is not None])
            for row, key in enumerate(keys):
                if key is None:
                    continue
                if key in found:
                    values[row] = found[key]
                else:
                    todo.append(row)
        else:
            todo = list(range(len(paths)))

        stream = imap_items(_compute_one, [(paths[r], sizes[r], paper_pixels, crops[r]) for r in todo], jobs=jobs,
                            dask_address=dask_address)
        if todo:
            stream = iterate(stream, as_callback(progress, unit="img"), "descriptors", total=len(todo),
                             start=len(paths) - len(todo))
        for index, result in stream:
            row = todo[index]
            if isinstance(result, str):
                fail(row, result)
                continue
            values[row] = result
            if store is not None:
                store.put(keys[row], result)
    finally:
        if store is not None and store is not cache:
            store.close()

    table = pd.DataFrame(values, columns=list(FEATURE_COLUMNS))
    table.insert(0, "image", manifest["image"].astype(str).to_numpy())
    for column in ("sample_id", "material", "split"):
        if column in manifest.columns:
            table[column] = manifest[column].to_numpy()
    if failed:
        table = table.drop(index=sorted(failed)).reset_index(drop=True)
    table.attrs["skipped"] = [(paths[row], reason) for row, reason in sorted(failed.items())]
    return table


def scale_to_unit_max(table: pd.DataFrame, columns=FEATURE_COLUMNS) -> pd.DataFrame:
    """The paper's scaling: each feature column divided by its maximum absolute value (0..1 for non-negative ones).

    Returns a copy; columns that are all zero stay zero. Other columns are left as they are.
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {missing}")
    scaled = table.copy()
    scaled[list(columns)] = max_scale(scaled[list(columns)].astype(float))
    return scaled


def max_scale(descriptors: pd.DataFrame) -> pd.DataFrame:
    """Scale each descriptor column by its maximum absolute value (the paper's 0..1 scaling for non-negative ones).

    Dividing by max |x| instead of max x keeps the sign of every value, so a descriptor that can be negative (GLCM
    correlation) is not flipped. An all-zero column stays zero; missing values are skipped. Pearson R does not
    depend on this scaling; the uncentred cosine similarity and regression coefficients do.

    Examples
    --------
    >>> max_scale(pd.DataFrame({"a": [1.0, -4.0], "b": [0.0, 0.0]}))
          a    b
    0  0.25  0.0
    1 -1.00  0.0
    """
    peak = descriptors.abs().max(axis=0).replace(0.0, 1.0)
    return descriptors / peak
