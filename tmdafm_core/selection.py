"""The latent view's points and the one selection shared by the app's pages (no Dash here).

A *selection* is a plain dict that every page reads and writes the same way (:func:`make_selection`)::

    {"images": ["MoS2_x_s01_000.tif", ...], "source": "lasso in the latent view (MtC, PCA)"}

``images`` are the store's image ids (the manifest's ``image`` column, paths relative to the data root). A lasso in
the latent view, a confusion-matrix cell or a percentile gallery all set it; it drives the gallery, the descriptor
summary and the export.

:func:`load_points` joins what the store holds about each image (manifest, latent projection, predictions,
physical descriptors) into one table, the data of the latent scatter; :func:`gallery` and
:func:`descriptor_summary` describe a set of images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .data import LabelSpace, parse_elements
from .features import FEATURE_COLUMNS, get_descriptor
from .layout import MODES as SEQUENTIAL_MODES
from .layout import PROJECTION_TABLE_NAME, TASKS, StoreLayout, load_manifest, precompute_command

TASK_TITLES = {"mtc": "MtC (material classes)", "mtl": "MtL (element labels)"}
MODE_TITLES = {"imagenet": "ImageNet", "sequential": "Sequential"}
#: At most this many images are listed in a selection (a lasso over 100k points stays a small message).
MAX_SELECTION = 20000


# --- the shared selection ---------------------------------------------------------------------------------------

def make_selection(images, source: str) -> dict:
    """The shared-selection document for ``images`` (ids, order kept, duplicates dropped) set by ``source``."""
    if not isinstance(source, str) or not source:
        raise ValueError("selection source must be a non-empty string saying where the selection came from")
    ids = list(dict.fromkeys(str(image) for image in images))
    if len(ids) > MAX_SELECTION:
        raise ValueError(f"selection of {len(ids)} images exceeds {MAX_SELECTION}; select fewer points")
    return {"images": ids, "source": source}


def selected_images(selection) -> list[str]:
    """The image ids of a selection document (empty for None or a malformed document)."""
    if not isinstance(selection, dict) or not isinstance(selection.get("images"), list):
        return []
    return [str(image) for image in selection["images"]]


# --- what the store holds for the latent view -------------------------------------------------------------------

@dataclass(frozen=True)
class LatentModel:
    """One model whose latent projection the store holds: a task's run, or one stage of the sequential study."""

    key: str  # "mtc", "mtl" or "seq/<task>/<mode>/<n>"
    title: str
    folder: Path
    task: str
    mode: str | None = None
    n_classes: int | None = None


def _stage_classes(folder: Path) -> int | None:
    name = folder.name
    return int(name[:-3]) if name.endswith("cls") and name[:-3].isdigit() else None


def latent_models(cache_dir) -> list[LatentModel]:
    """Models with a projection in the store: MtC/MtL runs first, then the sequential stages by task, mode, size."""
    from .results import mode_titles

    layout = StoreLayout(cache_dir)
    titles = mode_titles(cache_dir)
    models = [LatentModel(task, TASK_TITLES[task], layout.latent(task), task) for task in TASKS
              if (layout.latent(task) / PROJECTION_TABLE_NAME).is_file()]
    for task in TASKS:
        for mode in SEQUENTIAL_MODES:
            base = layout.sequential_latent / task / mode
            stages = sorted((n, folder) for folder in (base.iterdir() if base.is_dir() else [])
                            if (n := _stage_classes(folder)) is not None and (folder / PROJECTION_TABLE_NAME).is_file())
            models += [LatentModel(f"seq/{task}/{mode}/{n}", f"{titles[mode]} · {task.upper()} · {n} classes",
                                   folder, task, mode, n) for n, folder in stages]
    return models


def find_model(cache_dir, key: str) -> LatentModel:
    for model in latent_models(cache_dir):
        if model.key == key:
            return model
    raise FileNotFoundError(f"{StoreLayout(cache_dir).latent(key)}: no latent projection for model {key!r}; "
                            f"build it with `{precompute_command(cache_dir)}`")


