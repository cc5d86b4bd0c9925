"""Folds in parallel processes: one demo run (MtC) trained with its folds one after the other vs two at once.

Usage: python benchmarks/bench_fold_jobs.py [--store cache] [--epochs 10] [--image-size 64]

Trains the store's data set (``tmdafm precompute`` builds it) with the demo profile's training options (ResNet18
from scratch, one torch thread per process), twice: ``fold_jobs=1`` (the folds in turn, in this process) and
``fold_jobs=2`` (two spawned processes, one fold each). Prints wall time, the speed-up and whether the two runs'
metrics are identical (they must be: each fold is seeded the same way wherever it runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.layout import load_manifest  # noqa: E402
from tmdafm_core.profiles import recipe_options as profile_options  # noqa: E402
from tmdafm_core.study_runs import torch_threads  # noqa: E402
from tmdafm_core.training import cross_validate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("cache"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    manifest = load_manifest(args.store)
    options = profile_options("demo", epochs=args.epochs, image_size=args.image_size)
    threads = options.pop("threads")
    options.pop("fold_jobs", None)
    rows, documents = [], {}
    with tempfile.TemporaryDirectory() as folder, torch_threads(threads):
        for jobs in (1, 2):
            start = time.perf_counter()
            documents[jobs] = cross_validate(manifest, Path(folder) / f"jobs{jobs}", presplit=True, fold_jobs=jobs,
                                             save_optimizer=False, **options)
            rows.append((jobs, time.perf_counter() - start))
    print(f"{len(manifest)} images, {options['folds']} folds, {args.epochs} epochs at {args.image_size} px, "
          f"ResNet18 from scratch, {threads} torch thread(s) per process")
    print(f"{'fold_jobs':>10s}{'seconds':>10s}{'speed-up':>10s}")
    for jobs, seconds in rows:
        print(f"{jobs:10d}{seconds:10.1f}{rows[0][1] / seconds:9.2f}x")
    same = json.dumps(documents[1], sort_keys=True) == json.dumps(documents[2], sort_keys=True)
    print(f"identical metrics: {same}; test macro-F1 {documents[1]['f1_macro']['test']['mean']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
