"""How well does the novelty score tell unfamiliar images from genuine held-out ones? And is calibration good?

Usage: python benchmarks/bench_novelty.py [--store cache] [--task mtc] [--per-kind 40] [--seed 1]

Reads a built store (``tmdafm precompute --out STORE``). In-distribution images are the store's held-out test images
(no fold model trained on them). Unfamiliar images of several kinds are made here: the test images with heavy noise,
pure noise, flat (tilted) scans, synthetic films far outside every class's parameters (a whole 5 µm scan shrunk to
the crop size, a carpet of particles, bare substrate with terraces only) and real AFM scans of another kind of
sample (DNA on mica, TopoStats' test data, ``benchmarks/data``). For each candidate score, the table gives the AUROC
against each kind (1 = perfectly separated, 0.5 = chance) and the share of genuine held-out test images flagged at
the 95th percentile of the validation images (the shipped quantile); the scores are computed per fold model and
averaged over folds. A last line gives the share of each kind that the shipped score flags (its detection rate).

``product`` is what tmdafm ships (:mod:`tmdafm_core.novelty`, through ``predict_ensemble``: every fold model's
novelty against its own training images, averaged). The others are the alternatives it was chosen against: distance
to the 5 nearest training embeddings in the latent space, Mahalanobis distances of the latent features and of the
pooled last-stage backbone features (class-conditional, shared covariance), the energy score and the maximum softmax
probability. The issue's goal: AUROC >= 0.95 against each kind with <= 5 % of genuine held-out images flagged.

The calibration rows read the store's ``metrics.json``: expected calibration error (15 bins) and Brier score of
the test images before and after the per-fold temperature (goal: calibrated test ECE <= 0.05).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.data import synthetic  # noqa: E402
from tmdafm_core.data.images import scale_pixels  # noqa: E402
from tmdafm_core.layout import load_manifest  # noqa: E402
from tmdafm_core.novelty import DEFAULT_QUANTILE  # noqa: E402

REAL_AFM = Path(__file__).with_name("data") / "topostats_dna_afm.npz"


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """Probability that an unfamiliar image scores above a genuine one (ties count half)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def unfamiliar_images(test_images: list, *, per_kind: int, size: int, seed: int) -> dict[str, list]:
    """Height maps of each unfamiliar kind (any scale; the model scales them to 0..1 like any upload)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    kinds = {
        "heavy noise": [image + rng.normal(0.0, 1.5 * image.std(), image.shape) for image in test_images[:per_kind]],
        "pure noise": [rng.normal(size=(size, size)) for _ in range(per_kind)],
        "flat scan": [rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy + rng.normal(0, 0.01, (size, size))
                      for _ in range(per_kind)],
    }
    materials = list(synthetic.PAPER_CLASS_COUNTS)
    far = {"5 um scan shrunk": dict(scan_size_nm=5000.0),
           "particle carpet": dict(particle_density_per_um2=400.0, particle_diameter_nm=45.0),
           "bare substrate": dict(domain_density_per_um2=0.01, terrace_spacing_nm=80.0,
                                  particle_density_per_um2=1.0)}
    for name, changes in far.items():
        kinds[name] = [synthetic.render_surface(dataclasses.replace(
            synthetic.sample_params(materials[i % len(materials)], seed * 1000 + i), **changes), size, seed=i)[0]
            for i in range(per_kind)]
    real = []
    with np.load(REAL_AFM) as archive:
        for name in archive.files:
            scan = archive[name].astype(np.float32)
            side = min(scan.shape) // 2 if min(scan.shape) >= 256 else min(scan.shape)
            real += [scan[r:r + side, c:c + side] for r in range(0, scan.shape[0] - side + 1, side)
                     for c in range(0, scan.shape[1] - side + 1, side)]
    kinds["real AFM, DNA on mica"] = real
    return kinds


def _knn(train: np.ndarray, query: np.ndarray, k: int = 5) -> np.ndarray:
    distance = np.sqrt(((query[:, None, :] - train[None]) ** 2).sum(-1))
    return np.sort(distance, axis=1)[:, :k].mean(axis=1)


def _class_mahalanobis(train: np.ndarray, labels: np.ndarray):
    classes = np.unique(labels)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(train)
    precision = np.linalg.inv(covariance + 1e-3 * np.trace(covariance) / len(covariance) * np.eye(len(covariance)))

    def score(query):
        diff = query[:, None, :] - means[None]
        return np.einsum("nci,ij,ncj->nc", diff, precision, diff).min(axis=1)
    return score


def fold_outputs(run, images: list) -> dict:
    """Logits, latent features and pooled last-stage features of one fold model for height maps."""
    import torch

    from tmdafm_core.training import resize_image

    stored = torch.stack([resize_image(scale_pixels(image), run.image_size) for image in images])
    outputs = []
    for start in range(0, len(stored), 64):
        x = run.batches(stored[start:start + 64])(np.arange(min(64, len(stored) - start)))
        with torch.inference_mode():
            out = run.model.forward_all(x)
        outputs.append((out.logits.numpy(), out.latent.numpy(), run.model.pool(out.maps).numpy()))
    return {key: np.concatenate([o[i] for o in outputs]) for i, key in enumerate(("logits", "latent", "pooled"))}


def alternative_scores(run, train: list, train_labels: np.ndarray, sets: dict) -> dict[str, dict]:
    """{candidate: {set name: scores}} for one fold model."""
    import torch

    reference = fold_outputs(run, train)
    latent_maha = _class_mahalanobis(reference["latent"], train_labels)
    pooled_maha = _class_mahalanobis(reference["pooled"], train_labels)
    candidates = {
        "kNN latent (k=5)": lambda o: _knn(reference["latent"], o["latent"]),
        "Mahalanobis latent": lambda o: latent_maha(o["latent"]),
        "Mahalanobis pooled backbone": lambda o: pooled_maha(o["pooled"]),
        "energy": lambda o: -torch.logsumexp(torch.as_tensor(o["logits"]), dim=1).numpy(),
        "max softmax": lambda o: -torch.softmax(torch.as_tensor(o["logits"]), dim=1).max(dim=1).values.numpy(),
    }
    outputs = {name: fold_outputs(run, images) for name, images in sets.items()}
    return {candidate: {name: score(outputs[name]) for name in sets} for candidate, score in candidates.items()}


def main(argv=None) -> int:
    import torch

    from tmdafm_core.data import load_image
    from tmdafm_core.training import load_ensemble, predict_ensemble

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("cache"))
    parser.add_argument("--task", choices=("mtc", "mtl"), default="mtc")
    parser.add_argument("--per-kind", type=int, default=40, help="images of each synthetic unfamiliar kind")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = args.store / "runs" / args.task
    runs = load_ensemble(run_dir)
    if runs[0].novelty is None:
        print(runs[0].trust_note, file=sys.stderr)
        return 2
    splits = pd.read_csv(run_dir / "splits.csv", dtype={"image": str, "sample_id": str})
    frame = splits.merge(load_manifest(args.store)[["image", "path"]], on="image")
    images = [load_image(path)[0] for path in frame["path"]]
    test = [images[i] for i in np.flatnonzero(frame["split"] == "test")]
    size = int(np.median([min(image.shape) for image in test]))
    kinds = unfamiliar_images(test, per_kind=args.per_kind, size=size, seed=args.seed)

    rows: dict[str, dict[str, list]] = {}

    def add(candidate, genuine, threshold, scores):
        row = rows.setdefault(candidate, {})
        row.setdefault("held-out flagged %", []).append(100.0 * float(np.mean(genuine > threshold)))
        for name in kinds:
            row.setdefault(name, []).append(auroc(genuine, scores[name]))

    # The product: novelty of the fold ensemble exactly as predict / the app compute it (threshold 1).
    product = {name: predict_ensemble(runs, members, batch_size=64).novelty for name, members in
               {"test": test, **kinds}.items()}
    add("product: stage-1 texture Mahalanobis (ensemble)", product["test"], 1.0, product)
    labels = frame["material"].astype("category").cat.codes.to_numpy()
    per_candidate: dict[str, list] = {}
    for run in runs:
        train = np.flatnonzero((frame["split"] != "test") & (frame["fold"] != run.fold))
        val = np.flatnonzero(frame["fold"] == run.fold)
        sets = {"val": [images[i] for i in val], "test": test, **kinds}
        for candidate, scores in alternative_scores(run, [images[i] for i in train], labels[train], sets).items():
            per_candidate.setdefault(candidate, []).append(scores)
    for candidate, folds in per_candidate.items():
        for scores in folds:
            add(candidate, scores["test"], np.quantile(scores["val"], DEFAULT_QUANTILE), scores)
    table = pd.DataFrame({name: {column: float(np.mean(values)) for column, values in row.items()}
                          for name, row in rows.items()}).T
    pd.set_option("display.width", 250)
    print(f"store {args.store}, {args.task}: {len(runs)} fold models, {len(test)} held-out test images "
          f"({size} px), unfamiliar images per kind: " + ", ".join(f"{k} {len(v)}" for k, v in kinds.items()))
    print("AUROC of each score against each kind of unfamiliar image (mean over fold models for the alternatives):")
    print(table.round(3).to_string())
    flagged = {name: 100.0 * float(np.mean(values > 1.0)) for name, values in product.items()}
    print("\nshare flagged unfamiliar by the product (novelty > 1), %: " +
          ", ".join(f"{name} {value:.0f}" for name, value in flagged.items()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    block = metrics.get("calibration")
    if block:
        print("\ncalibration (means over folds)      before    after")
        for metric in ("ece", "brier"):
            for part in ("val", "test"):
                print(f"  {metric:5s} {part:4s}                     {block[metric + '_uncalibrated'][part]:7.3f}  "
                      f"{block[metric][part]:7.3f}")
        print("  temperatures: " + ", ".join(f"{t:.2f}" for t in block["temperature"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
