"""The store's results as the analysis pages show them (no Dash here): models' scores, confusion matrices, training
curves, the latent-space tables of the physical descriptors, and the sequential study.

Every reader returns None (or an empty table) when its artifact is absent, so a page can say what is missing;
:func:`missing` names the artifacts and the ``tmdafm`` command that builds each one. Files that exist but cannot be
read raise ValueError naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .data import LabelSpace
from .features import FEATURE_COLUMNS, get_descriptor
from .layout import (  # noqa: F401 (precompute_command: public here)
    ABLATION_MODES,
    ABLATION_NAME,
    CONFIG_NAME,
    TASKS,
    StoreLayout,
    load_manifest,
    precompute_command,
    store_contents,
    thumbnail_uri,
)
from .layout import PARTITIONS as SPLITS
from .profiles import PRETRAINED_TITLE, PRETRAINED_WEIGHTS

TASK_NAMES = {"mtc": "MtC", "mtl": "MtL"}
#: The MtL run scored by the paper's strict decoding (element p > 0.5, exact material or "unknown", an error).
PAPER_RULE_NAME = "MtL (paper rule)"
#: Where the architecture comparison (``tmdafm compare-archs --out CACHE/architectures``) puts its table.
ARCHITECTURES_PATH = Path("architectures") / "architectures.csv"


def _read_csv(path: Path, **kwargs) -> pd.DataFrame | None:
    # A run or study folder is swapped in whole when complete: a file vanishing meanwhile is "not there yet".
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); build it again with `tmdafm precompute`") from None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); build it again with `tmdafm precompute`") from None


def missing(cache_dir, keys) -> list[tuple[str, str]]:
    """``[(what, command that builds it)]`` for the store artifacts ``keys`` (:meth:`StoreLayout.missing`)."""
    return StoreLayout(cache_dir).missing(keys)


# --- runs (/performance) ----------------------------------------------------------------------------------------

def run_metrics(cache_dir, task: str) -> dict | None:
    """The ``metrics.json`` of the store's run of ``task`` ("mtc" or "mtl"), or None when it is not there."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return _read_json(StoreLayout(cache_dir).run_metrics(task))


def run_config(cache_dir, task: str) -> dict | None:
    """The ``config.json`` (training settings) of the store's run of ``task``, or None when it is not there."""
    return _read_json(StoreLayout(cache_dir).run(task) / CONFIG_NAME)


def imported_run(cache_dir, task: str) -> dict | None:
    """The config of the store's run of ``task`` when it was imported (``tmdafm import-model``: no scores), else
    None."""
    config = run_config(cache_dir, task)
    return config if config and config.get("mode") == "imported" else None


def curves_note(cache_dir, tasks) -> str:
    """What the training curves of the store's runs of ``tasks`` show, in words (the /performance caption)."""
    note = ("Thin lines: each fold; thick lines: the mean over folds. Loss is the training criterion per image "
            "(cross-entropy for MtC, binary cross-entropy over elements for MtL); the kept model of each fold is its "
            "best validation epoch.")
    decays = {TASK_NAMES[t]: float((run_config(cache_dir, t) or {}).get("ema_decay") or 0) for t in tasks}
    averaged = {name: decay for name, decay in decays.items() if decay > 0}
    if averaged:
        which = " and ".join(f"{name} (decay {decay:g} per step)" for name, decay in averaged.items())
        note += (f" {which}: validation scores, and the kept model, are a moving average of the weights, updated "
                 "every step from the end of the learning-rate warm-up; the training curve is that of the weights "
                 "being trained.")
    return note


def metrics_table(cache_dir) -> pd.DataFrame:
    """Scores of the store's runs: one row per task x partition.

    Columns ``task`` (MtC, MtL, and "MtL (paper rule)" where the run reports the paper's strict MtL decoding),
    ``split``, ``accuracy_mean``, ``accuracy_std``, ``f1_mean``, ``f1_std`` (fractions 0..1, mean and sample std
    over the folds) and ``folds``. Empty when no run is in the store.
    """
    rows = []
    for task in TASKS:
        metrics = run_metrics(cache_dir, task)
        if metrics is None:
            continue
        blocks = [(TASK_NAMES[task], metrics)]
        if "paper_rule" in metrics:
            blocks.append((PAPER_RULE_NAME, metrics["paper_rule"]))
        for name, block in blocks:
            for split in SPLITS:
                rows.append({"task": name, "split": split,
                             "accuracy_mean": block["accuracy"][split]["mean"],
                             "accuracy_std": block["accuracy"][split]["std"],
                             "f1_mean": block["f1_macro"][split]["mean"], "f1_std": block["f1_macro"][split]["std"],
                             "folds": metrics["folds"]})
    return pd.DataFrame(rows, columns=["task", "split", "accuracy_mean", "accuracy_std", "f1_mean", "f1_std",
                                       "folds"])


