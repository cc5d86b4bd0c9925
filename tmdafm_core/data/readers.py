"""Readers: every supported data source becomes one tidy manifest (a pandas DataFrame, one row per image).

Sources
-------
* the public TMD-AFM layout: a folder of TIFFs named ``{material}_{x}_{sample_id}_..._{test?}.tif``;
* a folder of class folders (``root/MoS2/*.png``);
* a manifest CSV with columns ``path, material, sample_id`` and optionally ``split, pixel_size_nm``;
* a plain folder of images without labels;
* feature tables (.parquet, .csv, trusted .pkl) through :func:`read_feature_table`.

Manifest columns, in order: ``image`` (path relative to the data root), ``path`` (absolute), ``material`` (str or
NA), ``sample_id``, ``split`` ("train", "test" or NA when the source marks no held-out set), ``height``, ``width``,
``pixel_size_nm``, then any extra columns of a manifest CSV. ``manifest.attrs`` holds ``root``, ``source`` (which
reader) and ``skipped`` (a list of ``(file, reason)`` for files that could not be used).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .images import DEFAULT_SCAN_SIZE_NM, IMAGE_SUFFIXES, MIN_SIDE_PX, default_crop, probe_image
from .labels import parse_elements
from .scans import DEFAULT_CROP_UM, RAW_SUFFIXES, is_raw_scan

MANIFEST_COLUMNS = ("image", "path", "material", "sample_id", "split", "height", "width", "pixel_size_nm")
MANIFEST_CSV_NAME = "manifest.csv"
#: Folders archive tools add beside the data (never a class).
_IGNORED_FOLDERS = {"__macosx"}
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "train", "valid": "train", "validation": "train",
                  "test": "test", "holdout": "test", "held-out": "test"}
_IGNORED_NAMES = {MANIFEST_CSV_NAME, "readme", "readme.md", "readme.txt", "license", "thumbs.db", "desktop.ini"}


class _Collector:
    """Gathers manifest rows and skipped files for one read."""

    def __init__(self, root: Path, strict: bool, crop_um: float | None = DEFAULT_CROP_UM):
        self.root = root
        self.strict = strict
        self.crop_um = crop_um
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []

    def skip(self, path: Path, reason: str) -> None:
        # A name that is not valid UTF-8 is shown with replacement characters (printing it would fail).
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if self.strict:
            raise ValueError(f"{shown}: {reason} (remove --strict to skip such files)")
        self.skipped.append((shown, reason))

    def add(self, path: Path, *, material, sample_id, split, pixel_size_nm=None, extra=None) -> None:
        try:
            height, width, tag_pixel_nm = probe_image(path, crop_um=self.crop_um)
        except ValueError as exc:
            self.skip(path, str(exc).removeprefix(f"{path}: "))
            return
        if min(height, width) < MIN_SIDE_PX:
            self.skip(path, f"too small: {width} x {height} px (at least {MIN_SIDE_PX} px a side)")
            return
        if pixel_size_nm is None or pd.isna(pixel_size_nm):
            pixel_size_nm = tag_pixel_nm if tag_pixel_nm is not None else DEFAULT_SCAN_SIZE_NM / width
        if is_raw_scan(path):  # what was done to the scan travels with the image (source, channel, levelling, box)
            extra = {**default_crop(path, self.crop_um).provenance, **(extra or {}),
                     "crop_um": np.nan if self.crop_um is None else float(self.crop_um)}
        self.rows.append({
            "image": path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path),
            "path": str(path.resolve()),
            "material": material,
            "sample_id": str(sample_id),
            "split": split,
            "height": height,
            "width": width,
            "pixel_size_nm": float(pixel_size_nm),
            **(extra or {}),
        })

    def manifest(self, source: str) -> pd.DataFrame:
        if not self.rows:
            detail = f"; skipped {len(self.skipped)} file(s), first: {self.skipped[0][0]}: {self.skipped[0][1]}" \
                if self.skipped else ""
            raise ValueError(f"{self.root}: no readable images found{detail}")
        frame = pd.DataFrame(self.rows)
        extra = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
        frame = frame[list(MANIFEST_COLUMNS) + extra]
        frame["material"] = frame["material"].astype("string")
        frame["split"] = frame["split"].astype("string")
        if not (frame["split"] == "test").any():
            # No held-out marks at all: let split_dataset choose the test samples.
            frame["split"] = pd.Series(pd.NA, index=frame.index, dtype="string")
        else:
            frame["split"] = frame["split"].fillna("train")
        frame = frame.sort_values("image", kind="stable").reset_index(drop=True)
        frame.attrs.update(root=str(self.root), source=source, skipped=list(self.skipped))
        return frame


def _is_image(path: Path) -> bool:
    """A processed image (by suffix) or an instrument file (levelled and cropped on reading)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_raw_scan(path)


