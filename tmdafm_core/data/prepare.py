"""``tmdafm prepare``: a folder of instrument files -> our TIFF layout with ``manifest.csv`` and provenance.

Each scan is read (:func:`tmdafm_core.data.scans.read_scan`), levelled on the whole scan, and cropped: by default
the paper's protocol, the central 1 µm x 1 µm; ``tile=True`` cuts every non-overlapping 1 µm tile (they share the
scan's sample id, so splits stay by sample); ``crop_um=None`` keeps the whole scan. Heights are written in nm as
float32 TIFFs whose resolution tags carry the pixel size; ``manifest.csv`` lists ``path, material, sample_id, split,
pixel_size_nm`` and where every image came from (:func:`tmdafm_core.data.scans.prepare_scan`).

Material and sample id come from the file name (the conventions of :func:`tmdafm_core.data.readers.
parse_tmd_afm_name`) or from a labels CSV (columns ``source, material, sample_id`` and optionally ``split``;
``source`` is the file's path relative to the raw folder, or its name).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .images import save_tiff
from .labels import parse_elements
from .readers import MANIFEST_CSV_NAME, parse_tmd_afm_name
from .scans import DEFAULT_CROP_UM, is_raw_scan, prepare_scan

PROVENANCE_COLUMNS = ("source_file", "format", "channel", "levelling", "levelling_steps", "scan_width_um",
                      "scan_height_um", "crop_x0_um", "crop_y0_um", "crop_x1_um", "crop_y1_um", "notes")


def raw_files(folder) -> list[Path]:
    """Instrument files under ``folder`` (recursively, hidden files and folders left out), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_raw_scan(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_labels(csv_path) -> dict[str, dict]:
    """``{source: {"material", "sample_id", "split"}}`` from a labels CSV (see the module docstring)."""
    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("source", "material", "sample_id") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; labels need source, material, sample_id")
    labels = {}
    for line, row in enumerate(table.itertuples(index=False), start=2):
        try:
            parse_elements(row.material)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{csv_path}: line {line}: column material: {exc}") from None
        split = getattr(row, "split", None)
        if isinstance(split, str) and split.lower() not in ("train", "val", "test"):
            raise ValueError(f"{csv_path}: line {line}: column split: {split!r} is not train, val or test")
        labels[str(row.source)] = {"material": row.material, "sample_id": str(row.sample_id),
                                   "split": split.lower() if isinstance(split, str) else None}
    return labels


def _label_of(path: Path, relative: str, labels: dict | None) -> dict:
    if labels is not None:
        for key in (relative, path.name):
            if key in labels:
                return labels[key]
        raise ValueError("not in the labels CSV (by its path relative to the raw folder or its name)")
    material, sample_id, held_out = parse_tmd_afm_name(path.name)
    return {"material": material, "sample_id": sample_id, "split": "test" if held_out else None}


def _clear_out(out: Path) -> None:
    """Refuse a folder holding anything but an earlier ``prepare`` output; remove that output's images."""
    if not out.exists() or not any(out.iterdir()):
        return
    manifest = out / MANIFEST_CSV_NAME
    try:
        earlier = pd.read_csv(manifest, dtype=str) if manifest.is_file() else None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        earlier = None
    if earlier is None or "source_file" not in earlier.columns:
        raise ValueError(f"{out}: not empty and not an earlier `tmdafm prepare` output; choose an empty --out")
    for name in earlier["path"].dropna():
        target = (out / name).resolve()
        if target.parent == out.resolve() and target.suffix == ".tif":
            target.unlink(missing_ok=True)


def prepare_folder(raw, out, *, crop_um: float | None = DEFAULT_CROP_UM, tile: bool = False,
                   channel: str | None = None, levelling: str = "default", labels=None,
                   strict: bool = False, progress=None) -> pd.DataFrame:
    """Level and crop every instrument file of ``raw`` into ``out`` (see the module docstring).

    Parameters
    ----------
    raw : str or Path
        Folder of instrument files (searched recursively).
    out : str or Path
        Output folder: empty, new, or an earlier ``prepare`` output (its files are replaced).
    crop_um, tile, channel, levelling
        As in :func:`tmdafm_core.data.scans.prepare_scan`.
    labels : str or Path, optional
        Labels CSV; without it, labels come from the file names.
    strict : bool
        Stop at the first file that cannot be used instead of listing it in ``attrs["skipped"]``.
    progress : callable, optional
        ``progress(done, total)`` after each file.

    Returns
    -------
    DataFrame
        The written manifest (``attrs["skipped"]``: ``[(file, reason)]``).
    """
    raw, out = Path(raw), Path(out)
    files = raw_files(raw)
    if not files:
        raise ValueError(f"{raw}: no instrument files (.spm, .gwy, .ibw, .jpk, ... or numbered Bruker files)")
    label_table = read_labels(labels) if labels is not None else None
    _clear_out(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], []
    for done, path in enumerate(files, start=1):
        relative = path.relative_to(raw).as_posix()
        try:
            label = _label_of(path, relative, label_table)
            crops = prepare_scan(path, channel=channel, levelling=levelling, crop_um=crop_um, tile=tile)
        except ValueError as exc:
            reason = str(exc).removeprefix(f"{path}: ")
            if strict:
                raise ValueError(f"{path}: {reason} (remove --strict to skip such files)") from None
            skipped.append((relative, reason))
            continue
        stem = "_".join([*Path(relative).parent.parts, path.name.split(".")[0]])
        for k, crop in enumerate(crops):
            name = f"{stem}.tif" if len(crops) == 1 else f"{stem}_tile{k:02d}.tif"
            save_tiff(out / name, crop.height_nm, pixel_size_nm=crop.pixel_size_nm)
            rows.append({"path": name, **label, "pixel_size_nm": crop.pixel_size_nm,
                         **{**crop.provenance, "source_file": relative}})
        if progress is not None:
            progress(done, len(files))
    if not rows:
        first = f"; first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise ValueError(f"{raw}: no scan could be prepared ({len(skipped)} skipped{first})")
    manifest = pd.DataFrame(rows, columns=["path", "material", "sample_id", "split", "pixel_size_nm",
                                           *PROVENANCE_COLUMNS])
    temporary = out / f".{MANIFEST_CSV_NAME}.tmp"
    manifest.to_csv(temporary, index=False)
    temporary.replace(out / MANIFEST_CSV_NAME)
    manifest.attrs["skipped"] = skipped
    return manifest
