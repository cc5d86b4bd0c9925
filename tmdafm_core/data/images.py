"""Reading and writing single AFM images.

Every image enters the library through :func:`load_image`: a 2-D float32 height map scaled to 0..1 and its pixel
size in nanometres. TIFF (8/16/32-bit integer and float), PNG and JPEG are read; RGB(A) exports are converted to a
height-like grayscale.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .scans import DEFAULT_CROP_UM, RAW_SUFFIXES, is_raw_scan

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
#: Largest image (pixels) read, checked from the header before any pixel is decoded: a tiny compressed file can
#: hold a huge image. ``TMDAFM_MAX_PIXELS`` sets another limit.
MAX_PIXELS = 64 * 2**20
#: Smallest image side any step uses (the descriptors' scales span tens of pixels; a ResNet halves its input five
#: times) and largest model input side.
MIN_SIDE_PX, MAX_INPUT_PX = 32, 4096


def check_input_side(size) -> int:
    """A model input side in pixels, checked against ``MIN_SIDE_PX..MAX_INPUT_PX``."""
    if not MIN_SIDE_PX <= int(size) <= MAX_INPUT_PX:
        raise ValueError(f"image_size must be in {MIN_SIDE_PX}..{MAX_INPUT_PX} px, got {size}")
    return int(size)


def max_pixels() -> int:
    import os

    value = os.environ.get("TMDAFM_MAX_PIXELS", "")
    return int(value) if value.isdigit() and int(value) > 0 else MAX_PIXELS


def _check_file(path: Path) -> None:
    """Refuse what is not a regular file (a FIFO or device named ``x.tif`` would block the reader forever)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file (a folder, FIFO, socket or device); give an image file")


class ImageTooLarge(ValueError):
    """An image with more pixels than :func:`max_pixels` allows."""


def _check_pixels(height: int, width: int, path: Path) -> None:
    limit = max_pixels()
    if int(height) * int(width) > limit:
        raise ImageTooLarge(f"{path}: {width} x {height} px is more than the {limit / 2**20:.0f} Mpx read at most "
                         "(crop or downsample it, or set TMDAFM_MAX_PIXELS)")

#: Scan size assumed when neither the file nor the manifest gives the pixel size: the paper's 1 µm crops.
DEFAULT_SCAN_SIZE_NM = 1000.0

# Pixel sizes outside this range come from placeholder resolution tags (72 dpi -> 353 µm/px), not from a scan.
_PLAUSIBLE_PIXEL_NM = (1e-3, 1e5)
_TIFF_UNIT_TO_NM = {2: 2.54e7, 3: 1e7}  # RESUNIT inch, centimetre

_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def afm_colours(image: np.ndarray) -> np.ndarray:
    """The usual gold AFM colour scale (black → brown → gold → white) for a 0..1 image, as uint8 RGB."""
    rgb = np.stack([np.clip(2.0 * image, 0, 1), np.clip(2.0 * image - 0.5, 0, 1), np.clip(2.0 * image - 1.0, 0, 1)],
                   axis=-1)
    return (rgb * 255).astype(np.uint8)


def _is_tiff(path: Path) -> bool:
    return path.suffix.lower() in {".tif", ".tiff"}


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpeg"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
          (b"II+\x00", "tiff"), (b"MM\x00+", "tiff"))


def sniff_type(data: bytes) -> str | None:
    """``"tiff"``, ``"png"`` or ``"jpeg"`` from a file's first bytes, or None for anything else."""
    for magic, kind in _MAGIC:
        if data[:len(magic)] == magic:
            return kind
    return None


class UnreadableImage(ValueError):
    """A TIFF/PNG/JPEG whose decoder failed; ``kind`` is the type its content claimed."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def _plane_of(shape) -> tuple[int, int]:
    """(height, width) of a TIFF page shape: 2-D, RGB(A) last, or a stack first (its first plane is read)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape
    return shape[:2] if shape[-1] in (3, 4) else shape[-2:]


