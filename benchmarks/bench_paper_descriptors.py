"""``paper_pixels=True`` against the paper's own descriptor code: agreement (Spearman) and speed, per descriptor.

Usage: python benchmarks/bench_paper_descriptors.py [FOLDER] [--n 40] [--size 256]

FOLDER is any data set (e.g. real 1 µm crops); without one, ``--n`` synthetic crops of all five materials are
rendered at ``--size`` px. The reference is ``tests/paper_reference.py`` (the paper's scikit-image/scipy calls as
DESIGN.md records them). Prints, per descriptor, Spearman's rho and the largest relative difference between
``compute_all(image, paper_pixels=True)`` and the reference, then the seconds per image of both (ours shares the
smoothing, labelling and co-occurrence matrix between descriptors).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.paper_reference import paper_descriptors  # noqa: E402
from tmdafm_core.data import load_image, normalize_height, read_dataset  # noqa: E402
from tmdafm_core.data.synthetic import render_surface, sample_params  # noqa: E402
from tmdafm_core.features import FEATURE_COLUMNS, PAPER_PIXEL_NM, compute_all  # noqa: E402


def images(folder: Path | None, n: int, size: int):
    if folder is not None:
        return [load_image(path)[0] for path in read_dataset(folder)["path"]]
    rng = np.random.default_rng(0)
    materials = ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
    return [normalize_height(render_surface(sample_params(materials[i % 5], rng), size, seed=i)[0]) for i in range(n)]


def main(argv=None) -> int:
    from scipy.stats import spearmanr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    crops = images(args.folder, args.n, args.size)
    ours, reference, t_ours, t_ref = [], [], 0.0, 0.0
    for image in crops:
        start = time.perf_counter()
        ours.append(compute_all(image, PAPER_PIXEL_NM, paper_pixels=True))
        t_ours += time.perf_counter() - start
        start = time.perf_counter()
        reference.append(paper_descriptors(image))
        t_ref += time.perf_counter() - start
    source = f"folder {args.folder}" if args.folder else "synthetic"
    print(f"{len(crops)} crops of {crops[0].shape[0]} px ({source})")
    print(f"{'descriptor':18s}{'spearman':>10s}{'max rel diff':>14s}")
    for name in FEATURE_COLUMNS:
        a = np.array([o[name] for o in ours])
        b = np.array([r[name] for r in reference])
        rho = spearmanr(a, b)[0] if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
        rel = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))
        print(f"{name:18s}{rho:10.4f}{rel:14.2e}")
    print(f"seconds per image: ours {t_ours / len(crops):.3f}, reference {t_ref / len(crops):.3f} "
          f"(ratio {t_ref / max(t_ours, 1e-9):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
