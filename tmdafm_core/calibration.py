"""Calibrated probabilities: a temperature per fold model, fitted on that fold's validation images.

A network's softmax is usually over-confident. Temperature scaling (Guo et al. 2017) divides the logits by one number
``T`` chosen to minimise the validation loss, which leaves every prediction (the argmax) unchanged and makes the
probabilities match observed frequencies better. MtL divides its element logits by ``T`` the same way, and its class
probabilities follow from the scaled sigmoids; ``T`` is fitted on the negative log-likelihood of those class
probabilities, the ones every page shows. (Fitted on the element sigmoids' binary cross-entropy instead, the class
probabilities of the demo's MtL folds stayed over-confident: ECE 0.095-0.124 per fold on 1026 fresh films, against
0.034-0.049 fitted on the classes; ``benchmarks/bench_novelty.py`` measures the runs' ensembles.)

How well probabilities match frequencies is measured by the expected calibration error (ECE: images binned by their
top probability, the mean gap between confidence and accuracy weighted by bin size, 15 equal-width bins) and the
Brier score (mean squared distance between the probability vector and the one-hot truth).

References
----------
Guo, C., Pleiss, G., Sun, Y. and Weinberger, K. Q. (2017). On calibration of modern neural networks. ICML.
Naeini, M. P., Cooper, G. and Hauskrecht, M. (2015). Obtaining well calibrated probabilities using Bayesian
binning. AAAI.
Brier, G. W. (1950). Verification of forecasts expressed in terms of probability. Monthly Weather Review 78, 1-3.

Examples
--------
>>> import numpy as np
>>> from tmdafm_core.calibration import expected_calibration_error
>>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]))
0.35
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize_scalar

from .models import class_log_scores

N_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)


def _nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float, matrix) -> float:
    """Class targets (integer) score the class probabilities; element targets (0/1 floats) the element sigmoids."""
    scaled = logits / temperature
    if targets.dtype == torch.long:
        return float(torch.nn.functional.nll_loss(torch.log_softmax(class_log_scores(scaled, element_matrix=matrix),
                                                                     dim=1), targets))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, targets))


def fit_temperature(logits, targets, *, task: str = "mtc", element_matrix=None) -> float:
    """The temperature that minimises the negative log-likelihood of held-out outputs.

    Parameters
    ----------
    logits : array, shape (N, outputs)
        Raw model outputs of validation images (class logits for MtC, element logits for MtL).
    targets : array
        Class index per image, shape (N,); MtL without ``element_matrix``: element presence, shape
        (N, n_elements), 0 or 1.
    task : {"mtc", "mtl"}
    element_matrix : array (n_classes, n_elements), optional
        MtL: fit on the class probabilities the scaled element sigmoids give (:func:`class_probabilities`);
        without it, on the element sigmoids themselves.

    Returns
    -------
    float
        ``T`` in :data:`TEMPERATURE_RANGE` (``T > 1`` softens over-confident outputs); 1.0 without images.
    """
    if task not in ("mtc", "mtl"):
        raise ValueError(f"task must be 'mtc' or 'mtl', got {task!r}")
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (N, outputs), got {tuple(logits.shape)}")
    if len(logits) == 0:
        return 1.0
    matrix = None if task == "mtc" or element_matrix is None else \
        torch.as_tensor(np.asarray(element_matrix, dtype=np.float32))
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long if task == "mtc" or matrix is not None
                              else torch.float32)
    if len(targets) != len(logits):
        raise ValueError(f"{len(targets)} targets for {len(logits)} rows of logits")
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(lambda log_t: _nll(logits, targets, float(np.exp(log_t)), matrix),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def class_probabilities(logits, *, temperature: float = 1.0, element_matrix=None) -> np.ndarray:
    """Class probabilities (N, n_classes) of outputs divided by ``temperature``: softmax (MtC), or (MtL, with
    ``element_matrix``) the scaled element sigmoids' likelihood of each valid material, normalised."""
    scaled = torch.as_tensor(np.asarray(logits, dtype=np.float32)) / float(temperature)
    matrix = None if element_matrix is None else torch.as_tensor(np.asarray(element_matrix, dtype=np.float32))
    return torch.softmax(class_log_scores(scaled, element_matrix=matrix), dim=1).numpy()


def _check(probabilities, true) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    true = np.asarray(true, dtype=np.int64)
    if probabilities.ndim != 2 or true.shape != (len(probabilities),):
        raise ValueError(f"expected probabilities (N, classes) and N true classes, got {probabilities.shape} and "
                         f"{true.shape}")
    return probabilities, true


def reliability_bins(probabilities, true, *, n_bins: int = N_BINS) -> dict:
    """Images binned by their top probability (equal-width bins on 0..1).

    Returns
    -------
    dict
        ``count``, ``confidence`` (sum of top probabilities) and ``correct`` (number right) per bin, as lists; sums
        rather than means so that folds pool by adding them (:func:`summarize_calibration`).
    """
    probabilities, true = _check(probabilities, true)
    confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
    correct = (probabilities.argmax(axis=1) == true) if len(probabilities) else np.zeros(0, dtype=bool)
    # A top probability of exactly 1 belongs to the last bin.
    which = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    return {"count": np.bincount(which, minlength=n_bins).tolist(),
            "confidence": np.bincount(which, weights=confidence, minlength=n_bins).tolist(),
            "correct": np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins).tolist()}


def _ece_of_bins(bins: dict) -> float:
    count = np.asarray(bins["count"], dtype=np.float64)
    if count.sum() == 0:
        return float("nan")
    gap = np.abs(np.asarray(bins["confidence"]) - np.asarray(bins["correct"]))  # per bin: count x |conf - acc|
    return float(gap.sum() / count.sum())


