"""The fold ensemble's cost: one 256 px image classified by all five ResNet18 fold models vs one fold model.

Usage: python benchmarks/bench_ensemble.py [--folds 5] [--size 256] [--repeats 5] [--threads 2]

Trains a small five-fold ResNet18 run on synthetic data (1 epoch: the weights do not change the cost), then times
``predict_ensemble(load_ensemble(run), [image])`` and ``predict(load_run(run, fold), [image])``: warm (models loaded,
best and median of the repeats) and cold (loading the checkpoints included). The issue's budget: <= 1 s for the
five-fold ensemble on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.data import read_dataset  # noqa: E402
from tmdafm_core.data.synthetic import write_synthetic_dataset  # noqa: E402
from tmdafm_core.training import cross_validate, load_ensemble, load_run, predict, predict_ensemble  # noqa: E402


def _timings(function, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        out.append(time.perf_counter() - start)
    return out


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_synthetic_dataset(work / "data", n=200, size=args.size, seed=0)
        manifest = read_dataset(work / "data")
        cross_validate(manifest, work / "run", weights="none", folds=args.folds, epochs=1, image_size=args.size,
                       batch_size=16)
        image = [str(manifest["path"].iloc[0])]
        start = time.perf_counter()
        runs = load_ensemble(work / "run")
        predict_ensemble(runs, image)
        cold_ensemble = time.perf_counter() - start
        start = time.perf_counter()
        single = load_run(work / "run", 0)
        predict(single, image)
        cold_single = time.perf_counter() - start
        warm_ensemble = _timings(lambda: predict_ensemble(runs, image), args.repeats)
        warm_single = _timings(lambda: predict(single, image), args.repeats)
    print(f"one {args.size} px image, {args.threads} torch threads")
    print(f"{'':24s}{'warm best':>10s}{'warm median':>13s}{'cold':>8s}  (s)")
    print(f"{f'ensemble of {args.folds} folds':24s}{min(warm_ensemble):10.3f}{statistics.median(warm_ensemble):13.3f}"
          f"{cold_ensemble:8.2f}")
    print(f"{'one fold':24s}{min(warm_single):10.3f}{statistics.median(warm_single):13.3f}{cold_single:8.2f}")
    ratio = statistics.median(warm_ensemble) / statistics.median(warm_single)
    print(f"ratio ensemble / one fold (warm median): {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