def stage_models(cache_dir, task: str, mode: str) -> list[LatentModel]:
    """The sequential stages of one task and mode, fewest classes first."""
    return [m for m in latent_models(cache_dir) if m.mode == mode and m.task == task]


def stage_panels(cache_dir, task: str, mode: str):
    """Per-stage latent panels of one task and mode (paper Figure 5) and their data, or ``(None, None)`` when the
    store has no stage projections."""
    from .figures import stage_panels_figure

    models = stage_models(cache_dir, task, mode)
    if not models:
        return None, None
    stages = [(f"{model.n_classes} classes", load_points(cache_dir, model.key)) for model in models]
    x, y = _plotted_axes(stages[0][1])
    figure = stage_panels_figure(stages, x=x, y=y)
    data = pd.concat([p[["image", "material", x, y]].assign(stage=t) for t, p in stages], ignore_index=True)
    return figure, data


def stage_structure(cache_dir, task: str) -> pd.DataFrame | None:
    """Class separation and centroid shifts of every stored sequential stage of ``task``
    (:func:`tmdafm_core.embeddings.stage_structure` on the plotted axes), one row per mode and stage, or None."""
    from .embeddings import stage_structure

    tables = []
    for mode in SEQUENTIAL_MODES:
        models = stage_models(cache_dir, task, mode)
        if not models:
            continue
        stages = [(model.n_classes, load_points(cache_dir, model.key)) for model in models]
        x, y = _plotted_axes(stages[0][1])
        tables.append(stage_structure(stages, x=x, y=y).assign(task=task, mode=mode))
    if not tables:
        return None
    table = pd.concat(tables, ignore_index=True)
    return table[["task", "mode", "n_classes", "silhouette", "centroid_shift"]]


def _plotted_axes(points: pd.DataFrame) -> tuple[str, str]:
    coords = points.attrs["coords"]
    return tuple(coords["pca"][:2]) if len(coords.get("pca", [])) >= 2 else tuple(coords.get("umap2", [None, None]))


def coordinate_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Projection columns by kind: ``{"pca": [PC1..], "umap2": [UMAP1, UMAP2], "umap3": [UMAP3D_1..3]}``."""
    pcs = sorted((c for c in frame.columns if c.startswith("PC") and c[2:].isdigit()), key=lambda c: int(c[2:]))
    kinds = {"pca": pcs}
    if {"UMAP1", "UMAP2"} <= set(frame.columns):
        kinds["umap2"] = ["UMAP1", "UMAP2"]
    if {"UMAP3D_1", "UMAP3D_2", "UMAP3D_3"} <= set(frame.columns):
        kinds["umap3"] = ["UMAP3D_1", "UMAP3D_2", "UMAP3D_3"]
    return {k: v for k, v in kinds.items() if v}


def read_features(cache_dir) -> pd.DataFrame | None:
    """The store's descriptor table (``image`` + the descriptors it has, in registry order), or None."""
    path = StoreLayout(cache_dir).features
    if not path.is_file():
        return None
    table = pd.read_csv(path, dtype={"image": str})
    return table[["image"] + [c for c in FEATURE_COLUMNS if c in table.columns]]


_PREDICTION_COLUMNS = ("predicted", "correct", "novelty", "unfamiliar")