def expected_calibration_error(probabilities, true, *, n_bins: int = N_BINS) -> float:
    """Expected calibration error: ``sum_b |B_b| / N * |accuracy(B_b) - confidence(B_b)|`` over ``n_bins``
    equal-width bins of the top probability (NaN without images)."""
    return _ece_of_bins(reliability_bins(probabilities, true, n_bins=n_bins))


def ece_noise_floor(confidence, *, n_bins: int = N_BINS, draws: int = 2000, quantile: float = 0.95,
                    seed: int = 0) -> float:
    """The ECE that perfectly calibrated predictions with these top probabilities still show on this few images.

    Each image is drawn right with probability equal to its ``confidence`` (what calibration means) ``draws``
    times; the ``quantile`` of the resulting ECEs is the largest ECE that sampling alone explains (with ~100 test
    images it is several hundredths: a measured ECE below it cannot be told from perfect calibration).

    Parameters
    ----------
    confidence : array of float, shape (N,)
        Top probability of each image.

    Examples
    --------
    >>> round(ece_noise_floor(np.full(100, 0.8)), 2) > 0.05
    True
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.ndim != 1 or not len(confidence):
        return float("nan")
    rng = np.random.default_rng(seed)
    which = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    summed = np.bincount(which, weights=confidence, minlength=n_bins)
    correct = rng.random((draws, len(confidence))) < confidence  # (draws, N)
    hits = np.stack([np.bincount(which, weights=row, minlength=n_bins) for row in correct.astype(np.float64)])
    ece = np.abs(summed[None, :] - hits).sum(axis=1) / count.sum()
    return float(np.quantile(ece, quantile))


def brier_score(probabilities, true) -> float:
    """Multi-class Brier score: mean over images of ``sum_k (p_k - [k == true])^2`` (0 is perfect, 2 the worst)."""
    probabilities, true = _check(probabilities, true)
    if not len(probabilities):
        return float("nan")
    truth = np.zeros_like(probabilities)
    truth[np.arange(len(true)), true] = 1.0
    return float(((probabilities - truth) ** 2).sum(axis=1).mean())


def calibration_report(logits: dict, true: dict, *, task: str, element_matrix=None) -> dict:
    """Fit one fold's temperature on its validation outputs and score calibration before and after.

    Parameters
    ----------
    logits, true : dict with keys "val" and "test"
        Raw outputs (N, outputs) and true class indices (N,) of the fold's validation and test images.
    task : {"mtc", "mtl"}
    element_matrix : array (n_classes, n_elements), MtL only

    Returns
    -------
    dict
        ``temperature``; ``ece``, ``ece_uncalibrated``, ``brier``, ``brier_uncalibrated`` per partition;
        ``ece_floor`` per partition (:func:`ece_noise_floor` of the calibrated probabilities: the ECE sampling
        alone explains on that many images); ``reliability`` (:func:`reliability_bins` of the test images, ``test``
        and ``test_uncalibrated``).
    """
    if task == "mtl" and element_matrix is None:
        raise ValueError("an MtL report needs the element matrix (classes x elements)")
    temperature = fit_temperature(logits["val"], np.asarray(true["val"], dtype=np.int64), task=task,
                                  element_matrix=element_matrix)
    report = {"temperature": temperature, "ece": {}, "ece_uncalibrated": {}, "brier": {}, "brier_uncalibrated": {},
              "ece_floor": {}, "reliability": {}}
    for part in ("val", "test"):
        for suffix, t in (("", temperature), ("_uncalibrated", 1.0)):
            p = class_probabilities(logits[part], temperature=t, element_matrix=element_matrix)
            report["ece" + suffix][part] = expected_calibration_error(p, true[part])
            report["brier" + suffix][part] = brier_score(p, true[part])
            if part == "test":
                report["reliability"]["test" + suffix] = reliability_bins(p, true[part])
            if not suffix:
                report["ece_floor"][part] = ece_noise_floor(p.max(axis=1) if len(p) else p.reshape(0))
    return report


def summarize_calibration(reports: list[dict]) -> dict:
    """The ``metrics.json`` ``calibration`` block of a run from its folds' :func:`calibration_report`.

    ``temperature`` lists each fold's; ``ece``/``brier`` (and ``_uncalibrated``) are means over folds per partition;
    ``reliability`` pools the folds' test bins into ``count``, mean ``confidence`` and ``accuracy`` per bin (None for
    an empty bin) and ``edges`` (``bins + 1`` values).
    """
    document = {"temperature": [r["temperature"] for r in reports], "bins": N_BINS}
    for key in ("ece", "ece_uncalibrated", "brier", "brier_uncalibrated", "ece_floor"):
        if all(key in r for r in reports):  # folds fitted before the noise floor was kept have none
            document[key] = {part: float(np.nanmean([r[key][part] for r in reports])) for part in ("val", "test")}
    document["reliability"] = {}
    for key in ("test", "test_uncalibrated"):
        pooled = {name: np.sum([r["reliability"][key][name] for r in reports], axis=0) for name in
                  ("count", "confidence", "correct")}
        count = pooled["count"].astype(int).tolist()
        document["reliability"][key] = {
            "count": count,
            "confidence": [float(c / n) if n else None for c, n in zip(pooled["confidence"], count, strict=True)],
            "accuracy": [float(c / n) if n else None for c, n in zip(pooled["correct"], count, strict=True)]}
    document["reliability"]["edges"] = np.linspace(0.0, 1.0, N_BINS + 1).tolist()
    return document
