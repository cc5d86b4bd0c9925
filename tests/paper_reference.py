"""The paper's descriptor code as ../shared/DESIGN.md records it: plain scikit-image / scipy calls on the image
scaled to 0..1, at the paper's pixel parameters. A reference for tests and benchmarks, not library code."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def paper_descriptors(image: np.ndarray) -> dict[str, float]:
    import warnings

    from skimage.feature import blob_dog, canny, graycomatrix, graycoprops, peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import binary_opening, disk
    from skimage.util import img_as_ubyte

    image = np.asarray(image, dtype=np.float64)
    smoothed = gaussian(image, sigma=1)
    residual = image - smoothed
    values = {"rms_roughness": float(np.sqrt(np.mean(residual ** 2)))}
    deviation = np.abs(residual)
    values["local_variation"] = float(deviation.mean() / deviation.max()) if deviation.max() > 0 else 0.0

    edges = canny(image, sigma=0.3)
    edges = ndi.binary_dilation(edges, structure=np.ones((3, 3)))
    edges = ndi.binary_erosion(edges, structure=np.ones((3, 3)))
    _, values["step_edges"] = ndi.label(edges)

    values["defect_density"] = len(peak_local_max(smoothed, min_distance=1)) / image.size

    grad_x, grad_y = np.gradient(image)
    angles = np.arctan2(grad_y, grad_x)
    magnitude = np.sqrt(grad_x ** 2 + grad_y ** 2)
    values["anisotropy"] = float(np.std(angles) / np.mean(magnitude)) if magnitude.mean() > 0 else 0.0

    values["dog_blob"] = len(blob_dog(image, min_sigma=5, max_sigma=40, threshold=0.001))

    if smoothed.max() > smoothed.min():
        binary = smoothed > threshold_otsu(smoothed)
        regions = regionprops(label(binary))
        values["grain_size"] = float(np.mean([r.equivalent_diameter_area for r in regions])) if regions else 0.0
        with warnings.catch_warnings():  # deprecated in scikit-image 0.26; the paper's call
            warnings.simplefilter("ignore", FutureWarning)
            opened = binary_opening(binary, disk(5))
        values["grain_density"] = label(opened).max() / image.size
    else:
        values["grain_size"] = values["grain_density"] = 0.0

    matrix = graycomatrix(img_as_ubyte(image), [1], [0], levels=256, symmetric=True, normed=True)
    for name in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"):
        values[name.lower()] = float(graycoprops(matrix, name)[0, 0])
    return {k: float(v) for k, v in values.items()}
