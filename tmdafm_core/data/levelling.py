"""Levelling of raw AFM height maps, each step as Gwyddion or TopoStats defines it.

A raw scan carries the sample's tilt, a height offset per scan line (the feedback drifts between lines) and
occasional scars (a few lines that jump). These functions remove them; each takes a height map in nm (rows = slow
scan axis) and an optional boolean ``mask`` of pixels to leave out of the fits (True = a feature, not background),
and returns a new float64 array.

* :func:`plane_level`: subtract the least-squares plane ``z = a + b x + c y`` (Gwyddion *Level → Plane Level*;
  TopoStats ``remove_tilt``).
* :func:`align_rows`: subtract from every row its median (Gwyddion *Align Rows*, method *Median*; TopoStats
  ``align_rows``) or a least-squares polynomial of order k in x fitted to that row (method *Polynomial*).
* :func:`remove_scars`: replace short horizontal scars by interpolation between the rows above and below
  (Gwyddion *Correct Data → Remove Scars*).
* :func:`zero_to_median`: shift the background's median to 0 (TopoStats ``median_flatten`` result, Gwyddion *Fix
  Zero* with the median).
* :func:`mask_tall_features`: pixels higher than the background by more than ``k`` robust standard deviations
  (TopoStats' second, masked flattening pass uses a threshold above the background the same way).

:data:`PIPELINES` names whole sequences; ``"default"`` suits TMD films on sapphire (thin islands on a flat
substrate): plane, row medians, scars, then the same again with the islands masked so that they do not bias the
background, and zero at the background's median. :func:`level` runs one and returns what it did, step by step.

References
----------
Nečas, D. and Klapetek, P. (2012). Gwyddion: an open-source software for SPM data analysis. Central European
Journal of Physics 10, 181-188.
Beton, J. G. et al. (2021). TopoStats: a program for automated tracing of biomolecules from AFM images. Methods 193,
68-79.

Examples
--------
>>> import numpy as np
>>> from tmdafm_core.data.levelling import plane_level
>>> yy, xx = np.mgrid[:4, :4]
>>> bool(np.allclose(plane_level(2.0 + 0.5 * xx - 0.25 * yy), 0.0))
True
"""

from __future__ import annotations

import numpy as np


def _as_height(height) -> np.ndarray:
    height = np.array(height, dtype=np.float64)
    if height.ndim != 2 or min(height.shape) < 2:
        raise ValueError(f"height must be a 2-D map of at least 2 x 2 pixels, got shape {height.shape}")
    return height


def _background(height: np.ndarray, mask) -> np.ndarray:
    """Boolean (rows, columns): finite pixels outside the mask."""
    keep = np.isfinite(height)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != height.shape:
            raise ValueError(f"mask has shape {mask.shape}, the height map {height.shape}")
        keep &= ~mask
    return keep


def plane_level(height, mask=None) -> np.ndarray:
    """Subtract the least-squares plane through the background pixels (all finite pixels without a mask)."""
    height = _as_height(height)
    keep = _background(height, mask)
    if keep.sum() < 3:
        raise ValueError("plane_level: fewer than 3 background pixels to fit a plane to")
    rows, columns = np.indices(height.shape, dtype=np.float64)
    design = np.column_stack([np.ones(keep.sum()), columns[keep], rows[keep]])
    coefficients, *_ = np.linalg.lstsq(design, height[keep], rcond=None)
    return height - (coefficients[0] + coefficients[1] * columns + coefficients[2] * rows)


ROW_METHODS = ("median", "polynomial")


def align_rows(height, method: str = "median", *, order: int = 1, mask=None) -> np.ndarray:
    """Remove each scan line's offset: its background median, or (``polynomial``) a fitted polynomial in x.

    Parameters
    ----------
    height : ndarray (rows, columns), nm
    method : {"median", "polynomial"}
    order : int >= 0
        Polynomial order for ``method="polynomial"`` (0: the row mean).
    mask : ndarray of bool, optional
        Pixels left out of the per-row fits. A row with fewer than ``order + 1`` background pixels is fitted on all
        its pixels.
    """
    height = _as_height(height)
    if method not in ROW_METHODS:
        raise ValueError(f"method must be one of {', '.join(ROW_METHODS)}, got {method!r}")
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be a whole number >= 0, got {order!r}")
    keep = _background(height, mask)
    out = np.empty_like(height)
    x = np.linspace(-1.0, 1.0, height.shape[1])
    for r, row in enumerate(height):
        use = keep[r] if keep[r].sum() > order else np.isfinite(row)
        if method == "median":
            out[r] = row - (np.median(row[use]) if use.any() else 0.0)
        else:
            fitted = np.polynomial.polynomial.polyfit(x[use], row[use], order)
            out[r] = row - np.polynomial.polynomial.polyval(x, fitted)
    return out


