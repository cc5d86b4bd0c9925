"""The ``thumbnails`` step: one small PNG per image in the AFM colour scale, and the atlas of data URIs the
latent view hovers over without a server round trip."""

from __future__ import annotations

import shutil
from pathlib import Path

from .data import afm_colours, load_image
from .data.images import scan_crops
from .data.scans import DEFAULT_CROP_UM
from .layout import (
    ATLAS_NAME,
    THUMBNAILS_DIR,
    THUMBNAILS_MARKER,
    load_manifest,
    thumbnail_name,
    thumbnail_uri,
)
from .prepared import _FORMAT_VERSION
from .progress import as_callback, iterate, report
from .store import exclusive, read_json, write_atomic, write_json

THUMBNAIL_PX = 96


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
    with exclusive(cache_dir, "thumbnails"):
        marker = read_json(folder / THUMBNAILS_MARKER)
        if marker is None or marker.get("key") != key:
            if folder.exists():
                shutil.rmtree(folder)
            write_json(folder / THUMBNAILS_MARKER, {"key": key, "complete": False})
        elif marker.get("complete"):
            report(progress, "thumbnails ready (from the store)", 1, 1)
            return folder
        todo = [(image, path, crop) for image, path, crop in zip(manifest["image"], manifest["path"],
                                                                 scan_crops(manifest), strict=True)
                if not (folder / thumbnail_name(image)).is_file()]
        for image, path, crop in iterate(todo, progress, "making thumbnails", start=len(manifest) - len(todo),
                                         every=25):
            png = render_thumbnail(path, size=size, crop_um=crop)
            write_atomic(folder / thumbnail_name(image), lambda tmp, png=png: tmp.write_bytes(png))
        write_json(folder / THUMBNAILS_MARKER, {"key": key, "complete": True})
    return folder


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