CALIBRATION_COLUMNS = ("task", "temperature", "ece_val_uncalibrated", "ece_val", "ece_test_uncalibrated", "ece_test",
                       "ece_test_floor", "brier_test_uncalibrated", "brier_test", "flagged_val", "flagged_test")


def calibration_table(cache_dir) -> pd.DataFrame:
    """How far the store's probabilities and novelty flags can be trusted: one row per task.

    Columns :data:`CALIBRATION_COLUMNS`: the fold temperatures (``"1.41 (1.22-1.60)"``: mean and range), ECE and
    Brier score before and after calibration (means over folds; validation is what the temperature was fitted on,
    test is independent), the test ECE that sampling alone explains on that many images (``ece_test_floor``,
    :func:`tmdafm_core.calibration.ece_noise_floor`; NaN for runs built before it was kept), and the share of
    genuine held-out validation / test images that the novelty threshold flags as unfamiliar. Runs built before
    calibration was kept have no row. ``attrs["novelty_quantile"]``: the share of validation images below the
    novelty threshold.
    """
    from .novelty import DEFAULT_QUANTILE

    rows, quantile = [], DEFAULT_QUANTILE
    for task in TASKS:
        metrics = run_metrics(cache_dir, task) or {}
        block = metrics.get("calibration")
        if not block:
            continue
        temperatures = np.asarray(block["temperature"], dtype=float)
        flagged = metrics.get("novelty", {}).get("flagged", {})
        quantile = metrics.get("novelty", {}).get("quantile", quantile)
        rows.append({"task": TASK_NAMES[task],
                     "temperature": f"{temperatures.mean():.2f} ({temperatures.min():.2f}-{temperatures.max():.2f})",
                     **{f"{metric}_{part}{suffix}": block[metric + suffix][part]
                        for metric in ("ece", "brier") for part in ("val", "test") for suffix in ("", "_uncalibrated")
                        if f"{metric}_{part}{suffix}" in CALIBRATION_COLUMNS},
                     "ece_test_floor": block.get("ece_floor", {}).get("test", np.nan),
                     "flagged_val": flagged.get("val", np.nan), "flagged_test": flagged.get("test", np.nan)})
    table = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    table.attrs["novelty_quantile"] = float(quantile)
    return table


def task_comparison(cache_dir, split: str = "test") -> str | None:
    """MtL − MtC macro-F1, fold by fold on the store's shared folds, as a sentence with its 95 % interval
    (:mod:`tmdafm_core.comparisons`); None without both runs."""
    from .comparisons import paired_difference, verdict

    layout = StoreLayout(cache_dir)
    if not all(layout.run_metrics(task).is_file() for task in TASKS):
        return None
    mean, low, high = paired_difference(layout.run("mtc"), layout.run("mtl"), split=split)
    return verdict(f"MtL − MtC {split} macro-F1", mean, low, high)


