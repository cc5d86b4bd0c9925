"""Wall time of the whole sequential grid with ``--profile demo``, and its results table.

Usage::

    python benchmarks/bench_sequential_demo.py [DATA] [--out DIR] [--n 1026] [--size 128] [--threads N]

Without DATA a synthetic set (``--n`` images of ``--size`` px) is written to a temporary folder first. The study
runs into a fresh temporary folder unless ``--out`` is given (an existing one resumes). Also measured: reading the
images once for the whole study (what ``sequential_study`` does) against re-reading each run's images from disk
(what separate ``tmdafm train`` runs would do), with their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from tmdafm_core.data import PAPER_MATERIALS, read_dataset
from tmdafm_core.data.synthetic import write_synthetic_dataset
from tmdafm_core.experiments import PROFILES, profile_options
from tmdafm_core.sequential import DEFAULT_VOLUMES, MODES, plan_stages, results_table, sequential_study
from tmdafm_core.training import load_data, prepare_split


def image_reads(manifest, options) -> tuple[float, float, int]:
    """Seconds to read the study's images once, and to read each run's rows separately (the naive way)."""
    split, _ = prepare_split(manifest, folds=options["folds"], seed=0)
    size = options["image_size"]
    start = time.perf_counter()
    load_data(split, image_size=size)
    once = time.perf_counter() - start
    stages, _ = plan_stages("unused", PAPER_MATERIALS, DEFAULT_VOLUMES, ("mtc",), MODES)
    start = time.perf_counter()
    for stage in stages:
        load_data(split[split["material"].isin(stage.classes)], image_size=size)
    return once, time.perf_counter() - start, len(stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--n", type=int, default=1026)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--threads", type=int, help="torch threads (default: the demo profile's)")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(prefix="bench_seq_")
    data = args.data
    if data is None:
        data = Path(scratch.name) / "data"
        start = time.perf_counter()
        write_synthetic_dataset(data, n=args.n, size=args.size, seed=0)
        print(f"synthetic set: {args.n} images of {args.size} px in {time.perf_counter() - start:.1f} s")
    manifest = read_dataset(data)
    options = profile_options("demo", threads=args.threads)
    out = args.out or Path(scratch.name) / "study"
    load = os.getloadavg()
    print(f"profile demo: {PROFILES['demo']}")
    print(f"torch threads {options['threads']}, cpus {os.cpu_count()}, load average before {load[0]:.2f}")

    start = time.perf_counter()
    results = sequential_study(manifest, out, progress=True, **options)
    wall = time.perf_counter() - start
    print(f"load average after {os.getloadavg()[0]:.2f} (other processes share the CPU when > 0)")
    print()
    print("test macro-F1 (%), mean ± std over folds")
    print(results_table(results).to_string(index=False))
    print()
    print("validation macro-F1 (%)")
    print(results_table(results, split="val").to_string(index=False))
    print()
    torch.set_num_threads(options["threads"])
    once, per_run, n_runs = image_reads(manifest, options)
    print(f"{'step':40s}{'seconds':>10s}")
    print(f"{'whole sequential grid (demo profile)':40s}{wall:10.1f}")
    print(f"{'image read, once for the study':40s}{once:10.2f}")
    print(f"{f'image read, per run ({n_runs} runs, naive)':40s}{per_run:10.2f}")
    print(f"{'ratio naive / shared':40s}{per_run / max(once, 1e-9):10.1f}")
    print(f"results: {out / 'results.csv'}")


if __name__ == "__main__":
    main()
