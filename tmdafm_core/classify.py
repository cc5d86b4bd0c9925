"""Classify uploaded AFM images with the store's trained models (the app's drag-and-drop; no Dash here).

Uploads are untrusted bytes. They are decoded from memory, never written to disk (so never under the uploaded
name) and never unpickled; the type is taken from the content's magic bytes, not from the name; size, count and
pixel limits are checked before any pixel is decoded. Each file gets its own result, and a bad file gets a
one-line message while the others still classify.

For each image :meth:`Classifier.classify` returns the MtC material and class probabilities, the MtL element
probabilities (when the store has an MtL run), the class activation map as an overlay, the 14 physical
descriptors with their percentile in the data set, the image's place in the saved latent projection (PCA and
UMAP transform, no refit) and its nearest neighbours in the full latent space. Probabilities are the fold
ensemble's calibrated ones; ``novelty``/``unfamiliar`` say whether the image resembles the training images
(:mod:`tmdafm_core.novelty`), :func:`trust_sentence` says it in words.

torch is imported only when a model is loaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from .data.images import UnreadableImage, afm_colours, normalize_height, read_pixels, to_height_gray
from .features import MIN_SIZE_PX
from .layout import METRICS_NAME, PROJECTION_NAME, PROJECTION_TABLE_NAME, StoreLayout, load_manifest
from .selection import percentile_of, read_features

#: At most this many files per upload; more are reported, not classified.
MAX_FILES = 20
#: Largest accepted file (bytes).
MAX_FILE_BYTES = 32 * 2**20
#: Image sides outside MIN_SIDE_PX..MAX_SIDE_PX px are refused (descriptors need 32 px; 4096 px, 16 Mpx, bounds
#: an upload's memory and time: an 8192 px upload took 76 s and 10 GB).
MIN_SIDE_PX = MIN_SIZE_PX
MAX_SIDE_PX = 4096
#: Largest side of the images sent back to the browser (image and CAM overlay).
DISPLAY_PX = 384
N_NEIGHBOURS = 6


# --- bytes in ---------------------------------------------------------------------------------------------------

def display_name(name) -> str:
    """The uploaded name as a label only: its last path part, printable characters, at most 80 of them."""
    text = str(name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if ch.isprintable())[:80]
    return text or "upload"


def decode_upload(contents: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a ``dcc.Upload`` item (``data:<type>;base64,<data>``); the size is checked before decoding."""
    if not isinstance(contents, str) or "," not in contents or ";base64" not in contents.split(",", 1)[0]:
        raise ValueError("not a base64 data URL as the browser sends uploads; upload the file again")
    payload = contents.split(",", 1)[1]
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ValueError(f"file is larger than {max_bytes / 2**20:.0f} MiB; crop or downsample it first")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("upload is not valid base64; upload the file again") from None