def demo_scope(cache_dir, profile: dict | None = None) -> dict[str, list[str]]:
    """What the synthetic demo in this store can and cannot show, in sentences with the store's own numbers
    (the overview's banner): ``{"can": [...], "cannot": [...]}``. Parts the store does not hold yet are left out;
    ``profile`` as in :func:`base_weights`."""
    can, cannot = [], []
    metrics = metrics_table(cache_dir)
    test = metrics[metrics["split"] == "test"].set_index("task")
    folds = int(metrics["folds"].max()) if len(metrics) else 0
    if len(test):
        scores = ", ".join(f"{task} {100 * row.f1_mean:.0f} ± {100 * row.f1_std:.0f} %" for task, row in test.iterrows()
                           if task in TASK_NAMES.values())
        can.append(f"the whole workflow on data with known answers: its models reach test macro-F1 {scores} "
                   f"(mean ± std over {folds} folds)")
    if calibration_table(cache_dir).shape[0]:
        can.append("calibrated probabilities and an \"unlike the training images\" warning on every prediction")
    can.append("which physical descriptors the latent space follows (/physical, /latent)")
    table = sequential_results(cache_dir)
    arm = mode_titles(cache_dir, profile)["imagenet"]
    if table is not None and {"diff_low", "diff_high"} <= set(table.columns):
        judged = table[(table["split"] == "test") & table["diff_low"].notna()].drop_duplicates(
            ["task", "n_classes", "volume"])
        supported = int(((judged["diff_low"] > 0) | (judged["diff_high"] < 0)).sum())
        can.append(f"honest comparisons: {supported} of {len(judged)} Sequential − {arm} differences are supported "
                   "by their 95 % interval (/sequential)")
    _stage_separation(cache_dir, {"imagenet": arm, "sequential": "Sequential"}, can, cannot)
    transfer = ablation_differences(cache_dir)
    if transfer:
        supported = sum(row["supported"] for row in transfer)
        can.append(f"the paper's Table 2 on its own data: {supported} of {len(transfer)} fine-tuning − scratch / "
                   "feature-extraction differences are supported by their 95 % interval (/performance)")
    cannot.append("any accuracy on real films: the images are generated, not measured")
    if arm == "Scratch":
        cannot.append("ImageNet transfer learning: nothing can be downloaded here, so the demo trains from scratch "
                      "and its 'Scratch' arm is not the paper's ImageNet arm")
    elif arm != "ImageNet":
        cannot.append(f"ImageNet transfer learning itself: nothing can be downloaded here, so the demo's models start "
                      f"from its own '{arm}' backbone instead of ImageNet weights")
    if 0 < folds < 5:
        cannot.append(f"tight intervals: {folds} folds (the paper used 5) leave wide ones")
    return {"can": can, "cannot": cannot}


def _stage_separation(cache_dir, titles: dict, can: list, cannot: list) -> None:
    """Whether the sequential stages' latent projections (Figure 5) show the materials as groups at the last stage."""
    from .embeddings import VISIBLE_GROUPS, last_stage
    from .selection import stage_structure

    for task in TASKS:
        structure = stage_structure(cache_dir, task)
        if structure is None:
            continue
        last, grouped = last_stage(structure)
        values = ", ".join(f"{titles.get(r.mode, r.mode)} {r.silhouette:.2f}" for r in last.itertuples())
        where = f"{TASK_NAMES.get(task, task)} at {int(last['n_classes'].iloc[0])} classes"
        if grouped:
            can.append(f"Figure 5's class structure: every arm's stage projection shows the materials as groups "
                       f"({where}: silhouette {values}; /sequential)")
        else:
            cannot.append(f"clear material groups in every stage projection of Figure 5 ({where}: silhouette "
                          f"{values}; groups show from about {VISIBLE_GROUPS})")


def calibration_verdicts(table: pd.DataFrame, *, goal: float = 0.05) -> list[str]:
    """One sentence per task of :func:`calibration_table` saying how far its probabilities can be taken at face
    value on new samples (judged on the test images, which no temperature saw)."""
    sentences = []
    for _, row in table.iterrows():
        before, after = row["ece_test_uncalibrated"], row["ece_test"]
        floor = row.get("ece_test_floor", np.nan)
        change = f"test ECE {before:.3f} → {after:.3f}"
        if after <= goal:
            sentences.append(f"{row['task']}: calibrated ({change}): a probability of 0.8 is right about 8 times "
                             "in 10 on new samples.")
        elif after <= floor:
            sentences.append(f"{row['task']}: consistent with calibrated ({change}): perfectly calibrated "
                             f"probabilities would still show a test ECE up to {floor:.3f} on this few test images "
                             f"(95 % of draws), so the test set cannot tell it apart; a larger test set could.")
        elif after < before:
            sentences.append(f"{row['task']}: the temperature helps ({change}) but the probabilities stay off by "
                             f"about {after:.2f} on average: read them as rough.")
        else:
            sentences.append(f"{row['task']}: the temperature fitted on validation images does not carry over to "
                             f"new samples ({change}): treat its probabilities as rough; a better-trained model is "
                             "needed.")
    return sentences


