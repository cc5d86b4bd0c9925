"""Time the 14 physical descriptors against the straightforward one-feature-at-a-time scikit-image code.

Usage: python benchmarks/bench_features.py [--n 1026] [--size 256] [--baseline-images 40] [--data DIR]

Rows: the baseline (each descriptor computed on its own with scikit-image, as the paper's code does: its own
Gaussian, graycomatrix per GLCM property, skimage blob_dog / peak_local_max / regionprops), compute_all on one image
at a time, and compute_table over the whole synthetic data set with 1 and 2 jobs, cold (empty cache) and warm.
Prints seconds per image and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import timed  # noqa: E402

from tmdafm_core.data import load_image, read_dataset  # noqa: E402
from tmdafm_core.data.synthetic import write_synthetic_dataset  # noqa: E402
from tmdafm_core.features import compute_all, compute_table  # noqa: E402


def baseline_one_at_a_time(image: np.ndarray) -> list[float]:
    """The paper's descriptors, each from scratch with scikit-image (pixel parameters at 256 px)."""
    from scipy import ndimage as ndi
    from skimage.feature import blob_dog, canny, graycomatrix, graycoprops, peak_local_max
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import closing, disk, opening
    from skimage.util import img_as_ubyte

    image = image.astype(np.float64)
    values = []
    values.append(float(np.sqrt(np.mean((image - gaussian(image, sigma=1)) ** 2))))
    deviation = np.abs(image - gaussian(image, sigma=1))
    values.append(float(deviation.mean() / deviation.max()) if deviation.max() > 0 else 0.0)
    values.append(float(label(closing(canny(image, sigma=0.3), np.ones((3, 3)))).max()))
    values.append(len(peak_local_max(gaussian(image, sigma=1), min_distance=1)) / image.size)
    rows, cols = np.gradient(image)
    values.append(float(np.std(np.arctan2(rows, cols)) / np.hypot(rows, cols).mean()))
    values.append(float(len(blob_dog(image, min_sigma=5, max_sigma=40, threshold=0.001))))
    smoothed = gaussian(image, sigma=1)
    regions = regionprops(label(smoothed > threshold_otsu(smoothed)))
    values.append(float(np.mean([r.equivalent_diameter_area for r in regions])) if regions else 0.0)
    smoothed = gaussian(image, sigma=1)
    opened = opening(smoothed > threshold_otsu(smoothed), disk(5))
    values.append(ndi.label(opened, np.ones((3, 3)))[1] / image.size)
    for prop in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM"):
        matrix = graycomatrix(img_as_ubyte(image), [1], [0], levels=256, symmetric=True, normed=True)
        values.append(float(graycoprops(matrix, prop)[0, 0]))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1026)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--baseline-images", type=int, default=40, help="images timed with the slow baseline")
    parser.add_argument("--data", type=Path, help="synthetic data folder (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or Path(scratch) / "syn"
        if not (data / "manifest.csv").exists():
            print(f"writing {args.n} synthetic {args.size}px images to {data} ...", file=sys.stderr)
            write_synthetic_dataset(data, n=args.n, size=args.size, seed=0)
        manifest = read_dataset(data)
        n = len(manifest)
        images = [load_image(p, pixel_size_nm=s) for p, s in
                  zip(manifest["path"][:args.baseline_images], manifest["pixel_size_nm"][:args.baseline_images],
                      strict=True)]

        t_base, _ = timed(lambda: [baseline_one_at_a_time(img) for img, _ in images])
        t_all, _ = timed(lambda: [compute_all(img, px) for img, px in images])
        base = t_base / len(images)
        rows = [("baseline: one descriptor at a time (skimage), serial", base, len(images)),
                ("compute_all, serial, images in memory", t_all / len(images), len(images))]
        for jobs in (1, 2):
            cache = Path(scratch) / f"cache{jobs}"
            cold, _ = timed(lambda j=jobs, c=cache: compute_table(manifest, jobs=j, cache=c, progress=False))
            rows.append((f"compute_table, {jobs} job(s), cold cache, from files", cold / n, n))
        warm, _ = timed(lambda: compute_table(manifest, jobs=2, cache=cache, progress=False))
        rows.append(("compute_table, warm cache (rerun)", warm / n, n))

        print(f"{'what':58s} {'s/image':>9s} {'images':>7s} {'total s':>8s} {'x faster':>9s}")
        for what, per_image, count in rows:
            print(f"{what:58s} {per_image:9.4f} {count:7d} {per_image * count:8.2f} {base / per_image:9.1f}")


if __name__ == "__main__":
    main()
