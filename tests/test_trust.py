"""Calibration (temperature, ECE, Brier, reliability) and novelty (reference, threshold, flags) of predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tmdafm_core import calibration, novelty
from tmdafm_core.cli import main
from tmdafm_core.data import read_dataset
from tmdafm_core.training import cross_validate, load_checkpoint, load_ensemble, load_run, predict, predict_ensemble

from .test_training import write_stripes

# --- calibration ------------------------------------------------------------------------------------------------

def _labels_from(logits, rng):
    p = torch.softmax(torch.as_tensor(logits), dim=1).numpy()
    return np.array([rng.choice(len(row), p=row) for row in p])


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_is_recovered_from_logits_the_test_scales(temperature):
    rng = np.random.default_rng(0)
    true_logits = rng.normal(scale=2.0, size=(4000, 5))
    labels = _labels_from(true_logits, rng)  # labels drawn from softmax(true_logits): T=1 is calibrated for them
    fitted = calibration.fit_temperature(true_logits * temperature, labels, task="mtc")
    assert fitted == pytest.approx(temperature, rel=0.08)


def test_mtl_temperature_is_fitted_on_the_class_probabilities_it_gives():
    rng = np.random.default_rng(2)
    matrix = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [1, 1, 0, 1]], dtype=np.float32)
    true_logits = rng.normal(scale=2.0, size=(4000, 4))
    # classes drawn from the class probabilities of the unscaled element logits: T=1 is calibrated for them
    p = calibration.class_probabilities(true_logits, element_matrix=matrix)
    classes = np.array([rng.choice(len(row), p=row) for row in p])
    fitted = calibration.fit_temperature(true_logits * 3.0, classes, task="mtl", element_matrix=matrix)
    assert fitted == pytest.approx(3.0, rel=0.08)


def test_mtl_temperature_scales_the_element_sigmoids():
    rng = np.random.default_rng(1)
    true_logits = rng.normal(scale=2.0, size=(4000, 4))
    targets = (rng.random(true_logits.shape) < 1 / (1 + np.exp(-true_logits))).astype(np.float32)
    assert calibration.fit_temperature(true_logits * 3.0, targets, task="mtl") == pytest.approx(3.0, rel=0.08)


def test_ece_and_brier_by_hand():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    true = np.array([0, 1, 1])
    # bins of the top probability: 0.9 right, 0.6 wrong, 0.8 right -> |0.9-1| + |0.6-0| + |0.8-1| over 3
    assert calibration.expected_calibration_error(p, true) == pytest.approx((0.1 + 0.6 + 0.2) / 3)
    assert calibration.brier_score(p, true) == pytest.approx((0.02 + 0.72 + 0.08) / 3)
    bins = calibration.reliability_bins(np.array([[1.0, 0.0]]), np.array([0]))
    assert bins["count"][-1] == 1  # a top probability of exactly 1 falls in the last bin


def test_ece_noise_floor_shrinks_with_more_images_and_covers_calibrated_draws():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.5, 1.0, 100)
    small, large = calibration.ece_noise_floor(confidence), calibration.ece_noise_floor(np.tile(confidence, 25))
    assert large < small / 3  # about 1 / sqrt(25)
    # ECEs of perfectly calibrated draws on the same confidences stay under the 95 % floor about 95 % of the time
    probabilities = np.column_stack([confidence, 1 - confidence])
    inside = [calibration.expected_calibration_error(probabilities, (rng.random(100) >= confidence).astype(int))
              <= small for _ in range(400)]
    assert 0.9 < np.mean(inside) <= 1.0
    assert np.isnan(calibration.ece_noise_floor(np.zeros(0)))


def test_calibration_validation():
    with pytest.raises(ValueError, match="task must be"):
        calibration.fit_temperature(np.zeros((2, 2)), [0, 1], task="regression")
    with pytest.raises(ValueError, match=r"shape \(N, outputs\)"):
        calibration.fit_temperature(np.zeros(3), [0, 1, 0])
    with pytest.raises(ValueError, match="2 targets for 3 rows"):
        calibration.fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="expected probabilities"):
        calibration.brier_score(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="element matrix"):
        calibration.calibration_report({"val": np.zeros((2, 3)), "test": np.zeros((2, 3))},
                                       {"val": [0, 1], "test": [0, 1]}, task="mtl")


def test_calibrating_overconfident_outputs_lowers_the_test_error():
    rng = np.random.default_rng(2)
    logits = {part: rng.normal(scale=1.5, size=(3000, 5)) for part in ("val", "test")}
    true = {part: _labels_from(logits[part], rng) for part in logits}
    report = calibration.calibration_report({k: 4.0 * v for k, v in logits.items()}, true, task="mtc")
    assert report["temperature"] == pytest.approx(4.0, rel=0.1)
    assert report["ece"]["test"] < 0.03 < report["ece_uncalibrated"]["test"]
    assert report["brier"]["test"] < report["brier_uncalibrated"]["test"]
    summary = calibration.summarize_calibration([report, report])
    assert summary["temperature"] == [report["temperature"]] * 2
    assert 0 < summary["ece_floor"]["test"] < 0.05  # 3000 test images: sampling explains little
    assert sum(summary["reliability"]["test"]["count"]) == 2 * 3000
    json.dumps(summary, allow_nan=False)  # empty bins are null, not NaN


# --- novelty ----------------------------------------------------------------------------------------------------

def test_novelty_threshold_flags_about_the_stated_share_of_held_out_images():
    rng = np.random.default_rng(3)
    reference = novelty.fit_reference(rng.normal(size=(2000, 6)), rng.normal(size=(2000, 6)), quantile=0.95)
    fresh = novelty.novelty_scores(reference, rng.normal(size=(20000, 6)))
    assert novelty.unfamiliar(fresh).mean() == pytest.approx(0.05, abs=0.015)
    assert novelty.novelty_scores(reference, np.full((1, 6), 8.0))[0] > 5  # far away: far above the threshold
    assert not novelty.unfamiliar([np.nan])[0]


def test_novelty_validation():
    good = np.zeros((5, 3)) + np.arange(15).reshape(5, 3) % 4
    with pytest.raises(ValueError, match="quantile must be between 0 and 1"):
        novelty.fit_reference(good, good, quantile=1.0)
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        novelty.fit_reference(good, good, ridge=-1)
    with pytest.raises(ValueError, match="at least 2 training"):
        novelty.fit_reference(good[:1], good)
    with pytest.raises(ValueError, match="finite"):
        novelty.fit_reference(np.full((5, 3), np.nan), good)
    with pytest.raises(ValueError, match="has 3 features, val_statistics 2"):
        novelty.fit_reference(good, good[:, :2])
    with pytest.raises(ValueError, match="the reference 3"):
        novelty.novelty_scores(novelty.fit_reference(good, good), good[:, :2])


def test_field_of_view_and_its_training_range_by_hand():
    assert novelty.field_of_view_nm(2.0, 100, 400).tolist() == 400.0  # 2 nm x sqrt(100 x 400) px
    assert novelty.field_of_view_range([1000.0, np.nan, 800.0, 1200.0]) == [800.0, 1200.0]
    assert novelty.field_of_view_range([np.nan, 0.0]) is None


def test_scale_novelty_is_zero_inside_the_range_and_one_at_the_tolerance_outside():
    scores = novelty.scale_novelty([800.0, 1200.0], [800.0, 1200.0, 1800.0, 800.0 / 1.5, 800.0 / 2.25, np.nan],
                                   tolerance=1.5)
    np.testing.assert_allclose(scores, [0.0, 0.0, 1.0, 1.0, 2.0, 0.0])
    assert novelty.scale_novelty(None, [5000.0]).tolist() == [0.0]  # no range kept: no scale check


def test_novelty_is_the_larger_of_texture_and_scale():
    rng = np.random.default_rng(5)
    reference = novelty.fit_reference(rng.normal(size=(500, 4)), rng.normal(size=(200, 4)))
    statistics = np.vstack([np.zeros(4), np.full(4, 10.0)])
    texture = novelty.novelty_scores(reference, statistics)
    assert novelty.novelty_scores(reference, statistics, field_of_view=[5000.0, 1000.0]).tolist() == texture.tolist()
    reference["field_of_view_nm"] = [1000.0, 1000.0]
    scored = novelty.novelty_scores(reference, statistics, field_of_view=[5000.0, 1000.0])
    assert scored[0] == pytest.approx(np.log(5) / np.log(novelty.SCALE_TOLERANCE)) and scored[1] == texture[1]
    assert novelty.novelty_scores(reference, statistics, field_of_view=[np.nan, np.nan]).tolist() == texture.tolist()


def test_scale_validation():
    with pytest.raises(ValueError, match="tolerance must be > 1"):
        novelty.scale_novelty([1.0, 2.0], [1.0], tolerance=1.0)
    reference = novelty.fit_reference(np.eye(3).repeat(3, axis=0), np.eye(3))
    reference["field_of_view_nm"] = [1000.0, 1000.0]
    with pytest.raises(ValueError, match="field_of_view has 1 values for 3 images"):
        novelty.novelty_scores(reference, np.eye(3), field_of_view=[1000.0])


# --- on a trained run -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stripe_run(tmp_path_factory):
    data = read_dataset(write_stripes(tmp_path_factory.mktemp("stripes") / "data", noise=0.1))
    run_dir = tmp_path_factory.mktemp("runs") / "mtc"
    cross_validate(data, run_dir, weights="none", folds=2, epochs=3, lr=1e-3, batch_size=4, image_size=32)
    return run_dir, data


def test_checkpoints_keep_a_temperature_and_a_novelty_reference(stripe_run):
    checkpoint = load_checkpoint(stripe_run[0] / "fold0.pt")  # weights_only=True
    assert checkpoint["calibration"]["temperature"] > 0
    reference = checkpoint["novelty"]
    assert reference["mean"].shape == (128,) and reference["precision"].shape == (128, 128)
    assert reference["n_train"] + reference["n_val"] == 2 * 3 * 8  # 2 classes x 3 non-test samples x 8 images
    run = load_run(stripe_run[0], 0)
    assert run.temperature == pytest.approx(checkpoint["calibration"]["temperature"]) and run.calibrated


def test_novelty_is_low_for_training_like_images_and_high_for_noise_and_flat_scans(stripe_run):
    run_dir, data = stripe_run
    runs = load_ensemble(run_dir)
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[:32, :32]
    flat = [0.01 * xx + 0.02 * yy + 1e-3 * rng.standard_normal((32, 32)) for _ in range(3)]
    noise = [rng.standard_normal((32, 32)) for _ in range(3)]
    genuine = predict_ensemble(runs, list(data["path"][:6]))
    strange = predict_ensemble(runs, flat + noise)
    assert genuine.novelty.max() < strange.novelty.min()
    assert not genuine.unfamiliar.any() and strange.unfamiliar.all()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["novelty"]["flagged"]["val"] <= 0.1


def test_an_image_of_another_field_of_view_is_unfamiliar_when_its_pixel_size_is_known(stripe_run, tmp_path):
    from tmdafm_core.data import load_image, save_tiff

    run_dir, data = stripe_run
    assert load_checkpoint(run_dir / "fold0.pt")["novelty"]["field_of_view_nm"] == [128.0, 128.0]  # 32 px x 4 nm
    runs = load_ensemble(run_dir)
    path = data["path"].iloc[1]
    own = predict_ensemble(runs, [path])
    assert own.field_of_view_nm.tolist() == [128.0] and not own.unfamiliar[0]
    assert predict_ensemble(runs, [path], pixel_size_nm=20.0).unfamiliar[0]  # the same pixels said to span 640 nm
    assert predict_ensemble(runs, [path], pixel_size_nm=0.8).unfamiliar[0]  # ... or 25.6 nm
    assert not predict_ensemble(runs, [path], pixel_size_nm=5.0).unfamiliar[0]  # 160 nm: 1.25x, within the tolerance
    pixels, _ = load_image(path)
    unknown = predict_ensemble(runs, [pixels])  # an array: no pixel size, no scale check
    assert np.isnan(unknown.field_of_view_nm[0]) and unknown.novelty[0] == pytest.approx(own.novelty[0], rel=1e-4)
    assert predict_ensemble(runs, [pixels], pixel_size_nm=[20.0]).unfamiliar[0]
    big = tmp_path / "five_times.tif"
    save_tiff(big, pixels, pixel_size_nm=20.0)
    assert predict_ensemble(runs, [big]).unfamiliar[0]  # the TIFF's own resolution tags


def test_pixel_size_validation_and_predict_naming_the_scale(stripe_run, capsys):
    runs = load_ensemble(stripe_run[0])
    pixels = np.random.default_rng(0).random((32, 32))
    with pytest.raises(ValueError, match="pixel_size_nm has 2 values for 1 images"):
        predict_ensemble(runs, [pixels], pixel_size_nm=[4.0, 4.0])
    with pytest.raises(ValueError, match="pixel_size_nm must be positive"):
        predict_ensemble(runs, [pixels], pixel_size_nm=-4.0)
    assert main(["predict", str(stripe_run[0]), stripe_run[1]["path"].iloc[0], "--pixel-size-nm", "0"]) == 2
    capsys.readouterr()
    assert main(["predict", str(stripe_run[0]), stripe_run[1]["path"].iloc[0], "--pixel-size-nm", "20"]) == 0
    assert ("1 of 1 images are unlike the training images (unfamiliar): their predictions are unreliable; 1 of them "
            "because their field of view is more than 1.3x outside the training images' (0.13 µm)") \
        in capsys.readouterr().err


def test_probabilities_are_the_logits_over_the_temperature(stripe_run):
    run = load_run(stripe_run[0], 0)
    path = [stripe_run[1]["path"].iloc[0]]
    calibrated = predict(run, path).class_probabilities
    run.temperature, run.calibrated = 1.0, False
    raw = predict(run, path)
    assert raw.notes == [] or "uncalibrated" in raw.notes[0]
    x = torch.log(torch.as_tensor(raw.class_probabilities))  # log-softmax of the raw logits, up to a constant
    expected = torch.softmax(x / load_run(stripe_run[0], 0).temperature, dim=1).numpy()
    np.testing.assert_allclose(calibrated, expected, rtol=1e-4, atol=1e-6)


def test_predict_writes_its_table_and_says_which_images_are_unfamiliar(stripe_run, tmp_path, capsys):
    from tmdafm_core.data import save_tiff

    run_dir, data = stripe_run
    flat = tmp_path / "flat.tif"
    yy, xx = np.mgrid[:32, :32]
    save_tiff(flat, 0.01 * xx + 0.02 * yy, pixel_size_nm=4.0)
    out = tmp_path / "out" / "predictions.csv"
    assert main(["predict", str(run_dir), data["path"].iloc[0], str(flat), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.read_text() == captured.out
    assert "1 of 2 images are unlike the training images" in captured.err
    rows = captured.out.splitlines()
    assert rows[0].endswith(",agreement,spread,novelty,unfamiliar")
    assert rows[1].endswith(",False") and rows[2].endswith(",True")


def test_a_run_trained_before_references_says_so_and_how_to_rebuild(stripe_run, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(stripe_run[0], old)
    for path in old.glob("fold*.pt"):
        checkpoint = load_checkpoint(path)
        del checkpoint["calibration"], checkpoint["novelty"]
        torch.save(checkpoint, path)
    result = predict_ensemble(load_ensemble(old), [stripe_run[1]["path"].iloc[0]])
    assert result.novelty is None and not result.calibrated and not result.unfamiliar.any()
    assert len(result.notes) == 1 and "tmdafm precompute" in result.notes[0]
    assert main(["predict", str(old), stripe_run[1]["path"].iloc[0]]) == 0
    captured = capsys.readouterr()
    assert "trained before tmdafm kept calibration" in captured.err
    assert captured.out.splitlines()[1].endswith(",,")  # novelty and unfamiliar empty, not invented