def reliability_table(cache_dir) -> pd.DataFrame:
    """Reliability diagram data of the store's runs (test images of every fold, pooled).

    Columns ``task``, ``probabilities`` ("calibrated" or "uncalibrated"), ``bin_low``, ``bin_high``, ``confidence``
    (mean top probability in the bin), ``accuracy`` (share right) and ``count``; empty bins are left out.
    """
    rows = []
    for task in TASKS:
        block = (run_metrics(cache_dir, task) or {}).get("calibration")
        if not block:
            continue
        edges = block["reliability"]["edges"]
        for kind, key in (("calibrated", "test"), ("uncalibrated", "test_uncalibrated")):
            bins = block["reliability"][key]
            for i, count in enumerate(bins["count"]):
                if count:
                    rows.append({"task": TASK_NAMES[task], "probabilities": kind, "bin_low": edges[i],
                                 "bin_high": edges[i + 1], "confidence": bins["confidence"][i],
                                 "accuracy": bins["accuracy"][i], "count": count})
    return pd.DataFrame(rows, columns=["task", "probabilities", "bin_low", "bin_high", "confidence", "accuracy",
                                       "count"])


def confusion(cache_dir, task: str) -> pd.DataFrame | None:
    """The run's test confusion matrix in percent of all test images (rows true, columns predicted), or None.

    Index and columns are the classes in MtC order; the values are the means over the fold models.
    """
    metrics = run_metrics(cache_dir, task)
    if metrics is None:
        return None
    matrix = np.asarray(metrics["confusion_test_percent"], dtype=float)
    classes = list(metrics["classes"])
    if matrix.shape != (len(classes), len(classes)):
        raise ValueError(f"runs/{task}/metrics.json: confusion_test_percent is {matrix.shape}, expected "
                         f"{len(classes)} x {len(classes)} (one row and column per class)")
    return pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))


def history(cache_dir, task: str) -> pd.DataFrame | None:
    """The run's training curves (``history.csv``: fold, epoch, split, loss, accuracy, f1_macro), or None."""
    return _read_csv(StoreLayout(cache_dir).run(task) / "history.csv")


def predictions(cache_dir, task: str) -> pd.DataFrame | None:
    """Per-image predictions of the run's latent model (``latent/<task>/predictions.csv``), or None.

    Columns ``image``, ``material``, ``split``, ``predicted``, ``correct`` and the probabilities.
    """
    table = _read_csv(StoreLayout(cache_dir).latent(task) / "predictions.csv", dtype={"image": str})
    if table is not None and not {"image", "material", "predicted"} <= set(table.columns):
        raise ValueError(f"{StoreLayout(cache_dir).latent(task) / 'predictions.csv'}: needs image, material and "
                         "predicted columns; build it again with `tmdafm precompute`")
    return table


def cell_images(table: pd.DataFrame, true: str, predicted: str, *, split: str | None = "test") -> pd.DataFrame:
    """Rows of a predictions table whose true material is ``true`` and predicted one ``predicted`` (one split)."""
    chosen = (table["material"].astype(str) == str(true)) & (table["predicted"].astype(str) == str(predicted))
    if split is not None and "split" in table.columns:
        chosen &= table["split"].astype(str) == split
    return table[chosen].reset_index(drop=True)


def architectures(cache_dir) -> pd.DataFrame | None:
    """The architecture comparison table (``experiments.compare_architectures``), or None when not run."""
    return _read_csv(Path(cache_dir) / ARCHITECTURES_PATH)


def ablation(cache_dir) -> pd.DataFrame | None:
    """The store's Table 2 (``tmdafm ablation --store``): one row per arm with ``mode``, ``title``, and val/test
    macro-F1 and accuracy means and stds; None when not made."""
    folder = StoreLayout(cache_dir).ablation
    table = _read_csv(folder / ABLATION_NAME)
    if table is None:
        return None
    wide = table.pivot_table(index="mode", columns="split", values=["f1_mean", "f1_std", "accuracy_mean",
                                                                   "accuracy_std"], sort=False)
    wide.columns = [f"{metric.split('_')[0]}_{split}_{metric.split('_')[1]}" for metric, split in wide.columns]
    wide = wide.reindex([arm for arm in ABLATION_MODES if arm in wide.index]).reset_index()
    base = base_arm_title(_ablation_weights(folder, table))
    titles = {"fine-tune": f"Fine-tuned from {base}",
              "feature-extraction": f"Feature extraction: frozen {base} backbone + MLP", "scratch": "From scratch"}
    wide.insert(1, "title", wide["mode"].map(titles))
    return wide


