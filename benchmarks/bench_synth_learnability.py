"""Is the synthetic demo data set learnable? Descriptor proxy and a scratch ResNet18, against chance.

Usage: python benchmarks/bench_synth_learnability.py [--n 500] [--size 128] [--epochs 10] [--image-size 64]
       [--folds 2] [--no-cnn] [--threads 1] [--seed 0]

Writes a synthetic data set (``write_synthetic_dataset``), then measures

* descriptor proxy: the 14 physical descriptors (``compute_table``) → random forest, sample-grouped 5-fold CV
  (``descriptor_separability``): macro-F1, accuracy and the confusion matrix;
* scratch ResNet18: ``cross_validate(arch="resnet18", weights="none", task="mtc")`` at ``--image-size`` px for
  ``--epochs`` epochs on ``--folds`` folds: mean validation and held-out test macro-F1 and the test confusion
  matrix and the validation confusion pooled over folds (the test set holds few samples per class: validation
  is the steadier figure);
* chance: a stratified random guess with the class frequencies (the straightforward baseline; ratio = F1 / chance).

Prints one table row per method with its seconds. Run it before and after changing the generator's priors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tmdafm_core.data import read_dataset  # noqa: E402
from tmdafm_core.data.synthetic import descriptor_separability, write_synthetic_dataset  # noqa: E402


def chance_f1(materials, *, seed: int = 0, repeats: int = 200) -> float:
    """Macro-F1 of guessing each label at random with the class frequencies."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(seed)
    materials = np.asarray(materials)
    return float(np.mean([f1_score(materials, rng.permutation(materials), average="macro") for _ in range(repeats)]))


def print_confusion(title: str, classes, confusion) -> None:
    print(f"\n{title} (% of true class, rows = true)")
    print(" " * 9 + "".join(f"{c:>9s}" for c in classes))
    for name, row in zip(classes, np.asarray(confusion, dtype=float), strict=True):
        print(f"{name:>9s}" + "".join(f"{v:9.1f}" for v in row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="rendered image side in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64, help="CNN input side in px")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--no-cnn", action="store_true", help="descriptor proxy only")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "synth"
        start = time.perf_counter()
        write_synthetic_dataset(data, n=args.n, size=args.size, seed=args.seed)
        manifest = read_dataset(data)
        synth_s = time.perf_counter() - start

        from tmdafm_core.features import compute_table

        start = time.perf_counter()
        features = compute_table(manifest, cache=False, progress=False)
        proxy = descriptor_separability(features)
        rows.append(("descriptors + random forest, 5 group folds", proxy["f1_macro"], proxy["accuracy"],
                     time.perf_counter() - start))

        cnn = None
        if not args.no_cnn:
            import torch

            from tmdafm_core.training import cross_validate

            torch.set_num_threads(args.threads)
            start = time.perf_counter()
            metrics = cross_validate(manifest, Path(scratch) / "run", arch="resnet18", weights="none", task="mtc",
                                     folds=args.folds, epochs=args.epochs, image_size=args.image_size, lr=1e-3,
                                     batch_size=64, seed=args.seed)
            cnn = metrics
            from tmdafm_core.training import load_checkpoint

            # Validation images of all folds pooled: many more samples than the small held-out test set.
            val_counts = sum(np.asarray(load_checkpoint(path)["scores"]["val"]["confusion"], dtype=float)
                             for path in sorted((Path(scratch) / "run").glob("fold*.pt")))
            seconds = time.perf_counter() - start
            for split in ("val", "test"):
                rows.append((f"scratch ResNet18 {args.image_size} px, {args.epochs} ep, {args.folds} folds ({split})",
                             metrics["f1_macro"][split]["mean"], metrics["accuracy"][split]["mean"], seconds))

    chance = chance_f1(manifest["material"], seed=args.seed)
    print(f"{args.n} synthetic images ({manifest['sample_id'].nunique()} samples) at {args.size} px, seed {args.seed};"
          f" synth + read {synth_s:.1f} s")
    print(f"{'method':58s} {'macro-F1':>8s} {'accuracy':>8s} {'x chance':>8s} {'seconds':>8s}")
    print(f"{'chance (stratified random guess)':58s} {chance:8.3f} {'':>8s} {1.0:8.2f} {0.0:8.1f}")
    for name, f1, accuracy, seconds in rows:
        print(f"{name:58s} {f1:8.3f} {accuracy:8.3f} {f1 / chance:8.2f} {seconds:8.1f}")
    print_confusion("descriptor proxy confusion", proxy["classes"], proxy["confusion_percent"])
    if cnn is not None:
        confusion = np.asarray(cnn["confusion_test_percent"], dtype=float)
        confusion = 100.0 * confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1e-9)
        print_confusion("scratch ResNet18 test confusion (mean over folds)", cnn["classes"], confusion)
        val_percent = 100.0 * val_counts / np.maximum(val_counts.sum(axis=1, keepdims=True), 1e-9)
        print_confusion("scratch ResNet18 validation confusion (folds pooled)", cnn["classes"], val_percent)


if __name__ == "__main__":
    main()