def read_pixels(source, check_shape) -> tuple[np.ndarray, float | None]:
    """Decode a TIFF (8/16/32-bit integer or float), PNG or JPEG from a path or from bytes: the one image decoder
    of files (:func:`load_image`) and uploads (:func:`tmdafm_core.classify.decode_image`).

    The type is judged by content. ``check_shape(height, width)`` runs on the header, before any pixel is decoded
    (a decompression bomb is refused there), and its errors pass through unchanged.

    Returns
    -------
    raw : ndarray
        The pixels as stored (2-D, or RGB(A) with the channels last).
    pixel_size_nm : float or None
        From TIFF resolution tags when present and plausible.

    Raises
    ------
    UnreadableImage
        Not a TIFF, PNG or JPEG by content (``kind`` None), or its decoder failed.
    """
    import io

    if isinstance(source, (bytes, bytearray)):
        head, opened = bytes(source[:8]), io.BytesIO(source)
    else:
        with open(source, "rb") as handle:
            head = handle.read(8)
        opened = source
    kind = sniff_type(head)
    if kind is None:
        raise UnreadableImage(None, "not a TIFF, PNG or JPEG image (judged by its content, not its name)")

    def checked(height, width):
        try:
            check_shape(height, width)
        except ValueError as exc:
            raise _Refused(exc) from None

    try:
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(opened) as tif:
                page = tif.pages[0]
                checked(*_plane_of(page.shape))
                return page.asarray(), tiff_pixel_size_nm(page)
        from PIL import Image

        with Image.open(opened) as im:
            checked(im.size[1], im.size[0])
            im.load()
            if im.mode in ("P", "LA", "PA", "1", "CMYK", "YCbCr", "HSV"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return np.asarray(im), None
    except _Refused as refused:
        raise refused.args[0] from None
    except Exception as exc:  # decoders raise many types; the user needs one message
        raise UnreadableImage(kind, f"{type(exc).__name__}: {exc}") from None


class _Refused(Exception):
    """Carries a shape check's own error out of the decoders' catch-all."""


def tiff_pixel_size_nm(page) -> float | None:
    """Pixel size from a tifffile page's XResolution/ResolutionUnit tags, or None when absent or implausible."""
    tags = page.tags
    if "XResolution" not in tags:
        return None
    unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    unit = int(getattr(unit, "value", unit))
    if unit not in _TIFF_UNIT_TO_NM:
        return None
    numerator, denominator = tags["XResolution"].value
    if numerator <= 0 or denominator <= 0:
        return None
    pixel_nm = _TIFF_UNIT_TO_NM[unit] * denominator / numerator
    low, high = _PLAUSIBLE_PIXEL_NM
    return float(pixel_nm) if low <= pixel_nm <= high else None


def _check_type(path: Path) -> None:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: unsupported image type {path.suffix!r}; use one of {sorted(IMAGE_SUFFIXES)} or an "
                         f"instrument file ({', '.join(sorted(RAW_SUFFIXES))}, numbered Bruker files)")


@lru_cache(maxsize=64)
def _cached_crop(path: str, stamp: tuple, crop_um):
    import dataclasses

    from .scans import prepare_scan

    # The cache keeps crops, not whole scans.
    return dataclasses.replace(prepare_scan(path, crop_um=crop_um)[0], scan_nm=None)


def default_crop(path, crop_um: float | None = DEFAULT_CROP_UM):
    """The crop an instrument file stands for when it is given as an image: height channel, ``default`` levelling,
    the central ``crop_um`` (None: the whole scan; :func:`tmdafm_core.data.scans.prepare_scan`); read once per
    file version (probing and loading share it)."""
    path = Path(path)
    _check_file(path)
    stat = path.stat()
    return _cached_crop(str(path.resolve()), (stat.st_size, stat.st_mtime_ns), crop_um)


def scan_crops(manifest) -> list:
    """Per manifest row, the crop an instrument file was read with (its ``crop_um`` column: a number, or NaN for
    the whole scan; without the column, the default central 1 µm). Processed images ignore it."""
    if "crop_um" not in manifest.columns:
        return [DEFAULT_CROP_UM] * len(manifest)
    crops = []
    for value in manifest["crop_um"]:
        try:
            value = float(value)
        except (TypeError, ValueError):  # None or pd.NA
            value = float("nan")
        crops.append(None if np.isnan(value) else value)
    return crops