def _ablation_weights(folder: Path, table: pd.DataFrame) -> str:
    run = table.loc[table["mode"] == "fine-tune", "run"]
    config = _read_json(folder / str(run.iat[0]) / CONFIG_NAME) if len(run) else None
    return (config or {}).get("weights") or "pretrained"


def ablation_differences(cache_dir) -> list[dict]:
    """Fine-tuning − scratch and fine-tuning − feature extraction macro-F1, fold by fold (the arms share the store's
    folds), each on validation and test: ``name``, ``mean``, ``low``, ``high`` (95 % Student-t interval over folds)
    and ``supported`` (the interval excludes 0); empty without the table."""
    from .comparisons import paired_difference

    folder = StoreLayout(cache_dir).ablation
    table = _read_csv(folder / ABLATION_NAME)
    if table is None:
        return []
    runs = table.drop_duplicates("mode").set_index("mode")["run"].map(lambda run: folder / str(run))
    rows = []
    for other, name in (("scratch", "scratch"), ("feature-extraction", "feature extraction")):
        if "fine-tune" in runs and other in runs:
            for split in ("val", "test"):
                mean, low, high = paired_difference(runs[other], runs["fine-tune"], split=split)
                rows.append({"name": f"Fine-tuning − {name}, {split} macro-F1", "mean": mean, "low": low,
                             "high": high, "supported": bool(low > 0 or high < 0)})
    return rows


def ablation_comparisons(cache_dir) -> list[str]:
    """:func:`ablation_differences` as sentences (:func:`tmdafm_core.comparisons.verdict`)."""
    from .comparisons import verdict

    return [verdict(row["name"], row["mean"], row["low"], row["high"]) for row in ablation_differences(cache_dir)]


# --- latent-space tables (/physical) ----------------------------------------------------------------------------

def analysed_tasks(cache_dir) -> list[str]:
    """The tasks whose latent space the store has analysed against the descriptors (Table 5 written)."""
    return [task for task in TASKS if (StoreLayout(cache_dir).latent(task) / "table5.csv").is_file()]


def latent_tables(cache_dir, task: str = "mtc") -> dict | None:
    """The descriptor analyses of ``latent/<task>``: ``table5``, ``correlation``, ``cosine_descriptors_pcs``,
    ``cosine_regression_directions``, ``explained_variance`` (DataFrames), ``projection`` (PC scores per image)
    and ``galleries`` (dict); None when the folder holds no projection. Tables the analysis did not write (no
    descriptors were given) are absent from the dict."""
    folder = StoreLayout(cache_dir).latent(task)
    projection = _read_csv(folder / "projection.csv", dtype={"image": str, "sample_id": str})
    if projection is None:
        return None
    tables = {"projection": projection}
    for name in ("table5", "correlation", "cosine_descriptors_pcs", "cosine_regression_directions",
                 "explained_variance"):
        table = _read_csv(folder / f"{name}.csv", keep_default_na=False, na_values=[""])
        if table is not None:
            tables[name] = table
    galleries = _read_json(folder / "galleries.json")
    if galleries is not None:
        tables["galleries"] = galleries
    return tables


def descriptor_unit(name: str) -> str:
    """Unit of a descriptor column as the store computes it ("" when dimensionless or unknown)."""
    if name not in FEATURE_COLUMNS:
        return ""
    unit = get_descriptor(name).unit
    return "" if unit == "1" else unit


