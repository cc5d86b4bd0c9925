"""What the demo store teaches: cold build per step, test F1 of every run, stage structure, precision and pretraining.

Usage::

    python benchmarks/bench_demo_models.py [--store DIR] [--skip-cold] [--precision] [--pretraining]

1. Cold: ``tmdafm precompute --profile demo`` into a fresh store in a new process (imports included; budget 600 s on
   a quiet 2-core CPU), seconds per step from the store's record, then the warm rerun in a new process (budget 10 s).
2. Test macro-F1 (mean ± sd over folds) of the MtC and MtL runs and of every full-volume sequential stage; for MtC
   and MtL also the fold ensemble's macro-F1 on ``--fresh`` (1026) new films of the generator
   (:func:`tmdafm_core.data.synthetic.fresh_films`): the store's test set holds ~100 images and moves by ±5 points
   between equivalent runs, the fresh films by far less.
3. Figure 5 in numbers: silhouette of the material labels on each stage's plotted axes and the mean centroid shift
   per stage, per task and arm (:func:`tmdafm_core.selection.stage_structure`).
4. ``--precision``: the demo's MtC run trained in float32 and in bf16 autocast (``native`` on this CPU): seconds and
   validation / test / fresh-film macro-F1 (the comparison of the straightforward float32 run with the demo's choice).
5. ``--pretraining``: MtC from the store's AFM-pretrained backbone against from scratch, with the whole training
   set and with 16 training images per class: validation, test and fresh-film macro-F1 (the test set holds about
   100 images; validation pools every non-test image and the fresh films are ten times the test set, the steadier
   figures). The pretrained arm with every image is the store's own MtC run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core import pipeline, selection  # noqa: E402
from tmdafm_core.layout import BACKBONE_NAME, PRETRAINED_DIR  # noqa: E402
from tmdafm_core.store import read_record  # noqa: E402


def _cli(cache: Path) -> float:
    command = [sys.executable, "-m", "tmdafm_core.cli", "precompute", "--out", str(cache), "--profile", "demo"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def _f1(metrics: dict, split: str) -> str:
    block = metrics["f1_macro"][split]
    return f"{100 * block['mean']:.1f} ± {100 * block['std']:.1f}"


def _train(manifest, out: Path, **changes) -> tuple[float, dict]:
    from tmdafm_core.study_runs import torch_threads
    from tmdafm_core.training import cross_validate

    options = {**pipeline.run_training_options("demo"), **changes}
    threads = pipeline.PROFILES["demo"].train_options.get("threads")
    with torch_threads(threads):
        start = time.perf_counter()
        metrics = cross_validate(manifest, out, presplit=True, save_optimizer=False,
                                 fold_jobs=pipeline.PROFILES["demo"].train_options.get("fold_jobs", 1), **options)
    return time.perf_counter() - start, metrics


def _fresh_films(manifest: pd.DataFrame, n: int):
    """``n`` fresh films of the generator at the store's image side, and their materials."""
    from tmdafm_core.data.synthetic import fresh_films

    return fresh_films(n, size=int(manifest["width"].median()), seed=1001)


