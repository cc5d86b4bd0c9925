"""How well each descriptor follows the synthetic generator's truth on a mixed data set (all growth modes at once).

Usage: python benchmarks/bench_descriptor_truth.py [--n 400] [--size 256] [--seed 0]

The features tests check each descriptor against its truth with one generator factor varied at a time (Spearman
>= 0.8). This script measures the harder case a real data set poses: every factor varies together, so a descriptor
answers to more than one physical cause. Prints Spearman rho per (descriptor, truth) pair over the whole set and
within each growth mode, beside the pair's expected sign.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.data import read_dataset  # noqa: E402
from tmdafm_core.data.synthetic import write_synthetic_dataset  # noqa: E402
from tmdafm_core.features import compute_table  # noqa: E402

PAIRS = [("grain_density", "truth_grain_count"), ("dog_blob", "truth_particle_count"),
         ("defect_density", "truth_particle_count"), ("step_edges", "truth_terrace_count"),
         ("rms_roughness", "truth_noise_amplitude")]


def rho(frame: pd.DataFrame, feature: str, column: str) -> float:
    """Spearman rho, NaN where either side is constant in ``frame`` (e.g. no terraces in a growth mode)."""
    x, y = frame[feature], frame[column].fillna(0)
    return float("nan") if x.nunique() < 2 or y.nunique() < 2 else float(spearmanr(x, y)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "synth"
        write_synthetic_dataset(data, n=args.n, size=args.size, seed=args.seed)
        truth = pd.read_csv(data / "manifest.csv")
        features = compute_table(read_dataset(data), cache=False, progress=False)
    truth["image"] = truth["path"].map(lambda p: Path(p).name)
    features["image"] = features["image"].map(lambda p: Path(p).name)
    merged = truth.merge(features, on="image")
    groups = [("all", merged), *merged.groupby("truth_growth_mode")]
    print(f"{len(merged)} synthetic images at {args.size} px, seed {args.seed}: Spearman rho (descriptor vs truth)")
    print(f"{'descriptor':16s}{'truth':24s}" + "".join(f"{f'{name} ({len(g)})':>17s}" for name, g in groups))
    for feature, column in PAIRS:
        values = [rho(g, feature, column) for _, g in groups]
        print(f"{feature:16s}{column.removeprefix('truth_'):24s}" + "".join(f"{v:17.2f}" for v in values))


if __name__ == "__main__":
    main()