def _robust_sigma(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0
    return 1.4826 * float(np.median(np.abs(values - np.median(values))))


def remove_scars(height, *, threshold_high: float = 0.666, threshold_low: float = 0.25, max_width: int = 4,
                 min_length: int = 16) -> np.ndarray:
    """Replace horizontal scars by linear interpolation between the rows just above and below them.

    A scar (Gwyddion's definition) is a run of at most ``max_width`` rows whose pixels all lie on the same side of
    both the row above and the row below, by more than ``threshold_high`` (to start) and ``threshold_low`` (to
    extend along the row) times the robust standard deviation of the image's row-to-row differences, over at least
    ``min_length`` columns.
    """
    height = _as_height(height)
    if not 0 < threshold_low <= threshold_high:
        raise ValueError(f"need 0 < threshold_low <= threshold_high, got {threshold_low} and {threshold_high}")
    if max_width < 1 or min_length < 1:
        raise ValueError(f"max_width and min_length must be >= 1, got {max_width} and {min_length}")
    sigma = _robust_sigma(np.diff(height, axis=0).ravel())
    if sigma == 0:
        return height.copy()
    out = height.copy()
    rows = height.shape[0]
    for sign in (1.0, -1.0):
        for width in range(1, max_width + 1):
            if rows < width + 2:
                break
            # Every band of `width` rows at once: its margin over the rows just above and below, per column.
            above, below = out[:rows - width - 1], out[width + 1:]
            band = np.stack([out[1 + k:rows - width + k] for k in range(width)])  # (width, bands, columns)
            margin = np.minimum(sign * band - sign * above, sign * band - sign * below).min(axis=0) / sigma
            for top, start, stop in _scar_runs(margin, threshold_high, threshold_low, min_length):
                row = top + 1  # band index -> first scarred row
                weights = np.arange(1, width + 1)[:, None] / (width + 1)
                out[row:row + width, start:stop] = (1 - weights) * out[row - 1, start:stop] + \
                    weights * out[row + width, start:stop]
    return out


def _scar_runs(margin: np.ndarray, high: float, low: float, min_length: int):
    """(band, start, stop) of every horizontal run above ``low`` that is long enough and reaches ``high``."""
    weak = margin > low
    if not weak.any():
        return []
    padded = np.zeros((weak.shape[0], weak.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = weak
    edges = np.diff(padded, axis=1)
    band, start = np.nonzero(edges == 1)
    _, stop = np.nonzero(edges == -1)  # row-major order pairs each start with its stop
    long = (stop - start) >= min_length
    runs = []
    for b, s, e in zip(band[long], start[long], stop[long], strict=True):
        if (margin[b, s:e] > high).any():
            runs.append((int(b), int(s), int(e)))
    return runs


def zero_to_median(height, mask=None) -> np.ndarray:
    """Shift heights so that the background's median is 0."""
    height = _as_height(height)
    keep = _background(height, mask)
    return height - (np.median(height[keep]) if keep.any() else 0.0)


def mask_tall_features(height, *, k: float = 2.0) -> np.ndarray:
    """Boolean mask of pixels more than ``k`` robust standard deviations (1.4826 MAD) above the median."""
    height = _as_height(height)
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    sigma = _robust_sigma(height.ravel())
    return np.isfinite(height) & (height > np.nanmedian(height) + k * max(sigma, 1e-12))


#: Named levelling pipelines: lists of (step, parameters). ``"mask"`` computes a tall-feature mask that the later
#: steps of the pipeline leave out of their fits.
PIPELINES = {
    "default": [("plane", {}), ("rows", {"method": "median"}), ("scars", {}), ("mask", {"k": 2.0}),
                ("plane", {}), ("rows", {"method": "median"}), ("zero", {})],
    "plane": [("plane", {}), ("zero", {})],
    "rows": [("plane", {}), ("rows", {"method": "median"}), ("zero", {})],
    "poly2": [("plane", {}), ("rows", {"method": "polynomial", "order": 2}), ("zero", {})],
    "none": [],
}


def level(height, pipeline: str = "default") -> tuple[np.ndarray, list[dict]]:
    """Run a named levelling pipeline.

    Parameters
    ----------
    height : ndarray (rows, columns), nm
    pipeline : str
        A key of :data:`PIPELINES`.

    Returns
    -------
    levelled : ndarray of float64
    steps : list of dict
        ``{"step": name, **parameters}`` of each step run, and ``masked`` (share of pixels) for the mask step:
        what the manifest records with each image.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"levelling must be one of {', '.join(PIPELINES)}, got {pipeline!r}")
    height = _as_height(height)
    mask, record = None, []
    for step, parameters in PIPELINES[pipeline]:
        entry = {"step": step, **parameters}
        if step == "plane":
            height = plane_level(height, mask)
        elif step == "rows":
            height = align_rows(height, mask=mask, **parameters)
        elif step == "scars":
            height = remove_scars(height, **parameters)
        elif step == "zero":
            height = zero_to_median(height, mask)
        else:
            mask = mask_tall_features(height, **parameters)
            entry["masked"] = round(float(mask.mean()), 4)
        record.append(entry)
    return height, record
