"""Classify one 256 px upload end to end on the CPU: the app's shared classifier vs the straightforward way.

Usage: python benchmarks/bench_classify.py CACHE [--repeats 5]

``shared``: :func:`tmdafm_core.classify.classify_uploads` (models, projection and descriptor table loaded once per
process; the upload decoded in memory), timed warm, best and median of the repeats, and the first call of the
process (cold: loading, UMAP rebuild and compile). ``straightforward``: what a script would do per request --
write the upload to a temporary file, ``load_run`` + ``predict(cam=True)``, ``Projection.load`` + ``project``,
``compute_all``.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def _upload(seed: int) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (np.random.default_rng(seed).random((256, 256)) * 65535).astype(np.uint16))
    return buffer.getvalue()


def straightforward(cache: Path, data: bytes) -> str:
    from tmdafm_core.data import load_image
    from tmdafm_core.embeddings import Projection
    from tmdafm_core.features import compute_all
    from tmdafm_core.training import load_run, predict

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload.tif"
        path.write_bytes(data)
        image, pixel_nm = load_image(path)
    run = load_run(cache / "runs" / "mtc")
    result = predict(run, [image], cam=True)
    projection = Projection.load(cache / "latent" / "mtc" / "projection.npz")
    projection.project(result.embeddings)
    compute_all(image, pixel_nm)
    return result.materials[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from tmdafm_core import classify

    start = time.perf_counter()
    classify.classify_uploads(args.cache, [("cold.tif", _upload(0))])
    cold = time.perf_counter() - start
    shared, plain = [], []
    for i in range(args.repeats):  # interleaved so load from other processes hits both alike
        start = time.perf_counter()
        classify.classify_uploads(args.cache, [("warm.tif", _upload(i + 1))])
        shared.append(time.perf_counter() - start)
        start = time.perf_counter()
        straightforward(args.cache, _upload(i + 1))
        plain.append(time.perf_counter() - start)
    print(f"{'approach':28s}{'best s':>10s}{'median s':>10s}")
    print(f"{'shared classifier (warm)':28s}{min(shared):10.3f}{statistics.median(shared):10.3f}")
    print(f"{'straightforward per request':28s}{min(plain):10.3f}{statistics.median(plain):10.3f}")
    print(f"{'shared classifier, 1st call':28s}{cold:10.3f}{'':>10s}")
    print(f"ratio straightforward / shared (median): {statistics.median(plain) / statistics.median(shared):.1f}x")


if __name__ == "__main__":
    main()