def probe_image(path, *, crop_um: float | None = DEFAULT_CROP_UM) -> tuple[int, int, float | None]:
    """Read only an image's header (an instrument file: its default crop, :func:`default_crop`).

    Parameters
    ----------
    path : str or Path
        TIFF, PNG or JPEG file, or an instrument file (:mod:`tmdafm_core.data.scans`).

    Returns
    -------
    height, width : int
        Image size in pixels.
    pixel_size_nm : float or None
        Pixel size from TIFF resolution tags, or None when the file does not carry a usable one.

    Raises
    ------
    ValueError
        When the file is not a readable image of a supported type.
    """
    path = Path(path)
    if is_raw_scan(path):
        crop = default_crop(path, crop_um)
        return (*crop.height_nm.shape, crop.pixel_size_nm)
    _check_type(path)
    _check_file(path)
    try:
        if _is_tiff(path):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                shape, pixel_nm = page.shape, tiff_pixel_size_nm(page)
                end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)), default=0)
                if end > path.stat().st_size:
                    raise ValueError(f"truncated: its pixel data end at byte {end}, the file has "
                                     f"{path.stat().st_size}")
        else:
            from PIL import Image

            with Image.open(path) as im:
                shape, pixel_nm = (im.size[1], im.size[0]), None
    except Exception as exc:  # any decoder failure means the same thing to the user
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    height, width = _plane_shape(shape, path)
    _check_pixels(height, width, path)
    return height, width, pixel_nm


def _plane_shape(shape, path: Path) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape
    if len(shape) == 3 and shape[-1] in (3, 4):
        return shape[0], shape[1]
    if len(shape) == 3 and shape[0] in (3, 4):
        return shape[1], shape[2]
    raise ValueError(f"{path}: expected a 2-D grayscale or RGB(A) image, got an array of shape {shape}")