def load_points(cache_dir, model: str = "mtc") -> pd.DataFrame:
    """Everything the latent scatter shows, one row per projected image.

    Parameters
    ----------
    cache_dir : str or Path
        Artifact store.
    model : str
        A :attr:`LatentModel.key` (``"mtc"``, ``"mtl"`` or ``"seq/<task>/<mode>/<n>"``).

    Returns
    -------
    DataFrame
        ``image``, ``sample_id``, ``material``, ``split``, ``predicted``, ``correct``, ``novelty`` and
        ``unfamiliar`` ("familiar"/"unfamiliar"; NA without ``predictions.csv`` or from a store built before
        novelty was kept), one 0/1 column ``has_<element>`` per element, the projection's coordinate columns,
        then the descriptors of ``features.csv`` that the store has. ``attrs``: ``coords``
        (:func:`coordinate_columns`), ``explained`` ({PC: variance ratio}), ``classes``, ``elements``,
        ``descriptors`` (names present), ``notes`` (what is missing, one line each).
    """
    cache_dir = Path(cache_dir)
    chosen = find_model(cache_dir, model)
    path = chosen.folder / "projection.csv"
    rebuild = f"rebuild it with `{precompute_command(cache_dir)}`"
    try:
        projection = pd.read_csv(path, dtype={"image": str, "sample_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: damaged ({type(exc).__name__}); {rebuild}") from None
    if "image" not in projection or not any(coordinate_columns(projection).values()) or projection.empty:
        raise ValueError(f"{path}: damaged (no images or no coordinate columns); {rebuild}")
    notes = []
    try:
        manifest = load_manifest(cache_dir)[["image", "material", "split", "sample_id"]]
    except FileNotFoundError:
        manifest = None
        notes.append("no prepared data set: materials and splits come from the projection table")
    points = projection.drop(columns=[c for c in ("label", "material", "split") if c in projection])
    if manifest is not None:
        points = points.drop(columns=["sample_id"], errors="ignore").merge(manifest, on="image", how="left")
    else:
        points["material"] = projection.get("label", pd.Series(pd.NA, index=projection.index))
        points["split"] = pd.NA
    predictions = chosen.folder / "predictions.csv"
    if predictions.is_file():
        table = pd.read_csv(predictions, dtype={"image": str})
        keep = ["image"] + [c for c in _PREDICTION_COLUMNS if c in table]
        points = points.merge(table[keep], on="image", how="left")
    else:
        notes.append(f"no {predictions.name} for this model: predicted material and correctness are not shown")
    for column in _PREDICTION_COLUMNS:
        if column not in points:
            points[column] = pd.NA
    points["correct"] = points["correct"].map({True: "correct", False: "incorrect", "True": "correct",
                                               "False": "incorrect"}).astype("string")
    points["novelty"] = pd.to_numeric(points["novelty"], errors="coerce")
    points["unfamiliar"] = points["unfamiliar"].map({True: "unfamiliar", False: "familiar", "True": "unfamiliar",
                                                     "False": "familiar"}).astype("string")
    materials = points["material"].dropna().astype(str)
    space = LabelSpace.from_materials(materials) if len(materials) else LabelSpace((), ())
    for element in space.elements:
        points[f"has_{element}"] = [element in parse_elements(m) if isinstance(m, str) else pd.NA
                                    for m in points["material"]]
    features = read_features(cache_dir)
    descriptors = []
    if features is None:
        notes.append("no features.csv: colouring by physical descriptors needs `tmdafm precompute` (features step)")
    else:
        descriptors = [c for c in features.columns if c != "image"]
        points = points.merge(features, on="image", how="left")
    coords = coordinate_columns(points)
    explained = {}
    variance = chosen.folder / "explained_variance.csv"
    if variance.is_file():
        table = pd.read_csv(variance)
        explained = dict(zip(table["component"].astype(str), table["ratio"].astype(float), strict=True))
    front = ["image", "sample_id", "material", "split", *_PREDICTION_COLUMNS] + \
        [f"has_{e}" for e in space.elements]
    points = points[front + [c for kind in coords.values() for c in kind] + descriptors]
    points.attrs = {"coords": coords, "explained": explained, "classes": list(space.classes),
                    "elements": list(space.elements), "descriptors": descriptors, "notes": notes,
                    "model": chosen.key, "title": chosen.title}
    return points


def thumbnail_atlas(cache_dir, images) -> dict[str, str]:
    """``{image: "data:image/png;base64,..."}`` for the given images (from ``thumbnails/atlas.json`` when the
    precompute wrote it, else from the thumbnail files); images without a thumbnail are left out."""
    layout = StoreLayout(cache_dir)
    atlas_path = layout.atlas
    images = [str(image) for image in images]
    if atlas_path.is_file():
        try:
            atlas = json.loads(atlas_path.read_text())
        except (OSError, ValueError):
            atlas = {}
        if isinstance(atlas, dict) and atlas:
            return {image: atlas[image] for image in images if image in atlas}
    return {image: uri for image in images if (uri := layout.thumbnail_uri(image)) is not None}


# --- describing a set of images ---------------------------------------------------------------------------------

def gallery(cache_dir, images, *, points: pd.DataFrame | None = None, limit: int = 48) -> list[dict]:
    """The first ``limit`` selected images as ``{"image", "material", "split", "predicted", "uri"}`` dicts.

    ``points`` (from :func:`load_points`) supplies the labels; images without a thumbnail get ``uri`` None.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    images = [str(image) for image in images][:limit]
    atlas = thumbnail_atlas(cache_dir, images)
    info = points.set_index("image") if points is not None else None
    items = []
    for image in images:
        row = info.loc[image] if info is not None and image in info.index else None
        labels = {column: None if row is None or pd.isna(row[column]) else str(row[column])
                  for column in ("material", "split", "predicted")}
        items.append({"image": image, **labels, "uri": atlas.get(image)})
    return items


def descriptor_label(name: str) -> str:
    """``"grain density (1/µm²)"``: a descriptor's readable name with its unit (none for dimensionless ones)."""
    unit = get_descriptor(name).unit
    readable = name.replace("_", " ")
    return readable if unit in ("1", "") else f"{readable} ({unit})"


def descriptor_summary(features: pd.DataFrame, images) -> pd.DataFrame:
    """How a set of images compares with the whole data set, descriptor by descriptor.

    Parameters
    ----------
    features : DataFrame
        ``image`` + one numeric column per descriptor (:func:`read_features`).
    images : sequence of str
        The selected image ids (unknown ids are ignored).

    Returns
    -------
    DataFrame, one row per descriptor
        ``descriptor``, ``unit``, ``n`` (selected images with a value), ``mean``, ``std``, ``median`` of the
        selection, ``all_median`` of the data set, and ``percentile``: where the selection's median falls among
        all images (0..100).
    """
    if "image" not in features.columns:
        raise ValueError("features: needs an image column (the store's features.csv)")
    chosen = features[features["image"].astype(str).isin({str(image) for image in images})]
    rows = []
    for name in (c for c in features.columns if c != "image"):
        every = features[name].to_numpy(dtype=np.float64)
        every = np.sort(every[np.isfinite(every)])
        values = chosen[name].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        median = float(np.median(values)) if len(values) else np.nan
        percentile = percentile_of(every, median)
        rows.append({"descriptor": name, "unit": get_descriptor(name).unit if name in FEATURE_COLUMNS else "",
                     "n": len(values), "mean": float(values.mean()) if len(values) else np.nan,
                     "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan, "median": median,
                     "all_median": float(np.median(every)) if len(every) else np.nan, "percentile": percentile})
    return pd.DataFrame(rows, columns=["descriptor", "unit", "n", "mean", "std", "median", "all_median",
                                       "percentile"])


def percentile_of(sorted_values: np.ndarray, value: float) -> float:
    """Mid-rank percentile (0..100) of ``value`` among ``sorted_values`` (ties count half)."""
    if not len(sorted_values) or not np.isfinite(value):
        return float("nan")
    below = np.searchsorted(sorted_values, value, side="left")
    at_or_below = np.searchsorted(sorted_values, value, side="right")
    return float(100.0 * (below + at_or_below) / (2 * len(sorted_values)))


# --- what a page needs and does not have ------------------------------------------------------------------------

def latent_needs(cache_dir) -> list[str]:
    """The store steps the latent view lacks (empty when it can be shown)."""
    needs = [] if StoreLayout(cache_dir).manifest.is_file() else ["dataset"]
    return needs + ([] if latent_models(cache_dir) else ["latent-mtc", "latent-mtl"])


def missing_for_latent(cache_dir) -> list[tuple[str, str]]:
    """``[(what is missing, command that builds it)]`` for the latent view; empty when it can be shown."""
    return StoreLayout(cache_dir).missing(latent_needs(cache_dir))
