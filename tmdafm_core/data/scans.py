"""Instrument files (raw AFM scans) as height maps in nm with their pixel size in nm.

Every format is read by AFMReader (the TopoStats team's reader, built on pySPM, igor2 and h5py), never by a parser
of our own: Bruker Nanoscope (``.spm`` and numbered ``.000``, ``.001``, ...), Gwyddion ``.gwy``, Asylum/Igor
``.ibw``, JPK (``.jpk``, ``.jpk-qi-image``, ``.h5-jpk``), Toyo/RIBM ``.asd`` (first frame), WSxM ``.stp``/``.top`` and
``.topostats``. A Bruker numbered file is recognised by its content (its header starts with ``\\*File list``), since
``.001`` says nothing by itself.

The height channel is chosen by default (vendors name it differently: :data:`HEIGHT_CHANNELS`, first match);
``channel=`` picks another. :func:`list_channels` lists what a file has.

Examples
--------
>>> from tmdafm_core.data.scans import is_raw_scan
>>> is_raw_scan("scan.spm"), is_raw_scan("crop.tif")
(True, False)
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Suffix -> format of files recognised by their name.
SUFFIX_FORMATS = {".spm": "bruker", ".gwy": "gwyddion", ".ibw": "igor", ".jpk": "jpk", ".jpk-qi-image": "jpk",
                  ".h5-jpk": "h5-jpk", ".asd": "asd", ".stp": "wsxm-stp", ".top": "wsxm-top",
                  ".topostats": "topostats"}
RAW_SUFFIXES = frozenset(SUFFIX_FORMATS)
#: Height channel names, in order of preference, across vendors (Bruker, Asylum, JPK, Gwyddion exports, TopoStats).
HEIGHT_CHANNELS = ("Height", "Height Sensor", "ZSensor", "HeightTracee", "HeightTrace", "height_trace",
                   "measuredHeight_trace", "height_retrace", "Topography", "Z", "image", "TP")
_BRUKER_MAGIC = b"\\*File list"
#: Formats whose files say what they are in their first bytes (the others are known by their name only).
CONTENT_MAGIC = {_BRUKER_MAGIC: ".spm", b"GWYP": ".gwy"}
_NUMBERED = re.compile(r"^\.\d{3}$")
_CHANNEL_LIST = re.compile(r"channel list: (.*)$", re.DOTALL)
_NO_CHANNEL = "\x00"  # a name no file has: the reader's refusal lists the channels the file does have


def file_suffix(path: Path) -> str:
    """A file's suffix in lower case, the two-part ones (``.jpk-qi-image``, ``.h5-jpk``) whole."""
    name = path.name.lower()
    for suffix in (".jpk-qi-image", ".h5-jpk"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def raw_suffix(name: str, data: bytes) -> str | None:
    """The instrument-file suffix bytes named ``name`` are read with (an upload), or None when they are not an
    instrument file: recognised by content where the format has a signature (:data:`CONTENT_MAGIC`), else by the
    name, after which the format's reader checks the content."""
    for magic, suffix in CONTENT_MAGIC.items():
        if data.startswith(magic):
            return suffix
    suffix = file_suffix(Path(name))
    return suffix if suffix in RAW_SUFFIXES and suffix not in CONTENT_MAGIC.values() else None


def raw_format(path) -> str | None:
    """The instrument format of a file (None: not a raw scan tmdafm reads).

    Numbered Bruker files (``.000``-``.999``) are recognised by their header, so a numbered file of another kind is
    not mistaken for one.
    """
    path = Path(path)
    suffix = file_suffix(path)
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if _NUMBERED.match(suffix) and path.is_file():
        with open(path, "rb") as handle:
            if handle.read(len(_BRUKER_MAGIC)) == _BRUKER_MAGIC:
                return "bruker"
    return None


def is_raw_scan(path) -> bool:
    """Whether ``path`` names an instrument file (by suffix; numbered Bruker files by content when they exist)."""
    return raw_format(path) is not None


@dataclass
class Scan:
    """One channel of an instrument file.

    Attributes
    ----------
    height_nm : ndarray of float64, shape (rows, columns)
        Heights in nm as the instrument recorded them (not levelled); rows are the slow scan axis.
    pixel_size_nm : float
        Side of a (square) pixel in nm.
    channel : str
    format : str
        One of the values of :data:`SUFFIX_FORMATS`.
    source : str
        The file.
    notes : list of str
        What was done to the data on reading (e.g. the first frame of a video taken).
    """

    height_nm: np.ndarray
    pixel_size_nm: float
    channel: str
    format: str
    source: str
    notes: list

    @property
    def size_um(self) -> tuple[float, float]:
        """Scan size (width, height) in µm."""
        rows, columns = self.height_nm.shape
        return columns * self.pixel_size_nm / 1000.0, rows * self.pixel_size_nm / 1000.0


def _quiet():
    import logging

    from loguru import logger

    logger.disable("AFMReader")
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its warnings on damaged JPK files: we raise instead


_BRUKER_NUMBER = re.compile(rb"\\(Data offset|Data length): *(\d+)")


def check_bruker(path) -> None:
    """Refuse a Bruker file whose header is cut short or whose image data run past its end, before pySPM reads it
    (pySPM can loop forever on such a file).

    The header is the ``\\*File list`` ... ``\\*File list end`` text block; each image section names the
    ``Data offset`` and ``Data length`` of its pixels.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(min(size, 1 << 20))
    if not head.startswith(_BRUKER_MAGIC):
        raise ValueError(f"{path}: not a Bruker file (its header does not start with \\*File list)")
    end = head.find(b"\\*File list end")
    if end < 0:
        raise ValueError(f"{path}: truncated or damaged Bruker file (no end of header in its {size} bytes)")
    numbers = _BRUKER_NUMBER.findall(head[:end])
    offsets = [int(v) for k, v in numbers if k == b"Data offset"]
    lengths = [int(v) for k, v in numbers if k == b"Data length"][1:]  # the first is the header's own length
    need = max((o + n for o, n in zip(offsets, lengths, strict=False)), default=0)
    if need > size:
        raise ValueError(f"{path}: truncated Bruker file: its image data end at byte {need}, the file has {size}")


_READER_MODULES = {"bruker": "spm", "gwyddion": "gwy", "igor": "ibw", "jpk": "jpk", "h5-jpk": "h5_jpk", "asd": "asd",
                   "wsxm-stp": "stp", "wsxm-top": "top", "topostats": "topostats"}


def _load(path: Path, fmt: str, channel: str):
    """AFMReader's loader of one format: ``(image, nm per pixel, notes)``.

    Only the format's own module is imported (all of them together take seconds: h5py, igor2, pySPM).
    """
    import importlib

    module = importlib.import_module(f"AFMReader.{_READER_MODULES[fmt]}")
    _quiet()
    if fmt == "bruker":
        check_bruker(path)
        image, pixel = module.load_spm(path, channel)
    elif fmt == "gwyddion":
        image, pixel = module.load_gwy(path, channel)
    elif fmt == "igor":
        image, pixel = module.load_ibw(path, channel)
    elif fmt == "jpk":
        image, pixel = module.load_jpk(path, channel)
    elif fmt == "h5-jpk":
        frames, pixel, _ = module.load_h5jpk(path, channel)
        return np.asarray(frames)[0] if np.ndim(frames) == 3 else frames, pixel, ["first frame of the file"]
    elif fmt == "asd":
        frames, pixel, _ = module.load_asd(path, channel)
        return np.asarray(frames)[0], pixel, ["first frame of the video"]
    elif fmt == "wsxm-stp":
        image, pixel = module.load_stp(path)
    elif fmt == "wsxm-top":
        image, pixel = module.load_top(path)
    else:
        document = module.load_topostats(path)
        if channel not in document:
            names = [k for k in ("image", "image_original") if k in document]
            raise ValueError(f"'{channel}' not in .topostats channel list: {names}")
        image, pixel = document[channel], document["pixel_to_nm_scaling"]
    return image, pixel, []


def _extent_nm(path: Path, fmt: str, channel: str) -> tuple[float, float] | None:
    """(width, height) of the scanned area in nm where the file says both (Bruker, Gwyddion), else None: the other
    readers report one pixel size, taken as square."""
    _quiet()
    if fmt == "bruker":
        import pySPM

        size = pySPM.Bruker(path).get_channel(channel).size["real"]
        unit = {"pm": 1e-3, "nm": 1.0, "um": 1e3, "µm": 1e3, "mm": 1e6}.get(size.get("unit"))
        return None if unit is None else (float(size["x"]) * unit, float(size["y"]) * unit)
    if fmt == "gwyddion":
        from AFMReader.gwy import gwy_get_channels, gwy_read_object

        document: dict = {}
        with open(path, "rb") as handle:
            handle.read(4)
            gwy_read_object(handle, data_dict=document)
        field = document[f"/{gwy_get_channels(gwy_file_structure=document)[channel]}/data"]
        return float(field["xreal"]) * 1e9, float(field["yreal"]) * 1e9
    return None


def _square_pixels(image: np.ndarray, pixel: float, extent, notes: list) -> tuple[np.ndarray, float]:
    """Resample rows so that pixels are square (bilinear), saying so in ``notes``."""
    if extent is None:
        return image, pixel
    column_nm, row_nm = extent[0] / image.shape[1], extent[1] / image.shape[0]
    if abs(row_nm / column_nm - 1.0) <= 0.005:
        return image, column_nm
    from scipy.ndimage import zoom

    rows = max(2, int(round(image.shape[0] * row_nm / column_nm)))
    notes.append(f"non-square pixels ({column_nm:.4g} nm wide, {row_nm:.4g} nm tall): {image.shape[0]} rows "
                 f"resampled to {rows} for square {column_nm:.4g} nm pixels")
    return zoom(image, (rows / image.shape[0], 1.0), order=1), column_nm


def _single_channel(fmt: str) -> bool:
    return fmt in ("wsxm-stp", "wsxm-top")


def list_channels(path) -> list[str]:
    """The channel names of an instrument file, as its reader names them.

    Raises
    ------
    ValueError
        Not an instrument file, or unreadable (the message names the file).
    """
    path = Path(path)
    fmt = _checked_format(path)
    if _single_channel(fmt):
        return ["Topography"]
    try:
        _load(path, fmt, _NO_CHANNEL)
    except FileNotFoundError:
        raise
    except Exception as exc:  # the readers refuse an unknown channel with the list of those the file has
        if isinstance(exc, ValueError) and str(exc).startswith(f"{path}: "):
            raise  # our own check already named the file and the reason
        found = _CHANNEL_LIST.search(str(exc))
        if found is None:
            raise ValueError(f"{path}: not a readable {fmt} file ({type(exc).__name__}: {exc})") from None
        try:
            listed = ast.literal_eval(found.group(1).strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"{path}: could not list its channels ({found.group(1)[:80]})") from None
        return [str(name) for name in listed]
    raise ValueError(f"{path}: the reader accepted a channel no file has; cannot list its channels")


def _checked_format(path: Path) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fmt = raw_format(path)
    if fmt is None:
        raise ValueError(f"{path}: not an instrument file tmdafm reads (suffixes {', '.join(sorted(RAW_SUFFIXES))} "
                         "or a numbered Bruker file)")
    return fmt


def height_channel(channels) -> str | None:
    """The first of :data:`HEIGHT_CHANNELS` among ``channels`` (case-insensitive), or None."""
    by_lower = {str(c).lower(): str(c) for c in channels}
    return next((by_lower[name.lower()] for name in HEIGHT_CHANNELS if name.lower() in by_lower), None)


def read_scan(path, *, channel: str | None = None) -> Scan:
    """Read one channel of an instrument file as heights in nm.

    Parameters
    ----------
    path : str or Path
        An instrument file (:func:`raw_format`).
    channel : str, optional
        Channel name (:func:`list_channels`); default the height channel (:func:`height_channel`).

    Returns
    -------
    Scan

    Raises
    ------
    ValueError
        Unreadable file, unknown channel (the message lists the file's channels), no height channel, or a scan
        with no finite heights; each message names the file.
    """
    from .images import _check_pixels

    path = Path(path)
    fmt = _checked_format(path)
    if channel is None and not _single_channel(fmt):
        channels = list_channels(path)
        if not channels:
            raise ValueError(f"{path}: no readable channel (truncated or damaged {fmt} file)")
        channel = height_channel(channels)
        if channel is None:
            raise ValueError(f"{path}: no height channel among {channels}; choose one with --channel NAME")
    channel = channel or "Topography"
    try:
        image, pixel, notes = _load(path, fmt, channel)
    except FileNotFoundError:
        raise
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: {message}") from None
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) == 0:
        raise ValueError(f"{path}: channel {channel!r} is not a 2-D image (shape {image.shape})")
    _check_pixels(*image.shape, path)
    if not np.isfinite(image).any():
        raise ValueError(f"{path}: channel {channel!r} holds no finite heights")
    pixel = float(pixel) if pixel is not None else float("nan")
    if not np.isfinite(pixel) or pixel <= 0:
        raise ValueError(f"{path}: the file gives no usable pixel size ({pixel!r})")
    notes = list(notes)
    image, pixel = _square_pixels(image, pixel, _extent_nm(path, fmt, channel), notes)
    return Scan(image, pixel, channel, fmt, str(path), notes)


# --- from a scan to the paper's crops ---------------------------------------------------------------------------

#: The paper's protocol: the central 1 µm x 1 µm of each (5 µm) scan.
DEFAULT_CROP_UM = 1.0
#: Bump when reading, levelling or cropping changes what an instrument file's image is (caches keyed by it).
VIEW_VERSION = 1


def view_key(crop_um: float | None = DEFAULT_CROP_UM, levelling: str = "default", channel: str | None = None) -> str:
    """What an instrument file's image depends on besides its bytes, for cache keys."""
    return f"scan-view-{VIEW_VERSION}:{crop_um!r}:{levelling}:{channel}"


def crop_boxes(shape, pixel_size_nm: float, *, crop_um: float | None = DEFAULT_CROP_UM, tile: bool = False,
               source: str = "scan") -> list[tuple[int, int, int, int]]:
    """Pixel boxes ``(row, column, rows, columns)`` of the crops of a scan.

    Parameters
    ----------
    shape : (rows, columns)
    pixel_size_nm : float
    crop_um : float or None
        Side of a square crop in µm; None: the whole scan (one box).
    tile : bool
        Every non-overlapping crop of the scan, row by row (centred as a grid), instead of the central one.
    source : str
        Named in error messages.

    Raises
    ------
    ValueError
        A crop under :data:`~tmdafm_core.data.images.MIN_SIDE_PX` pixels, or larger than the scan; the message gives
        the scan size and pixel size.
    """
    from .images import MIN_SIDE_PX

    rows, columns = shape
    size = f"{columns * pixel_size_nm / 1000:.3g} x {rows * pixel_size_nm / 1000:.3g} µm at {pixel_size_nm:.3g} nm/px"
    if crop_um is None:
        if min(rows, columns) < MIN_SIDE_PX:
            raise ValueError(f"{source}: {columns} x {rows} px is under {MIN_SIDE_PX} px a side")
        return [(0, 0, rows, columns)]
    if crop_um <= 0:
        raise ValueError(f"crop size must be positive, got {crop_um} µm")
    side = int(round(crop_um * 1000.0 / pixel_size_nm))
    if side < MIN_SIDE_PX:
        raise ValueError(f"{source}: a {crop_um:g} µm crop would be {side} px, under {MIN_SIDE_PX} px a side "
                         f"(scan {size})")
    if side > min(rows, columns):
        raise ValueError(f"{source}: the scan ({size}) is smaller than a {crop_um:g} µm crop; use --no-crop or a "
                         "smaller --crop-um")
    if not tile:
        return [((rows - side) // 2, (columns - side) // 2, side, side)]
    top, left = (rows - rows // side * side) // 2, (columns - columns // side * side) // 2
    return [(top + r * side, left + c * side, side, side) for r in range(rows // side) for c in range(columns // side)]


@dataclass
class Crop:
    """A levelled crop of a scan and where it came from (what ``manifest.csv`` records); ``scan_nm`` is the whole
    levelled scan it was cut from (one array shared by a scan's crops)."""

    height_nm: np.ndarray
    pixel_size_nm: float
    provenance: dict
    scan_nm: np.ndarray | None = None


def prepare_scan(path, *, channel: str | None = None, levelling: str = "default",
                 crop_um: float | None = DEFAULT_CROP_UM, tile: bool = False) -> list[Crop]:
    """Read, level (:func:`tmdafm_core.data.levelling.level`, on the whole scan) and crop an instrument file.

    Returns
    -------
    list of Crop
        One crop (the central one), every tile (``tile=True``) or the whole scan (``crop_um=None``). Provenance:
        ``source_file``, ``format``, ``channel``, ``levelling`` (pipeline name), ``levelling_steps`` (JSON),
        ``scan_width_um``, ``scan_height_um``, ``crop_x0_um``, ``crop_y0_um``, ``crop_x1_um``, ``crop_y1_um``,
        ``notes``.
    """
    return crop_scan(read_scan(path, channel=channel), levelling=levelling, crop_um=crop_um, tile=tile)


def crop_scan(scan: Scan, *, levelling: str = "default", crop_um: float | None = DEFAULT_CROP_UM,
              tile: bool = False) -> list[Crop]:
    """Level a scan already read (:func:`read_scan`) and cut its crops, as :func:`prepare_scan` does."""
    import json

    from .levelling import level

    path = scan.source
    boxes = crop_boxes(scan.height_nm.shape, scan.pixel_size_nm, crop_um=crop_um, tile=tile, source=path)
    levelled, steps = level(scan.height_nm, levelling)
    width_um, height_um = scan.size_um
    um = scan.pixel_size_nm / 1000.0
    crops = []
    for row, column, rows, columns in boxes:
        crops.append(Crop(levelled[row:row + rows, column:column + columns].copy(), scan.pixel_size_nm, {
            "source_file": path, "format": scan.format, "channel": scan.channel, "levelling": levelling,
            "levelling_steps": json.dumps(steps), "scan_width_um": round(width_um, 6),
            "scan_height_um": round(height_um, 6), "crop_x0_um": round(column * um, 6),
            "crop_y0_um": round(row * um, 6), "crop_x1_um": round((column + columns) * um, 6),
            "crop_y1_um": round((row + rows) * um, 6), "notes": "; ".join(scan.notes)}, levelled))
    return crops