def to_height_gray(array, *, source="image") -> np.ndarray:
    """Convert a 2-D or RGB(A) array to a 2-D float64 height-like map (alpha dropped, ITU-R 601 luma)."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        array = array[..., :3].astype(np.float64) @ _LUMA_WEIGHTS
    if array.ndim != 2:
        raise ValueError(f"{source}: expected a 2-D grayscale or RGB(A) image, got an array of shape {array.shape}")
    return array  # grayscale as read: normalize_height makes the one float copy


def normalize_height(height, *, source="image") -> np.ndarray:
    """Scale a height map to 0..1 (float32) after filling non-finite pixels.

    NaN/inf pixels (dropouts in raw scans) are filled with the median of the finite pixels before scaling, so that
    no descriptor sees them. A constant image becomes all zeros.
    """
    height = np.asarray(height)
    if height.dtype.kind not in "fiub":
        raise ValueError(f"{source}: pixel values of type {height.dtype} are not numbers")
    # One float32 result and no full-size float64 temporaries (a 64 Mpx scan would need 1 GB for each): the
    # subtraction runs in float64 chunk by chunk inside the ufunc and is stored as float32.
    scaled = np.empty(height.shape, dtype=np.float32)
    if height.dtype.kind == "f":
        finite = np.isfinite(height)
        if not finite.any():
            raise ValueError(f"{source}: no finite pixel values (all NaN/inf)")
        if not finite.all():
            fill = np.median(height[finite])
            height = np.where(finite, height, fill)
    low, high = float(height.min()), float(height.max())
    span = high - low
    if span <= 0:
        scaled.fill(0.0)
        return scaled
    compute = np.float32 if height.dtype == np.float32 or height.dtype == np.float16 else np.float64
    np.subtract(height, low, out=scaled, dtype=compute, casting="unsafe")
    scaled /= np.float32(span)
    return scaled


#: How pixel values become 0..1: ``min-max`` per image (ours), or ``paper``: 8-bit images divided by 255 as the
#: paper's ``ToTensor`` does (other bit depths min-max), for models imported from the paper's code.
SCALINGS = ("min-max", "paper")


def scale_pixels(array, *, scaling: str = "min-max", source="image") -> np.ndarray:
    """A 2-D or RGB(A) array as a 2-D float32 image in 0..1 (see :data:`SCALINGS`)."""
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    array = np.asarray(array)
    if scaling == "paper" and array.dtype == np.uint8:
        return (to_height_gray(array, source=source) / 255.0).astype(np.float32)
    return normalize_height(to_height_gray(array, source=source), source=source)


def load_image(path, *, pixel_size_nm: float | None = None, scaling: str = "min-max",
               crop_um: float | None = DEFAULT_CROP_UM,
               default_scan_nm: float | None = DEFAULT_SCAN_SIZE_NM) -> tuple[np.ndarray, float]:
    """Read an AFM image as a height map scaled to 0..1.

    Parameters
    ----------
    path : str or Path
        TIFF (8/16/32-bit integer or float), PNG or JPEG (RGB(A) is converted to grayscale by luma), or an instrument
        file: its :func:`default_crop` (levelled, central 1 µm; ``scaling="paper"`` scales it min-max too, since it
        has no 8-bit values).
    crop_um : float or None
        Instrument files only: side of the central crop in µm, None for the whole scan (:func:`scan_crop` reads it
        from a manifest row).
    pixel_size_nm : float, optional
        Pixel size in nm, e.g. from a manifest. Takes precedence over the file's TIFF resolution tags. When neither
        is known the image is assumed to span ``default_scan_nm``.
    scaling : {"min-max", "paper"}
        ``min-max``: heights scaled to 0..1 per image; ``paper``: 8-bit images divided by 255 (:data:`SCALINGS`).
    default_scan_nm : float or None
        Side (nm) an image of unknown pixel size is taken to span (default 1 µm, the paper's crop: pixel size
        ``default_scan_nm / width``); None returns NaN instead, for callers that must know the size is unknown.

    Returns
    -------
    image : ndarray of float32, shape (height, width)
        Heights scaled to 0..1; non-finite pixels filled with the median of the finite ones.
    pixel_size_nm : float
        Nanometres per pixel (NaN: unknown and ``default_scan_nm=None``).
    """
    path = Path(path)
    if is_raw_scan(path):
        crop = default_crop(path, crop_um)
        image = scale_pixels(crop.height_nm, scaling="min-max" if scaling == "paper" else scaling, source=str(path))
        return image, float(crop.pixel_size_nm if pixel_size_nm is None or not np.isfinite(pixel_size_nm)
                            else pixel_size_nm)
    _check_type(path)
    _check_file(path)
    try:
        raw, tag_pixel_nm = read_pixels(path, lambda height, width: _check_pixels(height, width, path))
    except UnreadableImage as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    if raw.size == 0:
        raise ValueError(f"{path}: image has no pixels")
    image = scale_pixels(raw, scaling=scaling, source=str(path))
    if pixel_size_nm is None or not np.isfinite(pixel_size_nm):
        pixel_size_nm = (tag_pixel_nm if tag_pixel_nm is not None else
                         np.nan if default_scan_nm is None else default_scan_nm / image.shape[1])
    elif pixel_size_nm <= 0:
        raise ValueError(f"{path}: pixel_size_nm must be positive, got {pixel_size_nm}")
    return image, float(pixel_size_nm)


def save_tiff(path, image, *, pixel_size_nm: float, dtype=np.float32) -> None:
    """Write a 2-D height map as a TIFF whose resolution tags carry the pixel size.

    Parameters
    ----------
    path : str or Path
        Output file (``.tif``).
    image : ndarray, shape (height, width)
        Height values. With ``dtype=np.uint16`` they must lie in 0..1 and are quantised to 0..65535.
    pixel_size_nm : float
        Nanometres per pixel, stored as pixels per centimetre (ResolutionUnit = CENTIMETER).
    dtype : {np.float32, np.uint16}
        Stored sample type.
    """
    import tifffile

    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{path}: save_tiff expects a 2-D image, got shape {image.shape}")
    if not pixel_size_nm > 0:
        raise ValueError(f"{path}: pixel_size_nm must be positive, got {pixel_size_nm}")
    if np.dtype(dtype) == np.uint16:
        data = np.round(np.clip(image, 0.0, 1.0) * 65535).astype(np.uint16)
    else:
        data = image.astype(dtype)
    pixels_per_cm = 1e7 / pixel_size_nm
    tifffile.imwrite(path, data, resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER")
