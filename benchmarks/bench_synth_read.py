"""Time `tmdafm synth` and reading the data set back, against the straightforward PIL loop.

Usage: python benchmarks/bench_synth_read.py [--n 1026] [--size 256] [--out DIR]

Rows: writing the synthetic data set (render + TIFF + manifest), reading it (read_dataset, then load_image on every
image) and, for comparison, a naive loop that opens every TIFF with PIL and converts it to a float array scaled to
0..1 (no manifest, no pixel size, no label parsing). Prints images/s and the ratio to the naive loop.
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


def naive_pil_read(folder: Path) -> int:
    from PIL import Image

    count = 0
    for path in sorted(folder.glob("*.tif")):
        with Image.open(path) as im:
            array = np.asarray(im.convert("F"), dtype=np.float32)
        low, high = array.min(), array.max()
        _ = (array - low) / (high - low) if high > low else np.zeros_like(array)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1026)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", type=Path, help="data folder (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "synth"
        synth_s, _ = timed(lambda: write_synthetic_dataset(out, n=args.n, size=args.size, seed=0))

        def read_all():
            manifest = read_dataset(out)
            for path, pixel_nm in zip(manifest["path"], manifest["pixel_size_nm"], strict=True):
                load_image(path, pixel_size_nm=pixel_nm)
            return len(manifest)

        naive_pil_read(out)  # warm the page cache so both readers see the same disk state
        read_s, read_n = timed(read_all)
        naive_s, naive_n = timed(lambda: naive_pil_read(out))
        manifest_s, manifest_n = timed(lambda: len(read_dataset(out)))

    rows = [
        ("synth (render + write TIFF)", args.n, synth_s),
        ("read_dataset only (manifest)", manifest_n, manifest_s),
        ("read_dataset + load_image", read_n, read_s),
        ("naive PIL open+convert loop", naive_n, naive_s),
    ]
    print(f"{args.n} images, {args.size}x{args.size} px, float32 TIFF")
    print(f"{'step':32s} {'images':>7s} {'seconds':>8s} {'images/s':>9s}")
    for name, count, seconds in rows:
        print(f"{name:32s} {count:7d} {seconds:8.2f} {count / seconds:9.1f}")
    print(f"read_dataset + load_image vs naive PIL loop: {naive_s / read_s:.2f}x the naive speed")


if __name__ == "__main__":
    main()