def _image_files(folder: Path, collector: _Collector) -> list[Path]:
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            collector.skip(path, "file name is not valid UTF-8 (rename it)")
            continue
        if not path.is_file():
            collector.skip(path, "not a regular file (FIFO, socket or device)")
        elif _is_image(path):
            files.append(path)
        elif path.name.lower() not in _IGNORED_NAMES:
            collector.skip(path, f"not an image type (expected one of {sorted(IMAGE_SUFFIXES)} or an instrument "
                                 "file)")
    return files


#: File-name conventions of the TMD-AFM layout: fields split by ``_``, (material field, sample-id field), from 0.
#: ``paper`` is the public data set's, read as the paper's own code does (``name.split('_')``: [1] the material,
#: [3] an integer sample id); ``material-first`` is our synthetic generator's (``MoS2_syn_MoS2-s001_003.tif``).
NAMING_CONVENTIONS = {"paper": (1, 3), "material-first": (0, 2)}
NAMING_DESCRIPTIONS = {
    "paper": "paper convention: field 1 = material, field 3 = integer sample id (fields split by '_', from 0)",
    "material-first": "material-first convention: field 0 = material, field 2 = sample id",
}


def _parse_with(fields: list[str], convention: str) -> tuple[str, str]:
    material_at, sample_at = NAMING_CONVENTIONS[convention]
    if len(fields) <= sample_at:
        raise ValueError(f"expected at least {sample_at + 1} '_'-separated fields ({NAMING_DESCRIPTIONS[convention]})")
    parse_elements(fields[material_at])
    sample_id = fields[sample_at]
    if convention == "paper":
        try:
            sample_id = str(int(sample_id))
        except ValueError:
            raise ValueError(f"field {sample_at} {sample_id!r} is not an integer sample id "
                             f"({NAMING_DESCRIPTIONS[convention]})") from None
    return fields[material_at], sample_id


def parse_tmd_afm_name(name: str, convention: str | None = None) -> tuple[str, str, bool]:
    """Material, sample id and held-out flag from a TMD-AFM file name.

    Fields are separated by ``_`` and counted from 0; a last field ``test`` (before the extension) marks the
    held-out set. Conventions (:data:`NAMING_CONVENTIONS`): ``"paper"``, the public data set's as its authors'
    code reads it (field 1 the material, field 3 an integer sample id; field 0 is not a material), and
    ``"material-first"`` (field 0 the material, field 2 the sample id; our synthetic data). ``None`` tries the
    paper's first.

    Raises
    ------
    ValueError
        When the name does not parse under the convention (or under either, with ``None``).
    """
    fields = Path(name).stem.split("_")
    conventions = [convention] if convention is not None else list(NAMING_CONVENTIONS)
    if any(c not in NAMING_CONVENTIONS for c in conventions):
        raise ValueError(f"unknown naming convention {convention!r}; use one of {', '.join(NAMING_CONVENTIONS)}")
    reasons = []
    for candidate in conventions:
        try:
            material, sample_id = _parse_with(fields, candidate)
        except ValueError as exc:
            reasons.append(str(exc))
            continue
        return material, sample_id, fields[-1].lower() == "test"
    raise ValueError(f"{name}: {'; '.join(reasons)}")


def naming_convention(names) -> str | None:
    """The convention (:data:`NAMING_CONVENTIONS`) under which most of ``names`` parse, or None if none does."""
    counts = {}
    for convention in NAMING_CONVENTIONS:
        counts[convention] = 0
        for name in names:
            try:
                parse_tmd_afm_name(name, convention)
                counts[convention] += 1
            except ValueError:
                pass
    best = max(counts, key=counts.get)
    return best if counts[best] else None