def _check_shape(height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE_PX:
        raise ValueError(f"image is {width} × {height} px; at most {MAX_SIDE_PX} px per side are accepted "
                         f"(crop or downsample it)")
    if min(height, width) < MIN_SIDE_PX:
        raise ValueError(f"image is {width} × {height} px; at least {MIN_SIDE_PX} px per side are needed")


def raw_upload_suffix(name, data: bytes) -> str | None:
    """The instrument-file suffix an upload is read with, or None for an image (or anything else).

    Bruker and Gwyddion files are recognised by their content; container formats (a JPK file is a TIFF, Igor and
    HDF5-based files have no distinctive signature) by their name (:func:`tmdafm_core.data.scans.raw_suffix`).
    """
    from .data.scans import raw_suffix

    return raw_suffix(display_name(name), data)


def decode_scan(name, data: bytes, *, max_bytes: int = MAX_FILE_BYTES):
    """An uploaded instrument file as its default crop (:func:`tmdafm_core.data.images.default_crop`: height
    channel, default levelling, central 1 µm), or None when the upload is not one.

    The reader needs a real file: the bytes go to a private temporary folder under a random name (never the
    uploaded one), which is deleted before returning. Errors are ValueErrors without that temporary path.
    """
    import secrets
    import tempfile

    from .data.scans import prepare_scan

    suffix = raw_upload_suffix(name, data)
    if suffix is None:
        return None
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than {max_bytes / 2**20:.0f} MiB")
    with tempfile.TemporaryDirectory(prefix="tmdafm-upload-") as folder:
        path = Path(folder) / f"{secrets.token_hex(8)}{suffix}"
        path.write_bytes(data)
        try:
            crop = prepare_scan(path)[0]
        except (ValueError, OSError) as exc:
            raise ValueError(str(exc).replace(f"{path}: ", "").replace(str(path), "the upload")) from None
    _check_shape(*crop.height_nm.shape)
    return crop


def scan_overview(crop, *, max_side: int = DISPLAY_PX) -> str:
    """PNG data URI of a levelled scan with the crop box drawn in (the /classify card of an instrument file)."""
    scan_rgb = afm_rgb(normalize_height(crop.scan_nm, source="scan"))
    pixel_um = crop.pixel_size_nm / 1000.0
    box = crop.provenance
    top, bottom = int(round(box["crop_y0_um"] / pixel_um)), int(round(box["crop_y1_um"] / pixel_um)) - 1
    left, right = int(round(box["crop_x0_um"] / pixel_um)), int(round(box["crop_x1_um"] / pixel_um)) - 1
    line = max(1, max(scan_rgb.shape[:2]) // 200)
    colour = np.array([230, 60, 40], dtype=scan_rgb.dtype)
    for edge in (slice(top, top + line), slice(bottom - line + 1, bottom + 1)):
        scan_rgb[edge, left:right + 1] = colour
    for edge in (slice(left, left + line), slice(right - line + 1, right + 1)):
        scan_rgb[top:bottom + 1, edge] = colour
    return png_uri(scan_rgb, max_side=max_side)


def decode_image(data: bytes, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[np.ndarray, float | None]:
    """Decode image bytes in memory into a height map scaled to 0..1.

    Parameters
    ----------
    data : bytes
        A TIFF (8/16/32-bit integer or float), PNG or JPEG file's content; RGB(A) becomes grayscale by luma.
    max_bytes : int
        Largest accepted size.

    Returns
    -------
    image : ndarray of float32, shape (H, W), in 0..1
    pixel_size_nm : float or None
        From TIFF resolution tags when present.

    Raises
    ------
    ValueError
        Empty, too large, of another type (judged by content), corrupt, or with sides outside
        ``MIN_SIDE_PX..MAX_SIDE_PX`` (checked from the header, before decoding the pixels).
    """
    if not data:
        raise ValueError("file is empty")
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than {max_bytes / 2**20:.0f} MiB; crop or downsample it first")
    try:
        raw, pixel_nm = read_pixels(data, _check_shape)
    except UnreadableImage as exc:
        if exc.kind is None:
            raise ValueError("not a TIFF, PNG or JPEG image (judged by its content, not its name) nor an "
                             "instrument file (.spm/numbered Bruker, .gwy, .jpk, .ibw, ...)") from None
        raise ValueError(f"corrupt or unreadable {exc.kind.upper()} ({exc})") from None
    gray = to_height_gray(raw, source="upload")
    _check_shape(*gray.shape)
    return normalize_height(gray, source="upload"), pixel_nm


# --- pictures out -----------------------------------------------------------------------------------------------

def png_uri(rgb: np.ndarray, *, max_side: int = DISPLAY_PX) -> str:
    """``data:image/png;base64,...`` of a uint8 RGB (H, W, 3) array, downsized to ``max_side`` px at most."""
    from PIL import Image

    picture = Image.fromarray(np.asarray(rgb, dtype=np.uint8))
    scale = max_side / max(picture.size)
    if scale < 1:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def afm_rgb(image: np.ndarray) -> np.ndarray:
    """A 0..1 height map in the AFM gold colour scale (the thumbnails' scale), uint8 RGB."""
    return afm_colours(np.asarray(image, dtype=np.float64))


def cam_rgb(image: np.ndarray, heat: np.ndarray, *, alpha: float = 0.5) -> np.ndarray:
    """The class activation map blended over the grayscale image (inferno-like heat colours)."""
    from .cam import overlay

    return overlay(image, heat, alpha=alpha)


def cam_view(image: np.ndarray, heat: np.ndarray, image_size: int | None, *, max_side: int = DISPLAY_PX):
    """(PNG data URI of the activation-map overlay, None), or (None, why no map is drawn) when the map is flat.

    A ResNet's last feature map is the input side / 32: a model trained at 32 px has one cell, and its map,
    stretched over the image, says nothing about where the evidence lies.
    """
    heat = np.asarray(heat, dtype=np.float64)
    if heat.size and np.ptp(heat) > 1e-6:
        return png_uri(cam_rgb(image, heat), max_side=max_side), None
    cells = max(1, -(-int(image_size) // 32)) if image_size else 1
    size = f"{image_size} px" if image_size else "its input size"
    return None, (f"No activation map: the model sees images at {size}, so its last feature map is {cells}×{cells} "
                  "and marks no place in the image. Models trained at 128 px or more give a useful map.")


# --- models -----------------------------------------------------------------------------------------------------

@dataclass
class _Loaded:
    runs: list  # every fold model, the best validation fold first
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def run(self):
        """The best fold (its latent space places images; the store's predictions are its)."""
        return self.runs[0]


def _run_files_stamp(run_dir: Path) -> tuple:
    files = sorted(run_dir.glob("*.pt")) + [run_dir / "metrics.json"]
    return tuple((f.name, f.stat().st_mtime_ns) for f in files if f.is_file())


_LOAD_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _load_run(run_dir: str, stamp: tuple) -> _Loaded:
    from .training import load_ensemble

    return _Loaded(load_ensemble(run_dir))


def loaded_run(run_dir) -> _Loaded:
    """Every fold of a run (best first), loaded once per checkpoint version and shared between threads (with its
    lock)."""
    run_dir = Path(run_dir)
    with _LOAD_LOCK:
        return _load_run(str(run_dir.resolve()), _run_files_stamp(run_dir))


def classify_needs(cache_dir) -> list[str]:
    """The store steps classification lacks (empty when it can run)."""
    layout = StoreLayout(cache_dir)
    needed = {"mtc": layout.run_metrics("mtc"), "latent-mtc": layout.latent("mtc") / PROJECTION_NAME}
    return [step for step, path in needed.items() if not path.is_file()]


def missing_for_classify(cache_dir) -> list[tuple[str, str]]:
    """``[(what is missing, command that builds it)]`` for classification; empty when it can run."""
    return StoreLayout(cache_dir).missing(classify_needs(cache_dir))


class Classifier:
    """Everything classification needs from one store, loaded once and safe to share between threads.

    Parameters
    ----------
    cache_dir : str or Path
        Artifact store with ``runs/mtc`` (required), ``runs/mtl`` (optional), ``latent/mtc`` (projection.csv and
        projection.npz) and ``features.csv`` (optional: percentiles).
    """

    def __init__(self, cache_dir):
        from .embeddings import Projection

        self.cache_dir = Path(cache_dir)
        missing = missing_for_classify(self.cache_dir)
        if missing:
            raise FileNotFoundError(f"{self.cache_dir}: {missing[0][0]} is missing; build it with `{missing[0][1]}`")
        layout = StoreLayout(self.cache_dir)
        self.mtc = loaded_run(layout.run("mtc"))
        self.mtl = loaded_run(layout.run("mtl")) if layout.run_metrics("mtl").is_file() else None
        self.projection = Projection.load(layout.latent("mtc") / PROJECTION_NAME)
        self.projection_lock = threading.Lock()
        table = pd.read_csv(layout.latent("mtc") / PROJECTION_TABLE_NAME, dtype={"image": str})
        self.images = table["image"].to_numpy()
        self.points = table
        if self.projection.train_embeddings is not None and len(self.projection.train_embeddings) == len(table):
            self.neighbour_space = self.projection.train_embeddings.astype(np.float32)
        else:  # a PCA-only projection keeps no embeddings: embed the data set once with the same model
            from .training import embed

            manifest = load_manifest(self.cache_dir)
            with self.mtc.lock:
                self.neighbour_space = embed(self.mtc.run, manifest)
            self.images = manifest["image"].to_numpy()
        self.neighbour_note = "full latent space"
        # Rebuild the UMAP and compile its transform now, not in the first user's request (seconds, once).
        self.place(self.neighbour_space[0])
        features = read_features(self.cache_dir)
        self.descriptor_values = {} if features is None else {
            name: np.sort(features[name].to_numpy(np.float64)[np.isfinite(features[name].to_numpy(np.float64))])
            for name in features.columns if name != "image"}

    def _predict(self, loaded: _Loaded | None, image: np.ndarray, *, cam: bool, pixel_size_nm: float | None):
        from .training import predict_ensemble

        if loaded is None:
            return None
        with loaded.lock:  # one forward pass per model at a time: CPU-bound anyway, and CAMs stay per request
            return predict_ensemble(loaded.runs, [image], cam=cam, pixel_size_nm=pixel_size_nm)

    def place(self, embedding: np.ndarray) -> dict[str, float]:
        """Coordinates of one embedding in the saved projection (PCs, and the 2-D UMAP when saved; no refit)."""
        from .embeddings import pc_names, umap_names

        scores = self.projection.transform(embedding)[0]
        placed = dict(zip(pc_names(len(scores)), map(float, scores), strict=True))
        if 2 in self.projection.umap_embeddings:
            with self.projection_lock:  # the UMAP reducer is rebuilt lazily on first use; build it once
                umap = self.projection.transform_umap(embedding[None, :], n_dims=2)[0]
            placed.update(zip(umap_names(2), map(float, umap), strict=True))
        return placed

    def neighbours(self, embedding: np.ndarray, *, k: int = N_NEIGHBOURS) -> list[dict]:
        """The ``k`` data-set images nearest to an embedding (Euclidean), closest first."""
        distance = np.linalg.norm(self.neighbour_space - np.asarray(embedding, np.float32), axis=1)
        order = np.argsort(distance, kind="stable")[:k]
        return [{"image": str(self.images[i]), "distance": float(distance[i])} for i in order]

    def classify_image(self, image: np.ndarray, pixel_size_nm: float | None = None, *, name: str = "image") -> dict:
        """Classify one height map (0..1); see the module docstring for what the result holds."""
        from .features import compute_all

        pixel_nm = pixel_size_nm if pixel_size_nm is not None else 1000.0 / image.shape[1]
        mtc = self._predict(self.mtc, image, cam=True, pixel_size_nm=pixel_size_nm)
        mtl = self._predict(self.mtl, image, cam=False, pixel_size_nm=pixel_size_nm)
        embedding = mtc.embeddings[0]
        descriptors = compute_all(image, pixel_nm)
        cam_uri, cam_note = cam_view(image, mtc.cams[0], self.mtc.run.image_size)
        return {
            "name": name, "ok": True, "message": "",
            "material": mtc.materials[0],
            "class_probabilities": dict(zip(mtc.classes, map(float, mtc.class_probabilities[0]), strict=True)),
            "element_probabilities": None if mtl is None else
            dict(zip(mtl.elements, map(float, mtl.element_probabilities[0]), strict=True)),
            "mtl_material": None if mtl is None else mtl.materials[0],
            "agreement": float(mtc.agreement[0]), "folds": len(self.mtc.runs),
            "calibrated": bool(mtc.calibrated),
            "novelty": None if mtc.novelty is None else float(mtc.novelty[0]),
            "unfamiliar": None if mtc.novelty is None else bool(mtc.unfamiliar[0]),
            "novelty_quantile": None if self.mtc.run.novelty is None else float(self.mtc.run.novelty["quantile"]),
            "field_of_view_nm": None if np.isnan(mtc.field_of_view_nm[0]) else float(mtc.field_of_view_nm[0]),
            "training_field_of_view_nm": None if self.mtc.run.novelty is None else
            self.mtc.run.novelty.get("field_of_view_nm"),
            "trust_note": mtc.notes[0] if mtc.notes else None,
            "height": int(image.shape[0]), "width": int(image.shape[1]), "pixel_size_nm": float(pixel_nm),
            "descriptors": {key: {"value": float(value),
                                  "percentile": percentile_of(self.descriptor_values.get(key, np.empty(0)), value)}
                            for key, value in descriptors.items()},
            "coordinates": self.place(embedding),
            "neighbours": self.neighbours(embedding),
            "neighbour_space": self.neighbour_note,
            "image_uri": png_uri(afm_rgb(image)),
            "cam_uri": cam_uri, "cam_note": cam_note,
        }

    def classify(self, uploads) -> list[dict]:
        """Classify uploaded files; one result per file, in order.

        Parameters
        ----------
        uploads : sequence of (name, content)
            ``content`` is the file's bytes or a ``dcc.Upload`` data URL; ``name`` is only a label.

        Returns
        -------
        list of dict
            :meth:`classify_image` results; a refused file gives ``{"name", "ok": False, "message"}``.
        """
        results = []
        for index, (name, content) in enumerate(uploads):
            label = display_name(name)
            if index >= MAX_FILES:
                results.append(_refused(label, f"not classified: at most {MAX_FILES} files per upload"))
                continue
            try:
                data = content if isinstance(content, bytes) else decode_upload(content)
                crop = decode_scan(label, data)
                image, pixel_nm = (decode_image(data) if crop is None else
                                   (normalize_height(crop.height_nm, source="upload"), crop.pixel_size_nm))
            except ValueError as exc:
                results.append(_refused(label, str(exc)))
                continue
            result = self.classify_image(image, pixel_nm, name=label)
            if crop is not None:
                result["scan"] = {**{k: crop.provenance[k] for k in ("format", "channel", "levelling", "scan_width_um",
                                                                     "scan_height_um", "crop_x0_um", "crop_x1_um",
                                                                     "crop_y0_um", "crop_y1_um")},
                                  "overview_uri": scan_overview(crop)}
            results.append(result)
        return results


UNFAMILIAR_BADGE = "unlike the training images: this prediction is unreliable"


def trust_sentence(result: dict) -> str:
    """How far a classified image's probabilities can be trusted, in words (the /classify card's caption)."""
    folds, material = result["folds"], result["material"]
    votes = round(result["agreement"] * folds)
    how = "each calibrated on its validation images" if result["calibrated"] else "not calibrated"
    text = f"Mean of {folds} fold models ({how}); {votes} of {folds} pick {material}. "
    if result["novelty"] is None:
        return text + (result["trust_note"] or "Novelty unknown.")
    share = f"{100 * result['novelty_quantile']:.0f} %"
    if result["unfamiliar"] and (scale := _scale_sentence(result)):
        return text + scale
    if result["unfamiliar"]:
        return text + (f"Novelty {result['novelty']:.2f}: further from the training images than {share} of genuine "
                       "held-out images, so the probabilities above describe a kind of image the models never saw.")
    return text + (f"Novelty {result['novelty']:.2f} (1 = the {share} line of genuine held-out images): like the "
                   "training images.")


def _scale_sentence(result: dict) -> str | None:
    """Why an image is unfamiliar when its field of view lies outside the training images' by the scale tolerance."""
    from .novelty import field_of_view_text, scale_novelty

    fov, trained = result.get("field_of_view_nm"), result.get("training_field_of_view_nm")
    if fov is None or trained is None or not scale_novelty(trained, [fov])[0] > 1:
        return None
    low, high = trained
    how = f"{fov / high:.1f} times the largest" if fov > high else f"1/{low / fov:.1f} of the smallest"
    return (f"Its field of view ({fov / 1000:.2f} µm) is {how} the models trained on ({field_of_view_text(trained)}): "
            "features appear at another scale than the models learned, so the probabilities above are unreliable. "
            "Classify a crop of the trained size instead.")


def _refused(name: str, message: str) -> dict:
    return {"name": name, "ok": False, "message": message}


_CLASSIFIERS: dict = {}
_CLASSIFIERS_LOCK = threading.Lock()


def classifier_for(cache_dir) -> Classifier:
    """The shared :class:`Classifier` of a store (rebuilt when its models or projection change)."""
    cache_dir = Path(cache_dir).resolve()
    layout = StoreLayout(cache_dir)
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in (layout.run_metrics("mtc"), layout.run_metrics("mtl"),
                                                           layout.latent("mtc") / PROJECTION_NAME)
                  if p.is_file())
    with _CLASSIFIERS_LOCK:
        key = (str(cache_dir), stamp)
        if key not in _CLASSIFIERS:
            _CLASSIFIERS.clear()
            _CLASSIFIERS[key] = Classifier(cache_dir)
        return _CLASSIFIERS[key]


def classify_uploads(cache_dir, uploads) -> list[dict]:
    """Classify ``[(name, bytes or data URL), ...]`` with the store's models (see :meth:`Classifier.classify`)."""
    return classifier_for(cache_dir).classify(uploads)


def results_table(results) -> pd.DataFrame:
    """One row per file: name, status, material, probabilities, descriptors, coordinates, nearest neighbours."""
    rows = []
    for result in results:
        row = {"file": result["name"], "status": "classified" if result["ok"] else result["message"]}
        if result["ok"]:
            row["material"] = result["material"]
            row.update({f"p_{k}": v for k, v in result["class_probabilities"].items()})
            row["agreement"] = result["agreement"]
            row["novelty"] = result["novelty"]
            row["unfamiliar"] = result["unfamiliar"]
            if result["element_probabilities"]:
                row.update({f"p_{k}": v for k, v in result["element_probabilities"].items()})
            row.update({k: v["value"] for k, v in result["descriptors"].items()})
            row.update({f"{k}_percentile": v["percentile"] for k, v in result["descriptors"].items()})
            row.update(result["coordinates"])
            row["nearest_images"] = ";".join(n["image"] for n in result["neighbours"])
            row.update({f"scan_{k}": v for k, v in result.get("scan", {}).items() if k != "overview_uri"})
        rows.append(row)
    table = pd.DataFrame(rows)
    ordered = [c for c in ("file", "status", "material") if c in table] + \
        [c for c in table.columns if c not in ("file", "status", "material")]
    return table[ordered] if len(table) else pd.DataFrame(columns=["file", "status"])


# --- images of the store (the latent view's pinned image) -------------------------------------------------------

@lru_cache(maxsize=256)
def _store_image_view(cache_dir: str, image: str, stamp: tuple) -> dict:
    from .data import load_image
    from .data.images import scan_crops

    manifest = load_manifest(cache_dir)
    rows = manifest.index[manifest["image"] == image]
    if not len(rows):
        raise ValueError(f"{image}: not an image of the store {cache_dir}")
    row = manifest.loc[rows[0]]
    height, pixel_nm = load_image(row["path"], crop_um=scan_crops(manifest.loc[rows[:1]])[0])
    view = {"image": image, "material": None if pd.isna(row["material"]) else str(row["material"]),
            "split": None if pd.isna(row["split"]) else str(row["split"]), "width": int(height.shape[1]),
            "height": int(height.shape[0]), "pixel_size_nm": float(pixel_nm),
            "uri": png_uri(afm_rgb(height), max_side=512), "cam_uri": None, "cam_note": None, "predicted": None}
    run_dir = StoreLayout(cache_dir).run("mtc")
    if (run_dir / METRICS_NAME).is_file():
        loaded = loaded_run(run_dir)
        from .training import predict

        with loaded.lock:
            prediction = predict(loaded.run, [height], cam=True)
        view["cam_uri"], view["cam_note"] = cam_view(height, prediction.cams[0], loaded.run.image_size, max_side=512)
        view["predicted"] = prediction.materials[0]
    return view


def store_image_view(cache_dir, image: str) -> dict:
    """A store image at full size (up to 512 px) with its MtC class activation map overlay (cached).

    Returns ``{"image", "material", "split", "predicted", "width", "height", "pixel_size_nm", "uri", "cam_uri",
    "cam_note"}``; ``cam_uri`` and ``predicted`` are None when the store has no MtC run, ``cam_uri`` also when the
    map is flat (``cam_note`` then says why).
    """
    cache_dir = Path(cache_dir).resolve()
    run_dir = StoreLayout(cache_dir).run("mtc")
    stamp = _run_files_stamp(run_dir) if run_dir.is_dir() else ()
    return _store_image_view(str(cache_dir), str(image), stamp)