def table5_display(table5: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 5 with its uncertainty, ready to show: rounded R values, 95 % intervals as text, p and q.

    Columns: descriptor, unit, min R, its PC, its CI, p; max R, its PC, its CI, p; regression R (in-sample and
    cross-validated), n images, status. q-values (Benjamini-Hochberg) come from the correlation table when given.
    """
    def interval(low, high):
        return [f"[{a:+.2f}, {b:+.2f}]" for a, b in zip(low, high, strict=True)]

    return pd.DataFrame({
        "descriptor": table5["descriptor"],
        "unit": [descriptor_unit(d) or "–" for d in table5["descriptor"]],
        "min_r": table5["min_r"].round(3), "min_pc": table5["min_pc"],
        "min_r_ci": interval(table5["min_r_ci_low"], table5["min_r_ci_high"]), "min_r_p": table5["min_r_p"],
        "max_r": table5["max_r"].round(3), "max_pc": table5["max_pc"],
        "max_r_ci": interval(table5["max_r_ci_low"], table5["max_r_ci_high"]), "max_r_p": table5["max_r_p"],
        "regression_r": table5["regression_r"].round(3), "regression_r_cv": table5["regression_r_cv"].round(3),
        "n_images": table5["n_images"], "status": table5["status"],
    })


def with_q_values(display: pd.DataFrame, table5: pd.DataFrame, correlation: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``min_r_q`` / ``max_r_q``: the Benjamini-Hochberg q-values of the pairs Table 5 reports."""
    if correlation is None or "q_value" not in correlation.columns:
        return display
    q = correlation.set_index(["descriptor", "pc"])["q_value"]
    out = display.copy()
    for side in ("min", "max"):
        keys = list(zip(table5["descriptor"], table5[f"{side}_pc"], strict=True))
        out.insert(out.columns.get_loc(f"{side}_r_p") + 1, f"{side}_r_q",
                   [float(q.get(key, np.nan)) for key in keys])
    return out


def pc_descriptor_points(tables: dict, features: pd.DataFrame | None, descriptor: str) -> pd.DataFrame:
    """The PC scores of every image with its material and the raw value of ``descriptor`` (paper Figure 7 data)."""
    projection = tables["projection"]
    pcs = [c for c in projection.columns if c.startswith("PC") and c[2:].isdigit()]
    keep = ["image"] + [c for c in ("sample_id", "label") if c in projection.columns] + pcs
    points = projection[keep].rename(columns={"label": "material"})
    if features is None or descriptor not in features.columns:
        raise ValueError(f"descriptor {descriptor!r} is not in the store's features.csv; build it with "
                         "`tmdafm precompute` (features step)")
    return points.merge(features[["image", descriptor]], on="image", how="left")


def percentile_gallery(galleries: dict, descriptor: str) -> dict:
    """One descriptor's percentile galleries: ``{"status", "low": {...}, "high": {...}}`` (paper Figure 8)."""
    if descriptor not in galleries:
        raise ValueError(f"no gallery for descriptor {descriptor!r}; choose one of {', '.join(galleries)}")
    return galleries[descriptor]


# --- sequential study (/sequential) -----------------------------------------------------------------------------

def sequential_results(cache_dir) -> pd.DataFrame | None:
    """``sequential/results.csv`` (one row per task x mode x class count x volume x split), or None."""
    path = StoreLayout(cache_dir).sequential_results
    table = _read_csv(path, dtype={"volume": str})
    if table is None:
        return None
    needed = {"n_classes", "mode", "task", "volume", "split", "f1_mean", "f1_std"}
    if not needed <= set(table.columns):
        raise ValueError(f"{path}: lacks column(s) "
                         f"{sorted(needed - set(table.columns))}; build it again with `tmdafm sequential`")
    return table


def sequential_order(cache_dir, results: pd.DataFrame | None = None) -> list[str]:
    """The order in which the study added its classes (``study.json``; else the first class is unknown)."""
    study = _read_json(StoreLayout(cache_dir).sequential / "study.json")
    if study and study.get("order"):
        return [str(c) for c in study["order"]]
    if results is None or results.empty:
        return []
    return list(results.sort_values("n_classes").drop_duplicates("n_classes")["new_class"].astype(str))


def sequential_semantics(cache_dir) -> dict:
    """How the stored study grew its head and cut its volumes: ``{"head", "volume_mode"}`` from ``study.json``.

    Studies written before these settings existed used ``keep`` and ``train-samples``.
    """
    study = _read_json(StoreLayout(cache_dir).sequential / "study.json") or {}
    train = study.get("train") or {}
    return {"head": train.get("head", "keep"), "volume_mode": train.get("volume_mode", "train-samples")}


def base_arm_title(weights) -> str:
    """What the sequential study's restarting arm starts every stage from, for labels: ``ImageNet`` only when it
    really started from ImageNet weights; ``Scratch`` for random weights (``none``); a backbone file's own title
    (``tmdafm pretrain`` writes it beside the file, e.g. "AFM-pretrained (synthetic)"), else
    ``Pretrained (<file>)``."""
    weights = str(weights or "none")
    if weights.startswith("imagenet"):
        return "ImageNet"
    if weights == "none":
        return "Scratch"
    if weights == PRETRAINED_WEIGHTS:  # a profile's name for the store's own backbone, before it is built
        return PRETRAINED_TITLE
    described = _read_json(Path(weights).with_suffix(".json")) or {}  # written by `tmdafm pretrain` beside it
    return str(described.get("title") or f"Pretrained ({Path(weights).name})")


def base_weights(cache_dir, profile: dict | None = None) -> str | None:
    """The starting weights of the store's models: the sequential study's (``study.json``), else the MtC run's
    (``config.json``), else what the store's precompute ``profile`` (a :class:`~tmdafm_core.profiles.Profile` as a
    dict) trains from (the demo: ``none``); None when unknown."""
    study = _read_json(StoreLayout(cache_dir).sequential / "study.json") or {}
    config = _read_json(StoreLayout(cache_dir).run("mtc") / CONFIG_NAME) or {}
    weights = (study.get("train") or {}).get("weights") or config.get("weights")
    if weights is None and profile:
        weights = profile.get("weights") or {"demo": "none", "paper": "imagenet"}.get(profile.get("training"))
    return weights


def mode_titles(cache_dir, profile: dict | None = None) -> dict[str, str]:
    """Display names of the sequential study's two arms in this store: the restarting arm (key ``imagenet``, titled
    by :func:`base_arm_title` from :func:`base_weights`; ``ImageNet`` when unknown) and ``Sequential``."""
    return {"imagenet": base_arm_title(base_weights(cache_dir, profile) or "imagenet"), "sequential": "Sequential"}


def volume_order(volumes) -> list[str]:
    """Training volumes from smallest to ``full`` (numbers ascending, then ``full``)."""
    volumes = list(dict.fromkeys(str(v) for v in volumes))
    numbers = sorted((v for v in volumes if v.isdigit()), key=int)
    return numbers + [v for v in volumes if not v.isdigit()]


def percentile_images(features: pd.DataFrame, descriptor: str, side: str, threshold: float, *,
                      images=None) -> list[str]:
    """Every image at or below (``side="low"``) or at or above (``"high"``) ``threshold`` of ``descriptor``, in
    the descriptor's units, most extreme first; ``images`` limits it to those ids (the projected images)."""
    if side not in ("low", "high"):
        raise ValueError(f"side must be 'low' or 'high', got {side!r}")
    if descriptor not in features.columns:
        raise ValueError(f"descriptor {descriptor!r} is not in the feature table")
    table = features[["image", descriptor]].dropna()
    if images is not None:
        table = table[table["image"].astype(str).isin({str(i) for i in images})]
    values = table[descriptor].to_numpy(dtype=float)
    chosen = table[values <= threshold] if side == "low" else table[values >= threshold]
    chosen = chosen.sort_values(descriptor, ascending=side == "low", kind="stable")
    return chosen["image"].astype(str).tolist()


# --- the data set (overview page) --------------------------------------------------------------------------

def example_thumbnails(cache_dir, *, per_material: int = 6) -> dict[str, list[dict]]:
    """Up to ``per_material`` thumbnails per material, one per sample where possible, spread over the samples.

    Returns ``{material: [{"image", "sample_id", "split", "uri"}, ...]}`` in class (MtC) order; images whose
    thumbnail is missing are left out.
    """
    manifest = load_manifest(cache_dir)
    space = LabelSpace.from_materials(manifest["material"])
    examples = {}
    for material in space.classes:
        rows = manifest[manifest["material"] == material]
        picks = rows.drop_duplicates("sample_id")
        if len(picks) < per_material:
            picks = pd.concat([picks, rows.drop(picks.index)])
        picks = picks.iloc[np.unique(np.linspace(0, len(picks) - 1, min(per_material, len(picks))).round()
                                     .astype(int))]
        examples[material] = [
            {"image": row.image, "sample_id": row.sample_id, "split": row.split, "uri": uri}
            for row in picks.itertuples() if (uri := thumbnail_uri(cache_dir, row.image)) is not None
        ]
    return examples


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images per material × partition, the paper's Table 1, from a manifest with ``split`` and ``fold``.

    Rows are the classes in MtC order plus ``total``. Columns: ``train_pool`` (all non-test images),
    ``train_mean``/``val_mean`` (images per fold, averaged over the folds), ``val_fold_<k>`` (validation images of
    fold k), ``test``, ``images``, and ``samples``, ``samples_train``, ``samples_test``.
    """
    space = LabelSpace.from_materials(manifest["material"])
    folds = manifest["fold"].to_numpy()
    n_folds = int(folds.max()) + 1 if (folds >= 0).any() else 0
    is_test = manifest["split"].astype(str).to_numpy() == "test"

    def counts(rows: pd.DataFrame, test: np.ndarray) -> dict:
        fold = rows["fold"].to_numpy()
        pool = int((~test).sum())
        val = [int((fold == k).sum()) for k in range(n_folds)]
        row = {"train_pool": pool,
               "train_mean": pool - float(np.mean(val)) if val else float(pool),
               "val_mean": float(np.mean(val)) if val else 0.0}
        row.update({f"val_fold_{k}": v for k, v in enumerate(val)})
        row.update({"test": int(test.sum()), "images": len(rows),
                    "samples": rows["sample_id"].nunique(),
                    "samples_train": rows.loc[~test, "sample_id"].nunique(),
                    "samples_test": rows.loc[test, "sample_id"].nunique()})
        return row

    table = {material: counts(manifest[mask], is_test[mask])
             for material in space.classes if (mask := (manifest["material"] == material).to_numpy()).any()}
    table["total"] = counts(manifest, is_test)
    return pd.DataFrame.from_dict(table, orient="index")


def dataset_overview(cache_dir) -> dict:
    """Everything the overview page shows, from the store alone (no image is read).

    Returns a dict with ``prepared`` (bool) and ``artifacts`` (:func:`store_contents`); when prepared also
    ``synthetic`` (bool), ``root``, ``layout``, ``profile``, ``n_images``, ``n_samples``, ``n_folds``, ``table``
    (:func:`split_table`), ``classes``, ``elements``, ``element_matrix`` (classes × elements, 0/1),
    ``image_sizes`` (list of ``(height, width, count)``, most common first), ``pixel_size_nm`` (min, median, max),
    ``scan_size_nm`` (median width × pixel size), ``skipped`` (list of (file, reason)).
    """
    cache_dir = Path(cache_dir)
    overview = {"prepared": False, "cache": str(cache_dir.resolve()), "artifacts": store_contents(cache_dir)}
    try:
        manifest = load_manifest(cache_dir)
    except FileNotFoundError:
        return overview
    record = manifest.attrs["record"]
    space = LabelSpace.from_materials(manifest["material"])
    sizes = manifest.groupby(["height", "width"]).size().sort_values(ascending=False)
    pixel = manifest["pixel_size_nm"].astype(float)
    overview.update({
        "prepared": True,
        "synthetic": record["settings"]["source"]["kind"] == "synthetic",
        "root": manifest.attrs["root"],
        "layout": manifest.attrs["source"],
        "profile": record.get("profile", {}),
        "n_images": len(manifest),
        "n_samples": int(manifest["sample_id"].nunique()),
        "n_folds": int(manifest["fold"].max()) + 1,
        "table": split_table(manifest),
        "classes": list(space.classes),
        "elements": list(space.elements),
        "element_matrix": space.element_matrix.astype(int),
        "image_sizes": [(int(h), int(w), int(n)) for (h, w), n in sizes.items()],
        "pixel_size_nm": (float(pixel.min()), float(pixel.median()), float(pixel.max())),
        "scan_size_nm": float((pixel * manifest["width"]).median()),
        "skipped": record.get("skipped", []),
    })
    return overview