def read_tmd_afm_folder(folder, *, strict: bool = False, convention: str | None = None,
                        crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """Read a folder in the public TMD-AFM TIFF layout (see :func:`parse_tmd_afm_name`).

    One naming convention serves the whole folder: ``convention``, or the one most file names parse under
    (``manifest.attrs['naming']``; files that do not parse under it are skipped with the reason).
    """
    folder = Path(folder)
    collector = _Collector(folder, strict, crop_um)
    files = _image_files(folder, collector)
    convention = convention or naming_convention([p.name for p in files]) or "paper"
    for path in files:
        try:
            material, sample_id, held_out = parse_tmd_afm_name(path.name, convention)
        except ValueError as exc:
            collector.skip(path, str(exc).removeprefix(f"{path.name}: "))
            continue
        collector.add(path, material=material, sample_id=sample_id, split="test" if held_out else "train")
    manifest = collector.manifest("tmd-afm")
    manifest.attrs["naming"] = convention
    return manifest


def read_class_folders(folder, *, strict: bool = False, crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """Read ``folder/<material>/<image>``: one subfolder per class.

    Sample ids come from TMD-AFM-style names when the files have them; otherwise every image is its own sample
    (``manifest.attrs['notes']`` says so, because grouped splits then cannot keep one sample's images together).
    """
    folder = Path(folder)
    collector = _Collector(folder, strict, crop_um)
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name.lower() not in _IGNORED_FOLDERS)
    notes = []
    for class_dir in class_dirs:
        material = class_dir.name
        try:
            parse_elements(material)
        except ValueError as exc:
            collector.skip(class_dir, f"folder name is not a material ({exc})")
            continue
        files = _image_files(class_dir, collector)
        if not files:
            collector.skip(class_dir, f"class folder {material!r} holds no images")
            continue
        # The material is the folder's; the sample id sits where the names' convention puts it (field 2 when the
        # names carry no material).
        sample_at = NAMING_CONVENTIONS[naming_convention([p.name for p in files]) or "material-first"][1]
        for path in files:
            fields = path.stem.split("_")
            if len(fields) > sample_at:
                sample_id = f"{material}/{fields[sample_at]}"
            else:
                sample_id = f"{material}/{path.stem}"
                if not notes:
                    notes.append("file names carry no sample id: each image is treated as its own sample")
            held_out = len(fields) >= 2 and fields[-1].lower() == "test"
            collector.add(path, material=material, sample_id=sample_id, split="test" if held_out else "train")
    manifest = collector.manifest("class-folders")
    manifest.attrs["notes"] = notes
    return manifest


def read_image_folder(folder, *, strict: bool = False, crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """Read a plain folder of images without labels (material NA; each file its own sample)."""
    folder = Path(folder)
    collector = _Collector(folder, strict, crop_um)
    for path in _image_files(folder, collector):
        collector.add(path, material=pd.NA, sample_id=path.stem, split=pd.NA)
    return collector.manifest("images")


def read_manifest_csv(csv_path, *, strict: bool = False, crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """Read a manifest CSV: columns ``path, material, sample_id`` and optionally ``split, pixel_size_nm``.

    Relative paths are taken from the CSV's folder. ``split`` may say train/val/test (val counts as train: the
    cross-validation folds choose validation images). Other columns are carried into the manifest.
    """
    csv_path = Path(csv_path)
    try:
        table = pd.read_csv(csv_path, dtype={"path": str, "material": "string", "sample_id": str, "split": "string"})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{csv_path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("path", "material", "sample_id") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing column(s) {missing}; a manifest needs path, material, sample_id")
    root = csv_path.parent
    collector = _Collector(root, strict, crop_um)
    extra_columns = [c for c in table.columns if c not in MANIFEST_COLUMNS]
    for line, row in enumerate(table.itertuples(index=False), start=2):
        row = row._asdict()
        path = root / str(row["path"])
        if pd.isna(row["path"]) or not path.is_file():
            collector.skip(path, f"listed on line {line} of {csv_path.name} but not found")
            continue
        material = row["material"]
        if not pd.isna(material):
            try:
                parse_elements(material)
            except ValueError as exc:
                raise ValueError(f"{csv_path}: line {line}: {exc}") from None
        split = row.get("split", pd.NA)
        if not pd.isna(split):
            if str(split).lower() not in _SPLIT_ALIASES:
                raise ValueError(f"{csv_path}: line {line}: split {split!r} is not one of train/val/test")
            split = _SPLIT_ALIASES[str(split).lower()]
        pixel_nm = row.get("pixel_size_nm", None)
        if pixel_nm is not None and not pd.isna(pixel_nm):
            try:
                pixel_nm = float(pixel_nm)
            except (TypeError, ValueError):
                raise ValueError(f"{csv_path}: line {line}: column pixel_size_nm: {pixel_nm!r} is not a number "
                                 "(nm per pixel)") from None
            if not (np.isfinite(pixel_nm) and pixel_nm > 0):
                raise ValueError(f"{csv_path}: line {line}: pixel_size_nm must be positive, got {pixel_nm}")
        collector.add(path, material=material, sample_id=row["sample_id"], split=split, pixel_size_nm=pixel_nm,
                      extra={c: row[c] for c in extra_columns})
    return collector.manifest("manifest-csv")


def read_dataset(source, *, strict: bool = False, crop_um: float | None = DEFAULT_CROP_UM) -> pd.DataFrame:
    """Read any supported image data set and return its tidy manifest.

    Detection: a ``.csv`` file is a manifest; a folder holding ``manifest.csv`` is read through it; a folder of
    subfolders is class folders; a folder of images whose names parse as TMD-AFM names is the TMD-AFM layout;
    any other folder of images is read without labels.

    Parameters
    ----------
    source : str or Path
        File or folder.
    strict : bool
        Raise on the first unreadable or unparseable file instead of listing it in ``manifest.attrs['skipped']``.
    crop_um : float or None
        Instrument files: side of the central crop taken after levelling (the paper's 1 µm), or None for whole
        scans; recorded per image in the manifest's ``crop_um`` column.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return read_manifest_csv(source, strict=strict, crop_um=crop_um)
        raise ValueError(f"{source}: a data set is a folder or a manifest .csv (for one image use `tmdafm predict`)")
    if (source / MANIFEST_CSV_NAME).is_file():
        return read_manifest_csv(source / MANIFEST_CSV_NAME, strict=strict, crop_um=crop_um)
    entries = [p for p in source.iterdir() if not p.name.startswith(".")]
    images = [p for p in entries if p.is_file() and _is_image(p)]
    if not images and any(p.is_dir() for p in entries):
        return read_class_folders(source, strict=strict, crop_um=crop_um)
    if not images:
        raise ValueError(f"{source}: empty folder (no images of type {sorted(IMAGE_SUFFIXES)}, no instrument files "
                         f"({', '.join(sorted(RAW_SUFFIXES))}, numbered Bruker files) and no class folders)")
    parses = 0
    for path in images:
        try:
            parse_tmd_afm_name(path.name)
            parses += 1
        except ValueError:
            pass
    if parses * 2 > len(images):
        return read_tmd_afm_folder(source, strict=strict, crop_um=crop_um)
    return read_image_folder(source, strict=strict, crop_um=crop_um)


# --- feature tables ---------------------------------------------------------------------------------------------

_SAMPLE_GUESSES = ("sample_id", "sampleid", "sample", "group", "groups")
_LABEL_GUESSES = ("label", "labels", "target", "targets", "material", "class", "y")
_IMAGE_GUESSES = ("image", "path", "file", "filename")
_METADATA_COLUMNS = ("pixel_size_nm",)


@dataclass
class FeatureTable:
    """A feature table read from disk.

    Attributes
    ----------
    frame : DataFrame
        One row per image: ``image`` (when the table has one), ``sample_id``, ``material``.
    features : ndarray of float32, shape (n_images, n_features)
    feature_names : list of str
    guessed : list of str
        Human-readable notes on which columns were guessed (print them).
    """

    frame: pd.DataFrame
    features: np.ndarray
    feature_names: list[str]
    guessed: list[str] = field(default_factory=list)


def _load_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix in (".pkl", ".pickle"):
            # Unpickling runs code: only for tables the user made; never for uploads.
            return pd.read_pickle(path)
    except Exception as exc:  # readers raise many types for a damaged file
        raise ValueError(f"{path}: not a readable {suffix} table ({type(exc).__name__}: {exc})") from None
    raise ValueError(f"{path}: unsupported table type {suffix!r}; use .parquet, .csv or a trusted .pkl")


def _pick_column(table: pd.DataFrame, given, guesses, role: str, path: Path, guessed: list[str]) -> str | None:
    if given is not None:
        if given not in table.columns:
            raise ValueError(f"{path}: no column {given!r} for the {role}; columns are {list(table.columns)[:20]}")
        return given
    lower = {str(c).lower(): c for c in table.columns}
    for guess in guesses:
        if guess in lower:
            guessed.append(f"{role} column: {lower[guess]!r} (guessed)")
            return lower[guess]
    return None


def _as_vector(value):
    if isinstance(value, str):
        return np.array([float(v) for v in value.strip("[]() ").replace(",", " ").split()], dtype=np.float32)
    return np.asarray(value, dtype=np.float32).ravel()


def _guess_feature_columns(table: pd.DataFrame, reserved: set, guessed: list) -> list:
    """The single array-valued column if there is one, else every other numeric column (said in ``guessed``)."""
    # pandas 3 reads text as the "str" dtype, not object: look at the values, not the dtype.
    array_like = [c for c in table.columns if c not in reserved and not pd.api.types.is_numeric_dtype(table[c])
                  and isinstance(table[c].iloc[0], (list, tuple, np.ndarray, str))
                  and (not isinstance(table[c].iloc[0], str) or table[c].iloc[0].lstrip().startswith("["))]
    if len(array_like) == 1:
        feature_cols = array_like
        guessed.append(f"features: array column {array_like[0]!r} (guessed)")
    else:
        feature_cols = [c for c in table.columns if c not in reserved and pd.api.types.is_numeric_dtype(table[c])]
        if feature_cols:
            guessed.append(f"features: {len(feature_cols)} numeric columns (guessed)")
        # A column of numbers with a stray text cell reads as text: say so instead of dropping it silently.
        for column in table.columns:
            if column in reserved or column in feature_cols or column == "split":
                continue
            numbers = pd.to_numeric(table[column], errors="coerce")
            bad = numbers.isna() & table[column].notna()
            if numbers.notna().sum() > bad.sum() and bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                guessed.append(f"column {column!r} left out of the features: row {row} holds "
                               f"{table[column].iloc[row]!r}, not a number (fix it, or name the columns with "
                               "--feature-cols)")
    return feature_cols


def _feature_matrix(table: pd.DataFrame, feature_cols: list, path: Path) -> tuple[np.ndarray, list[str]]:
    """The (rows, features) matrix and the feature names, from one array column or many numeric ones."""
    if len(feature_cols) == 1 and not pd.api.types.is_numeric_dtype(table[feature_cols[0]]):
        try:
            vectors = [_as_vector(v) for v in table[feature_cols[0]]]
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: column {feature_cols[0]!r} does not hold numeric vectors ({exc})") from None
        lengths = {len(v) for v in vectors}
        if len(lengths) != 1:
            raise ValueError(f"{path}: column {feature_cols[0]!r} holds vectors of different lengths {sorted(lengths)}")
        features = np.stack(vectors)
        names = [f"{feature_cols[0]}_{i}" for i in range(features.shape[1])]
    else:
        not_numeric = [c for c in feature_cols if not pd.api.types.is_numeric_dtype(table[c])]
        if not_numeric:
            raise ValueError(f"{path}: feature column(s) {not_numeric} are not numeric")
        features = table[feature_cols].to_numpy(dtype=np.float32)
        names = [str(c) for c in feature_cols]
    if not np.isfinite(features).all():
        bad_row = int(np.where(~np.isfinite(features).all(axis=1))[0][0])
        raise ValueError(f"{path}: non-finite feature values (first in row {bad_row}); fill or drop them first")
    return features, names


def read_feature_table(path, *, sample_col: str | None = None, label_col: str | None = None,
                       feature_cols=None, image_col: str | None = None) -> FeatureTable:
    """Read a table of per-image feature vectors.

    Parameters
    ----------
    path : str or Path
        ``.parquet``, ``.csv`` or a trusted pandas ``.pkl``.
    sample_col, label_col, image_col : str, optional
        Columns holding the sample id, the material label and the image id. Guessed from common names when not
        given (sample_id/sampleId/sample/group; label/target/targets/material/class; image/path/file).
    feature_cols : str or list of str, optional
        One array-valued column, or many numeric columns. By default: the single column whose values are arrays
        (or ``[..]`` strings in a CSV) if there is one, else every other numeric column.
    """
    path = Path(path)
    table = _load_table(path)
    if table.empty:
        raise ValueError(f"{path}: the table has no rows")
    guessed: list[str] = []
    sample = _pick_column(table, sample_col, _SAMPLE_GUESSES, "sample id", path, guessed)
    label = _pick_column(table, label_col, _LABEL_GUESSES, "label", path, guessed)
    image = _pick_column(table, image_col, _IMAGE_GUESSES, "image", path, guessed)
    reserved = {c for c in (sample, label, image) if c is not None}
    if feature_cols is None:  # metadata of a `tmdafm features` table, not a measurement of the image
        reserved |= {c for c in _METADATA_COLUMNS if c in table.columns}

    if isinstance(feature_cols, str):
        feature_cols = [feature_cols]
    if feature_cols is None:
        feature_cols = _guess_feature_columns(table, reserved, guessed)
    missing = [c for c in feature_cols if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: feature column(s) {missing} not found")
    if not feature_cols:
        raise ValueError(f"{path}: no feature columns found; name them with feature_cols / --feature-cols")

    features, names = _feature_matrix(table, feature_cols, path)
    frame = pd.DataFrame(index=table.index)
    if image is not None:
        frame["image"] = table[image].astype(str)
    frame["sample_id"] = table[sample].astype(str) if sample is not None else \
        (frame["image"] if image is not None else pd.Series(table.index.astype(str), index=table.index))
    if sample is None:
        guessed.append("no sample-id column: each row is treated as its own sample")
    frame["material"] = table[label].astype("string") if label is not None else pd.Series(pd.NA, index=table.index,
                                                                                           dtype="string")
    if "split" in table.columns and "split" not in reserved:
        # A held-out mark travels with the features (e.g. from `tmdafm extract`), so the test set stays the same.
        marks = table["split"].astype("string").str.lower()
        frame["split"] = marks.map(lambda v: _SPLIT_ALIASES.get(v, pd.NA) if isinstance(v, str) else pd.NA) \
            .astype("string")
    if label is not None:
        for name in frame["material"].dropna().unique():
            try:
                parse_elements(name)
            except ValueError as exc:
                raise ValueError(f"{path}: column {label!r}: {exc}") from None
    return FeatureTable(frame.reset_index(drop=True), features, names, guessed)


# --- duplicates -------------------------------------------------------------------------------------------------

def find_duplicates(manifest: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Images listed twice: the same file, or files with identical content (byte digest).

    Returns ``(image, image it repeats, "same file" | "identical content")`` for every repeat, in manifest order.
    A repeat lets the same picture be trained on and scored on (train/test leakage).
    """
    from ..store import file_digest

    first_by_path, first_by_digest, repeats = {}, {}, []
    for image, path in zip(manifest["image"].astype(str), manifest["path"].astype(str), strict=True):
        resolved = str(Path(path).resolve())
        if resolved in first_by_path:
            repeats.append((image, first_by_path[resolved], "same file"))
            continue
        first_by_path[resolved] = image
        try:
            digest = file_digest(resolved)
        except OSError:
            continue
        if digest in first_by_digest:
            repeats.append((image, first_by_digest[digest], "identical content"))
        else:
            first_by_digest[digest] = image
    return repeats


def duplicates_message(repeats, *, limit: int = 3) -> str:
    shown = "; ".join(f"{a} = {b} ({why})" for a, b, why in repeats[:limit])
    more = f" and {len(repeats) - limit} more" if len(repeats) > limit else ""
    return f"{len(repeats)} image(s) repeat another: {shown}{more}"


# --- summary ----------------------------------------------------------------------------------------------------

def _scan_table(manifest: pd.DataFrame) -> str:
    """One line per instrument file of a manifest: format, channel, scan size, physical pixel size, crop."""
    scans = manifest.dropna(subset=["scan_width_um"])
    table = pd.DataFrame({
        "scan": scans["image"], "format": scans["format"], "channel": scans["channel"],
        "scan (um)": [f"{w:.3g} x {h:.3g}" for w, h in zip(scans["scan_width_um"], scans["scan_height_um"],
                                                            strict=True)],
        "pixel (nm)": scans["pixel_size_nm"].map(lambda v: f"{v:.4g}"),
        "crop (um)": [f"x {x0:.3g}-{x1:.3g}, y {y0:.3g}-{y1:.3g}" for x0, x1, y0, y1 in
                      zip(scans["crop_x0_um"], scans["crop_x1_um"], scans["crop_y0_um"], scans["crop_y1_um"],
                          strict=True)]})
    return f"instrument files ({len(table)}; levelled, central crop):\n" + table.to_string(index=False)


def dataset_summary(manifest: pd.DataFrame) -> str:
    """Human-readable description and checks of a manifest (what `tmdafm info` prints)."""
    lines = [f"data set: {manifest.attrs.get('root', '?')} ({manifest.attrs.get('source', '?')} layout)"]
    if manifest.attrs.get("naming") in NAMING_DESCRIPTIONS:
        lines.append(f"file names: {NAMING_DESCRIPTIONS[manifest.attrs['naming']]}")
    lines.append(f"images: {len(manifest)}   samples: {manifest['sample_id'].nunique()}")
    labelled = manifest.dropna(subset=["material"])
    if len(labelled):
        split = labelled["split"].fillna("unassigned")
        counts = pd.crosstab(labelled["material"], split, margins=True, margins_name="total")
        samples = labelled.groupby("material")["sample_id"].nunique()
        samples["total"] = labelled["sample_id"].nunique()
        counts = counts.join(samples.rename("samples"))
        from .labels import LabelSpace

        space = LabelSpace.from_materials(labelled["material"])
        order = [c for c in space.classes if c in counts.index] + ["total"]
        lines += ["", "images per material x split:", counts.loc[order].to_string()]
        lines += ["", f"classes (MtC order): {', '.join(space.classes)}",
                  f"elements (MtL order): {', '.join(space.elements)}"]
    else:
        lines.append("no labels (plain image folder): usable for features, latent placement and prediction")
    sizes = manifest.groupby(["height", "width"]).size().sort_values(ascending=False)
    lines += ["", "image sizes: " + ", ".join(f"{h}x{w} px ({n})" for (h, w), n in sizes.items())]
    px = manifest["pixel_size_nm"]
    lines.append(f"pixel size: {px.min():.3g}-{px.max():.3g} nm/px (median {px.median():.3g}); "
                 f"scan size median {float((px * manifest['width']).median()):.4g} nm")
    if "scan_width_um" in manifest.columns:
        lines += ["", _scan_table(manifest)]
    checks = list(manifest.attrs.get("notes", []))
    crossing = manifest.dropna(subset=["split"]).groupby("sample_id")["split"].nunique()
    if (crossing > 1).any():
        checks.append(f"{int((crossing > 1).sum())} sample id(s) have images in both train and test, e.g. "
                      f"{crossing[crossing > 1].index[0]!r}: held-out evaluation would leak")
    if len(labelled):
        few = labelled.groupby("material")["sample_id"].nunique()
        few = few[few < 2]
        if len(few):
            checks.append(f"material(s) with a single sample: {', '.join(few.index)} (grouped splits need >= 2)")
    repeats = find_duplicates(manifest)
    if repeats:
        checks.append(duplicates_message(repeats) + ": the same picture can land in training and test; remove "
                      "the repeats (training refuses them unless --allow-duplicates)")
    skipped = manifest.attrs.get("skipped", [])
    if skipped:
        checks.append(f"{len(skipped)} file(s) skipped (listed above)")
    lines += ["", "checks: " + ("ok" if not checks else "")] + [f"  - {c}" for c in checks]
    return "\n".join(lines)