def _fresh_f1(run_dir: Path, fresh) -> float:
    """Macro-F1 (%) of a run's fold ensemble on the fresh films (NaN without any)."""
    from sklearn.metrics import f1_score

    from tmdafm_core.training import load_ensemble, predict_ensemble

    if not fresh:
        return float("nan")
    images, materials = fresh
    runs = load_ensemble(run_dir)
    predicted = predict_ensemble(runs, images, batch_size=128).materials
    return 100 * f1_score(materials, predicted, labels=list(runs[0].labels.classes), average="macro")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="store to build (default: a fresh temporary folder)")
    parser.add_argument("--skip-cold", action="store_true", help="the store at --store is already built")
    parser.add_argument("--precision", action="store_true", help="also compare float32 with bf16 training")
    parser.add_argument("--pretraining", action="store_true", help="also compare pretrained with scratch")
    parser.add_argument("--fresh", type=int, default=1026, help="fresh films to score the runs on (0: skip)")
    args = parser.parse_args(argv)
    cache = args.store or Path(tempfile.mkdtemp(prefix="bench_demo_")) / "cache"
    print(f"store {cache}; cores {os.cpu_count()}; load average at start {os.getloadavg()[0]:.2f}", flush=True)

    if not args.skip_cold:
        cold = _cli(cache)
        records = read_record(cache)
        rows = [(step, records[step]["seconds"]) for step in pipeline.STEPS if step in records]
        print(f"\n{'step':22s}{'seconds':>9s}")
        for step, seconds in rows:
            print(f"{step:22s}{seconds:9.1f}")
        print(f"{'cold, new process':22s}{cold:9.1f}   budget 600 s: {'met' if cold <= 600 else 'NOT met'}")
        warm = _cli(cache)
        print(f"{'warm, new process':22s}{warm:9.1f}   budget 10 s: {'met' if warm <= 10 else 'NOT met'}")

    manifest = pipeline.load_manifest(cache)
    films = _fresh_films(manifest, args.fresh) if args.fresh else None
    fresh = {task: _fresh_f1(cache / "runs" / task, films) for task in ("mtc", "mtl")}
    print(f"\n{'run':40s}{'val F1 %':>14s}{'test F1 %':>14s}{'fresh F1 %':>12s}")
    for task in ("mtc", "mtl"):
        metrics = json.loads((cache / "runs" / task / "metrics.json").read_text())
        print(f"{task.upper():40s}{_f1(metrics, 'val'):>14s}{_f1(metrics, 'test'):>14s}"
              f"{fresh[task]:12.1f}")
    if films:
        print(f"(fresh: macro-F1 of the fold ensemble on {args.fresh} new films of the generator, ten times the "
              "store's test set: the steady estimate of how the models read new samples)")
    study = pd.read_csv(cache / "sequential" / "results.csv", dtype={"volume": str})
    titles = pipeline_titles(cache)
    for row in study[study["split"] == "test"].itertuples():
        val = study[(study["split"] == "val") & (study["run"] == row.run)]["f1_mean"].iloc[0]
        name = f"{row.task.upper()} {titles[row.mode]} {row.n_classes} cls, volume {row.volume}"
        print(f"{name:40s}{100 * val:14.1f}{f'{100 * row.f1_mean:.1f} ± {100 * row.f1_std:.1f}':>14s}")

    print(f"\n{'task':6s}{'arm':28s}{'classes':>8s}{'silhouette':>12s}{'centroid shift':>16s}")
    for task in ("mtc", "mtl"):
        table = selection.stage_structure(cache, task)
        for row in ([] if table is None else table.itertuples()):
            print(f"{task:6s}{titles[row.mode]:28s}{row.n_classes:8d}{row.silhouette:12.3f}{row.centroid_shift:16.3f}")
        if table is not None:
            means = table.groupby("mode")["centroid_shift"].mean()
            print(f"{task:6s}mean shift per stage: " + ", ".join(f"{titles[m]} {v:.3f}" for m, v in means.items()))

    backbone = str(cache / PRETRAINED_DIR / BACKBONE_NAME)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.precision:
            print(f"\n{'MtC precision':28s}{'seconds':>9s}{'val F1 %':>14s}{'test F1 %':>14s}{'fresh F1 %':>12s}")
            timings = {}
            for precision in ("fp32", "native"):
                seconds, metrics = _train(manifest, folder / precision, precision=precision, weights=backbone)
                timings[precision] = seconds
                used = metrics.get("precision_used", precision)
                print(f"{precision + ' (' + str(used) + ')':28s}{seconds:9.1f}{_f1(metrics, 'val'):>14s}"
                      f"{_f1(metrics, 'test'):>14s}{_fresh_f1(folder / precision, films):12.1f}", flush=True)
            print(f"bf16 speed-up {timings['fp32'] / timings['native']:.2f}x")
        if args.pretraining:
            classes = sorted(manifest["material"].unique())
            print(f"\n{'MtC start':28s}{'volume':>8s}{'val F1 %':>14s}{'test F1 %':>14s}{'fresh F1 %':>12s}")
            for volume in ("full", 16):
                limits = None if volume == "full" else {c: volume for c in classes}
                for name, weights in (("AFM-pretrained (synthetic)", backbone), ("scratch", "none")):
                    run_dir = folder / f"{name[:7]}_{volume}"
                    if volume == "full" and weights == backbone:
                        run_dir = cache / "runs" / "mtc"  # the store's MtC run is this arm, trained the same way
                        metrics = json.loads((run_dir / "metrics.json").read_text())
                    else:
                        _, metrics = _train(manifest, run_dir, weights=weights, train_limits=limits)
                    print(f"{name:28s}{str(volume):>8s}{_f1(metrics, 'val'):>14s}{_f1(metrics, 'test'):>14s}"
                          f"{_fresh_f1(run_dir, films):12.1f}", flush=True)
    return 0


def pipeline_titles(cache: Path) -> dict:
    from tmdafm_core.results import mode_titles

    return mode_titles(cache)


if __name__ == "__main__":
    sys.exit(main())
