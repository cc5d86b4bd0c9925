"""Reading instrument files: read + level + crop of raw 512 px scans, against reading the same heights as TIFF.

Usage: python benchmarks/bench_raw_read.py [--n 100] [--size 512]

Writes ``n`` Gwyddion files (``gwyfile``; 2 µm synthetic TMD scans at ``size`` px, with a tilt and scan-line offsets
added as a microscope records them) and the same heights as float32 TIFFs, then times, per file:

* ``raw: read``: AFMReader's reading of the height channel (:func:`tmdafm_core.data.scans.read_scan`);
* ``raw: read + level + crop``: what a raw file costs as data (:func:`~tmdafm_core.data.scans.prepare_scan`, the
  default levelling and the central 1 µm);
* ``TIFF: load_image``: the same heights from a TIFF, scaled to 0..1 (the straightforward path of prepared data);
* ``Bruker (real file): read``: the real numbered Bruker test file (256 px, ``tests/data``) read ``n`` times, since
  Bruker is the paper's format and pySPM reads it differently from AFMReader's own Gwyddion parser.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.data import load_image, save_tiff  # noqa: E402
from tmdafm_core.data import synthetic as syn  # noqa: E402
from tmdafm_core.data.scans import prepare_scan, read_scan  # noqa: E402


def write_scans(folder: Path, n: int, size: int) -> tuple[list[Path], list[Path]]:
    from gwyfile.objects import GwyContainer, GwyDataField, GwySIUnit

    rng = np.random.default_rng(0)
    materials = list(syn.PAPER_CLASS_COUNTS)
    bases = [syn.render_surface(dataclasses.replace(syn.sample_params(materials[i % 5], i), scan_size_nm=2000.0),
                                size, seed=i)[0] for i in range(min(n, 10))]
    yy, xx = np.mgrid[:size, :size]
    gwy, tif = [], []
    for i in range(n):
        height = bases[i % len(bases)] + 0.004 * xx - 0.002 * yy + rng.normal(0, 0.3, size)[:, None]
        container = GwyContainer()
        container["/0/data"] = GwyDataField(height.astype(np.float64) * 1e-9, xreal=2e-6, yreal=2e-6,
                                            si_unit_xy=GwySIUnit(unitstr="m"), si_unit_z=GwySIUnit(unitstr="m"))
        container["/0/data/title"] = "Height"
        gwy.append(folder / f"scan{i:03d}.gwy")
        container.tofile(str(gwy[-1]))
        tif.append(folder / f"scan{i:03d}.tif")
        save_tiff(tif[-1], height, pixel_size_nm=2000.0 / size)
    return gwy, tif


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        gwy, tif = write_scans(Path(folder), args.n, args.size)
        bruker = Path(__file__).resolve().parents[1] / "tests" / "data" / "old_bruker.002"
        read_scan(bruker)  # the readers' imports (pySPM, AFMReader) once, outside the timings
        rows = []
        for name, function, files in (("Bruker (real file): read", read_scan, [bruker] * args.n),
                                      ("raw: read", read_scan, gwy), ("raw: read + level + crop", prepare_scan, gwy),
                                      ("TIFF: load_image", load_image, tif)):
            start = time.perf_counter()
            for path in files:
                function(path)
            seconds = time.perf_counter() - start
            rows.append((name, seconds, len(files) / seconds))
    print(f"{args.n} scans of {args.size} x {args.size} px (Gwyddion files and the same heights as float32 TIFF)")
    print(f"{'path':28s}{'seconds':>10s}{'images/s':>11s}{'vs TIFF':>10s}")
    tiff_rate = rows[-1][2]
    for name, seconds, rate in rows:
        print(f"{name:28s}{seconds:10.2f}{rate:11.1f}{tiff_rate / rate:9.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
