"""The paper's 14 physical image descriptors, one pure function each, resolution-aware.

Every descriptor takes an AFM height map scaled to 0..1 (as :func:`tmdafm_core.data.load_image` returns it) and the
pixel size in nm. Length parameters are given in nm; their defaults are the paper's pixel values at the paper's
resolution (1 µm over 256 px, :data:`PAPER_PIXEL_NM` = 3.90625 nm per px), converted to pixels of the image at hand,
so that a surface gives the same densities (per µm²) and sizes (nm) at any resolution. ``paper_pixels=True``
reproduces the publication's raw numbers instead: the parameters are used as the paper's pixel counts whatever the
image's resolution, counts stay counts, densities are per pixel and sizes are in pixels.

Input rules, shared by all descriptors: the image must be 2-D, at least :data:`MIN_SIZE_PX` pixels on each side,
with values in 0..1. NaN/inf pixels (dropouts in raw scans) are filled with the median of the finite pixels
before anything is computed, as :func:`tmdafm_core.data.normalize_height` does on loading. A constant image gives
finite values (zero variation, no grains, no blobs).

:func:`compute_all` computes all 14 in one pass, sharing the intermediate images (one Gaussian smoothing, one
grey-level co-occurrence matrix, one Difference-of-Gaussian stack); each single-descriptor function computes the
same number through the same code.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

PAPER_PIXEL_NM = 1000.0 / 256.0
MIN_SIZE_PX = 32
_GLCM_LEVELS = 256
_DOG_MIN_COARSE_SIGMA_PX = 2.5  # a DoG stack may be computed on a grid this many px per smallest sigma


# --- shared intermediates ---------------------------------------------------------------------------------------

class _Prepared:
    """A validated image plus lazily computed intermediates shared by the descriptors of one image."""

    def __init__(self, image, pixel_size_nm: float, paper_pixels: bool):
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"descriptors need a 2-D image, got shape {image.shape}; pass one grayscale channel")
        if min(image.shape) < MIN_SIZE_PX:
            raise ValueError(f"image of shape {image.shape} is too small for the descriptors; they need at least "
                             f"{MIN_SIZE_PX} px on each side (the DoG and grain scales span tens of pixels)")
        if not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise ValueError(f"pixel_size_nm must be a positive number of nm per pixel, got {pixel_size_nm}")
        image = image.astype(np.float64)
        finite = np.isfinite(image)
        if not finite.all():
            if not finite.any():
                raise ValueError("image has no finite pixel values (all NaN/inf)")
            image = np.where(finite, image, np.median(image[finite]))
        low, high = float(image.min()), float(image.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(f"image values span {low:.4g}..{high:.4g}; descriptors expect heights scaled to 0..1 "
                             "(use tmdafm_core.data.load_image or normalize_height)")
        self.image = np.clip(image, 0.0, 1.0)
        self.pixel_size_nm = float(pixel_size_nm)
        self.paper_pixels = bool(paper_pixels)
        self._memo: dict = {}

    # Lengths and amounts in the units this call reports.
    def px(self, length_nm: float) -> float:
        """A length given in nm (paper resolution) as pixels of this image."""
        return length_nm / (PAPER_PIXEL_NM if self.paper_pixels else self.pixel_size_nm)

    def whole_px(self, length_nm: float) -> int:
        """A length in nm as a whole number of pixels, at least 1 (filter sizes, distances)."""
        return max(1, int(round(self.px(length_nm))))

    def count_density(self, count: int) -> float:
        """A count over the image as per µm² (or per pixel with paper_pixels)."""
        height, width = self.image.shape
        if self.paper_pixels:
            return count / (height * width)
        return count / (height * width * self.pixel_size_nm**2 / 1e6)

    def count_per_area(self, count: int) -> float:
        """A count of features over the image as per µm² (a raw count with paper_pixels)."""
        return float(count) if self.paper_pixels else self.count_density(count)

    def length(self, pixels: float) -> float:
        return float(pixels) if self.paper_pixels else float(pixels) * self.pixel_size_nm

    def choose(self, value, *, paper, robust):
        """A parameter left as None: the paper's value with paper_pixels, else the noise-robust default."""
        if value is not None:
            return value
        return paper if self.paper_pixels else robust

    def _cached(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def smoothed(self, sigma_nm: float) -> np.ndarray:
        return self._cached(("gauss", sigma_nm),
                            lambda: ndi.gaussian_filter(self.image, self.px(sigma_nm), mode="nearest", truncate=4.0))

    def residual(self, sigma_nm: float) -> np.ndarray:
        return self._cached(("residual", sigma_nm), lambda: self.image - self.smoothed(sigma_nm))

    def grains(self, sigma_nm: float) -> tuple[np.ndarray, int]:
        return self._cached(("grains", sigma_nm), lambda: _otsu_grains(self.smoothed(sigma_nm)))

    def glcm(self, distance_nm: float) -> np.ndarray:
        return self._cached(("glcm", distance_nm),
                            lambda: _glcm_horizontal(self.image, self.whole_px(distance_nm)))


def _otsu_grains(smoothed: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected regions above the Otsu threshold; (labels, count). A constant image has no grains."""
    if smoothed.max() - smoothed.min() < 1e-12:
        return np.zeros(smoothed.shape, dtype=np.int32), 0
    from skimage.filters import threshold_otsu

    return ndi.label(smoothed > threshold_otsu(smoothed), structure=np.ones((3, 3), dtype=bool))


def _disk(radius_px: float) -> np.ndarray:
    half = int(math.floor(radius_px))
    y, x = np.mgrid[-half:half + 1, -half:half + 1]
    return x * x + y * y <= radius_px * radius_px


def _glcm_horizontal(image: np.ndarray, distance_px: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrix of the 8-bit image at angle 0 (256 × 256).

    The same matrix as ``skimage.feature.graycomatrix(img_as_ubyte(image), [d], [0], symmetric=True, normed=True)``,
    counted with one ``bincount`` of the pixel pairs.
    """
    levels = np.round(image * 255.0).astype(np.int64)
    pairs = levels[:, :-distance_px] * _GLCM_LEVELS + levels[:, distance_px:]
    counts = np.bincount(pairs.ravel(), minlength=_GLCM_LEVELS * _GLCM_LEVELS).reshape(_GLCM_LEVELS, _GLCM_LEVELS)
    counts = counts + counts.T
    return counts / counts.sum()


# --- one function per descriptor --------------------------------------------------------------------------------
# Each public function validates the image and calls its ``_from`` twin, which compute_all calls with a shared
# _Prepared so that intermediates are made once.

def _rms_roughness_from(prep: _Prepared, sigma_nm: float) -> float:
    return float(np.sqrt(np.mean(prep.residual(sigma_nm) ** 2)))


def rms_roughness(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
                  sigma_nm: float = PAPER_PIXEL_NM) -> float:
    """RMS difference between the image and its Gaussian-smoothed copy (fine-scale roughness).

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Heights scaled to 0..1; H, W ≥ 32.
    pixel_size_nm : float
        Nanometres per pixel.
    paper_pixels : bool
        Use the length parameters as the paper's pixel counts (``nm / 3.90625``) regardless of the pixel size.
    sigma_nm : float
        Smoothing scale (paper: 1 px = 3.90625 nm).

    Returns
    -------
    float
        Roughness in units of the image's height range (0..1).

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> round(rms_roughness(image, 3.90625), 4)  # the step and the mound's flank differ from their blur
    0.0272
    """
    return _rms_roughness_from(_Prepared(image, pixel_size_nm, paper_pixels), sigma_nm)


def _local_variation_from(prep: _Prepared, sigma_nm: float) -> float:
    deviation = np.abs(prep.residual(sigma_nm))
    peak = deviation.max()
    return float(deviation.mean() / peak) if peak > 0 else 0.0


def local_variation(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
                    sigma_nm: float = PAPER_PIXEL_NM) -> float:
    """Mean absolute deviation from the Gaussian-smoothed image divided by its maximum (0..1).

    Parameters are those of :func:`rms_roughness`. A constant image gives 0.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> round(local_variation(image, 3.90625), 4)
    0.0414
    """
    return _local_variation_from(_Prepared(image, pixel_size_nm, paper_pixels), sigma_nm)


def _step_edges_from(prep: _Prepared, canny_sigma_nm: float, closing_nm: float, measure: str | None) -> float:
    from skimage.feature import canny

    measure = prep.choose(measure, paper="segments", robust="length")
    if measure not in ("segments", "length"):
        raise ValueError(f"step_edges: measure must be 'segments' or 'length', got {measure!r}")
    edges = canny(prep.image, sigma=prep.px(canny_sigma_nm))
    if measure == "length":
        height, width = prep.image.shape
        edge_um = edges.sum() * (PAPER_PIXEL_NM if prep.paper_pixels else prep.pixel_size_nm) / 1000.0
        return float(edge_um / (height * width * prep.pixel_size_nm**2 / 1e6))
    half = prep.whole_px(closing_nm)
    square = np.ones((2 * half + 1, 2 * half + 1), dtype=bool)
    if prep.paper_pixels:
        # The paper: scipy's dilation then erosion with their defaults, segments counted by scipy's default
        # (4-connected) label, so diagonal steps break into several segments.
        _, count = ndi.label(ndi.binary_erosion(ndi.binary_dilation(edges, square), square))
        return prep.count_per_area(count)
    # Dilation then erosion (a closing) joins edge fragments broken by noise; border_value=1 keeps the border
    # from eroding away segments that touch it.
    closed = ndi.binary_erosion(ndi.binary_dilation(edges, square), square, border_value=1)
    _, count = ndi.label(closed, structure=np.ones((3, 3), dtype=bool))
    return prep.count_per_area(count)


def step_edges(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
               canny_sigma_nm: float = 0.3 * PAPER_PIXEL_NM, closing_nm: float = PAPER_PIXEL_NM,
               measure: str | None = None) -> float:
    """Step edges: Canny edges (σ = 0.3 px), as total edge length per area or as connected segments.

    The paper counts connected edge segments after a 3 × 3 dilation then erosion (scipy's ``binary_dilation`` and
    ``binary_erosion`` with their defaults, then scipy's default 4-connected ``label``; ``paper_pixels=True``
    reproduces exactly that). That count *falls* as steps get
    denser, because neighbouring steps, domain edges and scan-line glitches join into one network (on synthetic
    terraces its Spearman correlation with the true step count is negative). The default therefore reports the
    edge length per area, which grows with the number of steps; ``paper_pixels=True`` (or ``measure="segments"``)
    gives the paper's count.

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    canny_sigma_nm : float
        Canny's Gaussian scale (paper: 0.3 px).
    closing_nm : float
        Half-width of the square closing element of the segment count (paper: 1 px, a 3 × 3 square); ≥ 1 px.
    measure : {"length", "segments"}, optional
        Default: ``"segments"`` with ``paper_pixels``, else ``"length"``.

    Returns
    -------
    float
        ``length``: µm of edge per µm²; ``segments``: segments per µm² (for a 1 µm crop: the count), or the raw
        count with ``paper_pixels``.

    References
    ----------
    .. [1] J. Canny, "A computational approach to edge detection", IEEE Trans. Pattern Anal. Mach. Intell.
       8(6), 679-698 (1986). :DOI:`10.1109/TPAMI.1986.4767851`

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> step_edges(image, 3.90625, paper_pixels=True)  # the paper's count: the step and the mound's rim
    2.0
    >>> round(step_edges(image, 3.90625), 2)  # µm of edge per µm²
    6.81
    """
    return _step_edges_from(_Prepared(image, pixel_size_nm, paper_pixels), canny_sigma_nm, closing_nm, measure)


def _defect_density_from(prep: _Prepared, sigma_nm: float, min_distance_nm: float,
                         min_prominence: float | None) -> float:
    smoothed = prep.smoothed(sigma_nm)
    distance = prep.whole_px(min_distance_nm)
    min_prominence = prep.choose(min_prominence, paper=0.0, robust=0.05)
    if prep.paper_pixels and min_prominence == 0:
        from skimage.feature import peak_local_max

        return prep.count_density(len(peak_local_max(smoothed, min_distance=distance)))
    if min_prominence > 0:
        from skimage.morphology import h_maxima

        is_peak = h_maxima(smoothed, min_prominence).astype(bool)
    else:
        # skimage.feature.peak_local_max(smoothed, min_distance=d): maxima of a (2d+1)² window that rise above
        # the image minimum.
        is_peak = smoothed == ndi.maximum_filter(smoothed, size=2 * distance + 1, mode="nearest")
        is_peak &= smoothed > smoothed.min()
    # As peak_local_max: none within d px of the border; a flat-topped maximum counts once.
    is_peak[:distance], is_peak[-distance:], is_peak[:, :distance], is_peak[:, -distance:] = False, False, False, False
    _, count = ndi.label(is_peak, structure=np.ones((3, 3), dtype=bool))
    return prep.count_density(count)


def defect_density(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
                   sigma_nm: float = PAPER_PIXEL_NM, min_distance_nm: float = PAPER_PIXEL_NM,
                   min_prominence: float | None = None) -> float:
    """Local maxima of the Gaussian-smoothed image per area (point defects, nuclei, particles).

    The paper counts every local maximum, which on a 1 px-smoothed image is mostly pixel noise (and therefore
    depends on the resolution). The default counts only maxima that stand ``min_prominence`` above every path to a
    higher point (h-maxima); ``paper_pixels=True`` counts them all with the paper's call,
    ``skimage.feature.peak_local_max(smoothed, min_distance=1)`` (``min_prominence=0`` counts them all at any
    resolution, a flat-topped maximum once).

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    sigma_nm : float
        Smoothing scale (paper: 1 px).
    min_distance_nm : float
        Smallest distance between two maxima and width of the ignored border (paper: 1 px); at least 1 px.
    min_prominence : float, optional
        Prominence in units of the image's height range. Default: 0 with ``paper_pixels``, else 0.05.

    Returns
    -------
    float
        Maxima per µm²; with ``paper_pixels`` per pixel, as in the paper.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> defect_density(image, 3.90625)  # two local maxima in 0.0625 µm²
    32.0
    """
    return _defect_density_from(_Prepared(image, pixel_size_nm, paper_pixels), sigma_nm, min_distance_nm,
                                min_prominence)


def _anisotropy_from(prep: _Prepared) -> float:
    # The paper's names: grad_x, grad_y = np.gradient(image) are the derivatives along rows, then columns, and the
    # angle is arctan2(grad_y, grad_x).
    grad_x, grad_y = np.gradient(prep.image)
    # Gradients per paper pixel keep the paper's magnitude scale at any resolution.
    magnitude = np.hypot(grad_x, grad_y) / prep.px(PAPER_PIXEL_NM)
    mean_magnitude = magnitude.mean()
    if mean_magnitude <= 0:
        return 0.0
    return float(np.std(np.arctan2(grad_y, grad_x)) / mean_magnitude)


def anisotropy(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False) -> float:
    """Spread of gradient directions over mean gradient magnitude (paper's definition).

    Gradients are ``np.gradient``'s central differences, ``grad_x`` along rows and ``grad_y`` along columns as the
    paper names them, and the angle is the paper's ``arctan2(grad_y, grad_x)``. The magnitude is expressed per paper
    pixel (3.90625 nm), so the number keeps the paper's scale at other resolutions. A constant image gives 0.

    Returns
    -------
    float
        Standard deviation of gradient angles (rad) divided by the mean gradient magnitude (height range per paper
        pixel).

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> round(anisotropy(image, 3.90625), 1)
    167.8
    """
    return _anisotropy_from(_Prepared(image, pixel_size_nm, paper_pixels))


def _dog_stack(image: np.ndarray, sigmas_px: np.ndarray) -> tuple[np.ndarray, int]:
    """DoG cube (H', W', len(sigmas) − 1) as in ``skimage.feature.blob_dog`` and the grid step it was made on.

    When the smallest sigma spans several pixels the cube is computed on a grid ``step`` times coarser (block
    means), and each Gaussian is reached from the previous one by blurring with the difference sigma; both give the
    same Gaussians up to the block average's tiny extra blur (accounted for) and the kernels' truncation.
    """
    step = max(1, int(sigmas_px[0] // _DOG_MIN_COARSE_SIGMA_PX))
    height, width = image.shape
    coarse = image[:height - height % step, :width - width % step]
    if step > 1:
        coarse = coarse.reshape(height // step, step, width // step, step).mean(axis=(1, 3))
    done_var = (step * step - 1) / 12.0  # variance of the block average, in fine pixels²
    gaussians = []
    current = coarse
    for sigma in sigmas_px:
        extra = math.sqrt(max(sigma * sigma - done_var, 0.0)) / step
        current = ndi.gaussian_filter(current, extra, mode="reflect", truncate=4.0)
        done_var = sigma * sigma
        gaussians.append(current)
    cube = np.stack([gaussians[i] - gaussians[i + 1] for i in range(len(sigmas_px) - 1)], axis=-1)
    return cube, step


def _prune_overlapping(blobs: np.ndarray, overlap: float) -> int:
    """Blobs left after removing, of any pair overlapping by more than ``overlap``, the smaller one (rows: y, x, r).

    Same rule as skimage's blob pruning, where the overlap is the intersection area over the smaller disk's area.
    """
    from scipy.spatial import cKDTree

    if len(blobs) < 2:
        return len(blobs)
    radius = blobs[:, 2]
    pairs = cKDTree(blobs[:, :2]).query_pairs(2 * radius.max(), output_type="ndarray")
    alive = np.ones(len(blobs), dtype=bool)
    for i, j in pairs:
        if not (alive[i] and alive[j]):
            continue
        r1, r2 = radius[i], radius[j]
        d = math.hypot(*(blobs[i, :2] - blobs[j, :2]))
        if d >= r1 + r2:
            continue
        small, large = min(r1, r2), max(r1, r2)
        if d <= large - small:
            shared = 1.0
        else:
            a1 = (d * d + small * small - large * large) / (2 * d * small)
            a2 = (d * d + large * large - small * small) / (2 * d * large)
            area = (small * small * math.acos(np.clip(a1, -1, 1)) + large * large * math.acos(np.clip(a2, -1, 1))
                    - 0.5 * math.sqrt(abs((-d + small + large) * (d + small - large) * (d - small + large)
                                          * (d + small + large))))
            shared = area / (math.pi * small * small)
        if shared > overlap:
            alive[i if r1 <= r2 else j] = False
    return int(alive.sum())


def _dog_blob_from(prep: _Prepared, min_sigma_nm: float, max_sigma_nm: float, threshold: float | None,
                   sigma_ratio: float, overlap: float) -> float:
    threshold = prep.choose(threshold, paper=0.001, robust=0.01)
    min_sigma, max_sigma = prep.px(min_sigma_nm), prep.px(max_sigma_nm)
    if prep.paper_pixels:  # the paper's own call, not our faster equivalent
        from skimage.feature import blob_dog

        return float(len(blob_dog(prep.image, min_sigma=min_sigma, max_sigma=max_sigma, sigma_ratio=sigma_ratio,
                                  threshold=threshold, overlap=overlap)))
    k = int(math.log(max_sigma / min_sigma) / math.log(sigma_ratio) + 1)
    sigmas = min_sigma * sigma_ratio ** np.arange(k + 1)
    cube, step = _dog_stack(prep.image, sigmas)
    cube *= 1.0 / (sigma_ratio - 1.0)
    is_peak = (cube == ndi.maximum_filter(cube, size=3, mode="nearest")) & (cube > threshold)
    rows, cols, scale = np.nonzero(is_peak)
    offset = (step - 1) / 2.0
    blobs = np.column_stack([rows * step + offset, cols * step + offset, sigmas[scale] * math.sqrt(2.0)])
    return prep.count_per_area(_prune_overlapping(blobs, overlap))


def dog_blob(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
             min_sigma_nm: float = 5 * PAPER_PIXEL_NM, max_sigma_nm: float = 40 * PAPER_PIXEL_NM,
             threshold: float | None = None, sigma_ratio: float = 1.6, overlap: float = 0.5) -> float:
    """Difference-of-Gaussian blobs (bright round features tens of nm across) per area.

    Counts what ``skimage.feature.blob_dog(image, min_sigma, max_sigma, threshold=threshold)`` finds, computed
    faster: the Gaussians are chained and, when the smallest sigma spans ≥ 5 px, made on a 2× (or coarser) grid.
    ``paper_pixels=True`` calls ``blob_dog(image, min_sigma=5, max_sigma=40, threshold=0.001)`` itself, as the
    paper does.

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    min_sigma_nm, max_sigma_nm : float
        Blob scale range (paper: 5 and 40 px).
    threshold : float, optional
        Lower bound of the scale-normalised DoG response, in units of the height range. Default: the paper's 0.001
        with ``paper_pixels``, else 0.01; at 0.001 a few hundredths of a nm of noise or scan-line offsets make
        blobs, and the count no longer follows the number of particles.
    sigma_ratio, overlap : float
        As in ``blob_dog`` (its defaults).

    Returns
    -------
    float
        Blobs per µm² (for a 1 µm crop: the blob count); with ``paper_pixels`` the raw count.

    References
    ----------
    .. [1] D. G. Lowe, "Distinctive image features from scale-invariant keypoints", Int. J. Comput. Vis. 60(2),
       91-110 (2004). :DOI:`10.1023/B:VISI.0000029664.99615.94`

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> dog_blob(image, 3.90625, paper_pixels=True)  # blobs found (the paper's count)
    3.0
    >>> dog_blob(image, 3.90625)  # the same three per 0.0625 µm²
    48.0
    """
    return _dog_blob_from(_Prepared(image, pixel_size_nm, paper_pixels), min_sigma_nm, max_sigma_nm, threshold,
                          sigma_ratio, overlap)


def _grain_size_from(prep: _Prepared, sigma_nm: float) -> float:
    labels, count = prep.grains(sigma_nm)
    if count == 0:
        return 0.0
    areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return prep.length(np.mean(np.sqrt(4.0 * areas / math.pi)))


def grain_size(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
               sigma_nm: float = PAPER_PIXEL_NM) -> float:
    """Mean equivalent-circle diameter of the grains: regions above Otsu's threshold of the smoothed image.

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    sigma_nm : float
        Smoothing before thresholding (paper: 1 px).

    Returns
    -------
    float
        Diameter in nm (px with ``paper_pixels``); 0 when there is no grain (constant image).

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. Syst. Man Cybern.
       9(1), 62-66 (1979). :DOI:`10.1109/TSMC.1979.4310076`

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> round(grain_size(image, 3.90625), 1)  # nm, equivalent-circle diameter above Otsu's threshold
    114.5
    """
    return _grain_size_from(_Prepared(image, pixel_size_nm, paper_pixels), sigma_nm)


def _grain_density_from(prep: _Prepared, sigma_nm: float, opening_radius_nm: float) -> float:
    labels, count = prep.grains(sigma_nm)
    if count == 0:
        return 0.0
    disk = _disk(max(1.0, prep.px(opening_radius_nm)))
    # skimage.morphology.binary_opening: erosion that does not erode from the border, then dilation.
    opened = ndi.binary_dilation(ndi.binary_erosion(labels > 0, disk, border_value=1), disk)
    _, kept = ndi.label(opened, structure=np.ones((3, 3), dtype=bool))
    return prep.count_density(kept)


def grain_density(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
                  sigma_nm: float = PAPER_PIXEL_NM, opening_radius_nm: float = 5 * PAPER_PIXEL_NM) -> float:
    """Grains that survive a binary opening with a disk (drops specks and thin bridges) per area.

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    sigma_nm : float
        Smoothing before Otsu thresholding (paper: 1 px).
    opening_radius_nm : float
        Radius of the opening disk (paper: 5 px = 19.5 nm).

    Returns
    -------
    float
        Grains per µm²; with ``paper_pixels`` per pixel, as in the paper.

    References
    ----------
    .. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. Syst. Man Cybern.
       9(1), 62-66 (1979). :DOI:`10.1109/TSMC.1979.4310076`

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> grain_density(image, 3.90625)  # one grain in 0.0625 µm²
    16.0
    """
    return _grain_density_from(_Prepared(image, pixel_size_nm, paper_pixels), sigma_nm, opening_radius_nm)


def _glcm_properties(matrix: np.ndarray) -> dict[str, float]:
    """The six ``skimage.feature.graycoprops`` properties of one normalised co-occurrence matrix."""
    i, j = np.ogrid[:_GLCM_LEVELS, :_GLCM_LEVELS]
    difference = (i - j).astype(np.float64)
    asm = float(np.sum(matrix * matrix))
    mean_i = float(np.sum(i * matrix))
    mean_j = float(np.sum(j * matrix))
    std_i = math.sqrt(float(np.sum(matrix * (i - mean_i) ** 2)))
    std_j = math.sqrt(float(np.sum(matrix * (j - mean_j) ** 2)))
    if std_i < 1e-15 or std_j < 1e-15:
        correlation = 1.0  # graycoprops' convention for a constant image
    else:
        correlation = float(np.sum(matrix * (i - mean_i) * (j - mean_j)) / (std_i * std_j))
    return {
        "contrast": float(np.sum(matrix * difference**2)),
        "dissimilarity": float(np.sum(matrix * np.abs(difference))),
        "homogeneity": float(np.sum(matrix / (1.0 + difference**2))),
        "energy": math.sqrt(asm),
        "correlation": correlation,
        "asm": asm,
    }


def _glcm_from(prep: _Prepared, name: str, distance_nm: float) -> float:
    properties = prep._cached(("glcm properties", distance_nm), lambda: _glcm_properties(prep.glcm(distance_nm)))
    return properties[name]


def _glcm_doc(name: str, meaning: str, example: str):
    def descriptor(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False,
                   distance_nm: float = PAPER_PIXEL_NM) -> float:
        return _glcm_from(_Prepared(image, pixel_size_nm, paper_pixels), name, distance_nm)

    descriptor.__name__ = descriptor.__qualname__ = name
    descriptor.__doc__ = f"""GLCM {name}: {meaning}

    Grey-level co-occurrence matrix of the 8-bit image for horizontal neighbours, symmetric and normalised, as
    ``skimage.feature.graycoprops(..., {name!r})``, always with 256 levels: the paper's call derives the number of
    levels from the image and raises when its minimum is above 0, so 256 is used for every image (the same matrix
    wherever the paper's call works).

    Parameters
    ----------
    image, pixel_size_nm, paper_pixels
        As in :func:`rms_roughness`.
    distance_nm : float
        Neighbour distance (paper: 1 px); at least 1 px.

    Returns
    -------
    float

    References
    ----------
    .. [1] R. M. Haralick, K. Shanmugam, I. Dinstein, "Textural features for image classification", IEEE Trans.
       Syst. Man Cybern. SMC-3(6), 610-621 (1973). :DOI:`10.1109/TSMC.1973.4309314`

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[:64, :64]  # 64 px of 3.90625 nm: 250 nm x 250 nm, 0.0625 µm²
    >>> image = 0.5 * (x >= 32) + 0.5 * np.exp(-((x - 16) ** 2 + (y - 16) ** 2) / 20)  # a step and a mound
    >>> from tmdafm_core.features import descriptors
    >>> round(descriptors.{name}(image, 3.90625), 4)
    {example}
    """
    return descriptor


contrast = _glcm_doc("contrast", "mean squared grey-level difference of neighbours (0..255²).", "266.3165")
dissimilarity = _glcm_doc("dissimilarity", "mean absolute grey-level difference of neighbours (0..255).", "2.5317")
homogeneity = _glcm_doc("homogeneity", "closeness of neighbours' grey levels, sum P/(1 + (i − j)²) (0..1).", "0.9191")
energy = _glcm_doc("energy", "square root of the angular second moment (0..1); high for uniform textures.", "0.6346")
correlation = _glcm_doc("correlation", "linear dependence of neighbours' grey levels (−1..1).", "0.9664")
asm = _glcm_doc("asm", "angular second moment, sum of squared co-occurrence probabilities (0..1).", "0.4027")


#: Public descriptor -> its twin on a shared :class:`_Prepared` (one smoothing, labelling and GLCM for all): a
#: speed-up only; a descriptor without one is called as it is, so adding one takes a function and a registry row.
_IMPLEMENTATIONS = {
    rms_roughness: _rms_roughness_from,
    local_variation: _local_variation_from,
    step_edges: _step_edges_from,
    defect_density: _defect_density_from,
    anisotropy: _anisotropy_from,
    dog_blob: _dog_blob_from,
    grain_size: _grain_size_from,
    grain_density: _grain_density_from,
    **{glcm: (lambda prep, *, _name=glcm.__name__, **params: _glcm_from(prep, _name, **params))
       for glcm in (contrast, dissimilarity, homogeneity, energy, correlation, asm)},
}


def default_parameters(descriptor) -> dict:
    """A descriptor's named parameters and their defaults (the paper's values), without ``paper_pixels``."""
    return {k: v for k, v in (descriptor.__kwdefaults__ or {}).items() if k != "paper_pixels"}


def compute_all(image, pixel_size_nm: float = PAPER_PIXEL_NM, *, paper_pixels: bool = False) -> dict[str, float]:
    """All 14 descriptors with their default (paper) parameters, sharing intermediate images.

    One Gaussian smoothing serves roughness, local variation, defects and grains; one Otsu labelling serves grain
    size and density; one co-occurrence matrix serves the six GLCM properties.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Heights scaled to 0..1; H, W ≥ 32.
    pixel_size_nm : float
        Nanometres per pixel.
    paper_pixels : bool
        Reproduce the paper's pixel-based numbers (see the module docstring).

    Returns
    -------
    dict
        ``{name: value}`` in :data:`tmdafm_core.features.FEATURE_COLUMNS` order.
    """
    from .registry import DESCRIPTORS  # the registry lists this module's functions

    prep = _Prepared(image, pixel_size_nm, paper_pixels)
    values = {}
    for descriptor in DESCRIPTORS:
        twin = _IMPLEMENTATIONS.get(descriptor.function)
        values[descriptor.name] = float(twin(prep, **default_parameters(descriptor.function)) if twin is not None
                                        else descriptor.function(image, pixel_size_nm, paper_pixels=paper_pixels))
    return values
