"""Feature-extraction MLP (Table 2 "ImageNet*"): our tuned head against tuned scikit-learn baselines, same folds.

Usage: python benchmarks/bench_feature_mlp.py [TABLE] [--n 400] [--size 64] [--folds 5] [--epochs 60]

TABLE is any feature table (``tmdafm extract`` output, e.g. frozen ImageNet ResNet18 features of real data). Without
one, a synthetic demo set is written and its frozen-backbone features extracted: random-initialised ResNet18
(ImageNet weights cannot be downloaded here), so the absolute numbers say little; the comparison on the same
folds is what this measures. Methods, each tuned on the training part of every outer fold only:

* ``ours tuned``: ``cross_validate(table, tune=True)`` (inner grouped split; lr x weight decay x dropout);
* ``ours fixed``: the paper's fine-tuning settings (lr 7.5e-5, no tuning), the old default;
* ``logistic``: scikit-learn LogisticRegression on standardised inputs, C tuned by GroupKFold(3) grid search;
* ``sklearn MLP``: MLPClassifier(100 hidden) on standardised inputs, alpha and learning rate tuned the same way.

Prints mean accuracy and macro-F1 (validation folds, test) and seconds per method.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import timed  # noqa: E402
from tmdafm_core.data import read_dataset, read_feature_table  # noqa: E402


def demo_table(n: int, size: int, workdir: Path):
    from tmdafm_core.data.synthetic import write_synthetic_dataset
    from tmdafm_core.training import extract

    write_synthetic_dataset(workdir / "data", n=n, size=size, seed=0)
    manifest = read_dataset(workdir / "data")
    table = extract(manifest, arch="resnet18", weights="none", image_size=size)
    table.to_parquet(workdir / "features.parquet", index=False)
    return read_feature_table(workdir / "features.parquet")


def sklearn_scores(table, splits: pd.DataFrame, folds: int, kind: str) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    position = pd.Series(np.arange(len(table.frame)), index=table.frame["image"].astype(str))
    rows = position.loc[splits["image"].astype(str)].to_numpy()
    x, y = table.features[rows], splits["material"].astype(str).to_numpy()
    groups = splits["sample_id"].astype(str).to_numpy()
    is_test = (splits["split"] == "test").to_numpy()
    if kind == "logistic":
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        grid = {"logisticregression__C": [0.001, 0.01, 0.1, 1.0, 10.0]}
    else:
        model = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(100,), max_iter=400,
                                                              early_stopping=False, random_state=0))
        grid = {"mlpclassifier__alpha": [1e-4, 1e-2, 1.0], "mlpclassifier__learning_rate_init": [1e-3, 1e-4]}
    scores = {"val": [], "test": []}
    for fold in range(folds):
        train = (~is_test) & (splits["fold"] != fold).to_numpy()
        val = (~is_test) & (splits["fold"] == fold).to_numpy()
        search = GridSearchCV(model, grid, cv=GroupKFold(3), scoring="f1_macro")
        search.fit(x[train], y[train], groups=groups[train])
        for part, mask in (("val", val), ("test", is_test)):
            predicted = search.predict(x[mask])
            scores[part].append((accuracy_score(y[mask], predicted), f1_score(y[mask], predicted, average="macro")))
    return {part: np.mean(values, axis=0) for part, values in scores.items()}


def ours(table, out: Path, folds: int, epochs: int, tune: bool) -> dict:
    from tmdafm_core.training import cross_validate

    metrics = cross_validate(table, out, folds=folds, epochs=epochs, tune=tune, lr=7.5e-5, batch_size=32)
    return {part: (metrics["accuracy"][part]["mean"], metrics["f1_macro"][part]["mean"]) for part in ("val", "test")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, nargs="?")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = read_feature_table(args.table) if args.table else demo_table(args.n, args.size, work)
        print(f"{len(table.frame)} images x {table.features.shape[1]} features, {args.folds} folds")
        results = {}
        results["ours tuned"] = timed(lambda: ours(table, work / "tuned", args.folds, args.epochs, True))
        splits = pd.read_csv(work / "tuned" / "splits.csv", dtype={"sample_id": str, "image": str})
        results["ours fixed"] = timed(lambda: ours(table, work / "fixed", args.folds, args.epochs, False))
        results["logistic"] = timed(lambda: sklearn_scores(table, splits, args.folds, "logistic"))
        results["sklearn MLP"] = timed(lambda: sklearn_scores(table, splits, args.folds, "mlp"))
    print(f"{'method':14s}{'val acc':>9s}{'val F1':>9s}{'test acc':>10s}{'test F1':>9s}{'seconds':>9s}")
    for name, (seconds, scores) in results.items():
        print(f"{name:14s}{100 * scores['val'][0]:9.1f}{100 * scores['val'][1]:9.1f}"
              f"{100 * scores['test'][0]:10.1f}{100 * scores['test'][1]:9.1f}{seconds:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
