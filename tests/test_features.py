"""Physical descriptors: analytic cases, agreement with scikit-image, synthetic ground truth, resolution, engine."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.stats import spearmanr

from tmdafm_core.data import normalize_height, read_dataset, save_tiff
from tmdafm_core.data.synthetic import reference_params, render_surface, write_synthetic_dataset
from tmdafm_core.features import (
    DESCRIPTORS,
    FEATURE_COLUMNS,
    PAPER_PIXEL_NM,
    anisotropy,
    compute_all,
    compute_table,
    contrast,
    dog_blob,
    get_descriptor,
    grain_density,
    grain_size,
    scale_to_unit_max,
    step_edges,
)
from tmdafm_core.features import table as table_module

ISOTROPIC = ("rms_roughness", "local_variation", "step_edges", "defect_density", "dog_blob", "grain_size",
             "grain_density")


def _surface(size=256, seed=0, **overrides):
    height, truth = render_surface(reference_params(**overrides), size, seed=seed)
    return normalize_height(height), 1000.0 / size, truth


def _disk_image(size, radius_nm, pixel_nm):
    centre = (size - 1) / 2.0
    y, x = np.mgrid[:size, :size]
    return (np.hypot(x - centre, y - centre) * pixel_nm <= radius_nm).astype(np.float32)


# --- registry and analytic cases --------------------------------------------------------------------------------

def test_registry_lists_the_design_columns_in_order():
    assert FEATURE_COLUMNS == ("rms_roughness", "local_variation", "step_edges", "defect_density", "anisotropy",
                               "dog_blob", "grain_size", "grain_density", "contrast", "dissimilarity",
                               "homogeneity", "energy", "correlation", "asm")
    assert all(d.unit and d.meaning and d.function.__name__ == d.name for d in DESCRIPTORS)
    with pytest.raises(ValueError, match="unknown descriptor"):
        get_descriptor("roughness")


def test_compute_all_equals_the_single_functions():
    image, pixel_nm, _ = _surface(128, particle_density_per_um2=50.0)
    together = compute_all(image, pixel_nm)
    assert list(together) == list(FEATURE_COLUMNS)
    for descriptor in DESCRIPTORS:
        assert together[descriptor.name] == pytest.approx(descriptor.function(image, pixel_nm), rel=1e-12)


@pytest.mark.parametrize("paper_pixels", [False, True])
def test_constant_image_gives_finite_values(paper_pixels):
    values = compute_all(np.full((64, 64), 0.5), 4.0, paper_pixels=paper_pixels)
    assert all(math.isfinite(v) for v in values.values())
    assert values["rms_roughness"] == values["grain_density"] == values["dog_blob"] == 0.0


@pytest.mark.parametrize("size", [256, 128])
def test_single_disk_is_one_grain_of_its_diameter(size):
    pixel_nm = 1000.0 / size
    image = _disk_image(size, 100.0, pixel_nm)
    assert grain_size(image, pixel_nm) == pytest.approx(200.0, rel=0.03)
    assert grain_density(image, pixel_nm) == pytest.approx(1.0)  # one grain in 1 µm²
    assert grain_size(image, pixel_nm, paper_pixels=True) == pytest.approx(200.0 / pixel_nm, rel=0.03)


@pytest.mark.parametrize("square", [1, 2, 4])
def test_checkerboard_glcm_contrast(square):
    y, x = np.mgrid[:64, :64]
    board = (((x // square) + (y // square)) % 2).astype(float)
    # Of the 63 horizontal neighbour pairs per row, 63 // square straddle a square edge and differ by 255 levels.
    assert contrast(board, PAPER_PIXEL_NM) == pytest.approx(255.0**2 * (63 // square) / 63, rel=1e-12)


def test_glcm_properties_match_graycoprops():
    from skimage.feature import graycomatrix, graycoprops
    from skimage.util import img_as_ubyte

    image, pixel_nm, _ = _surface(128, seed=3)
    matrix = graycomatrix(img_as_ubyte(image), [1], [0], levels=256, symmetric=True, normed=True)
    ours = compute_all(image, PAPER_PIXEL_NM)
    for name in ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "asm"):
        assert ours[name] == pytest.approx(graycoprops(matrix, name.upper() if name == "asm" else name)[0, 0],
                                           rel=1e-9)


@pytest.mark.parametrize("turn", [np.rot90, np.transpose, np.flipud])
def test_isotropic_descriptors_ignore_rotation_and_mirroring(turn):
    image, pixel_nm, _ = _surface(128, seed=1, particle_density_per_um2=40.0)
    before, after = compute_all(image, pixel_nm), compute_all(np.ascontiguousarray(turn(image)), pixel_nm)
    for name in ISOTROPIC:
        assert after[name] == pytest.approx(before[name], rel=1e-6), name


def test_nan_pixels_are_filled_with_the_median():
    image, pixel_nm, _ = _surface(64, seed=2)
    holed = image.astype(np.float64)
    holed[10:14, 20:30] = np.nan
    filled = np.where(np.isnan(holed), np.nanmedian(holed), holed)
    assert compute_all(holed, pixel_nm) == compute_all(filled, pixel_nm)


def test_rejects_all_nan_image():
    with pytest.raises(ValueError, match="no finite"):
        compute_all(np.full((40, 40), np.nan), 4.0)


def test_rejects_images_under_32_px():
    with pytest.raises(ValueError, match="at least 32 px"):
        compute_all(np.zeros((31, 64)), 4.0)


def test_rejects_non_2d_images():
    with pytest.raises(ValueError, match="2-D"):
        compute_all(np.zeros((64, 64, 3)), 4.0)


def test_rejects_unscaled_heights():
    with pytest.raises(ValueError, match="0..1"):
        compute_all(np.full((64, 64), 3.0), 4.0)


def test_rejects_bad_pixel_size():
    with pytest.raises(ValueError, match="pixel_size_nm"):
        compute_all(np.zeros((64, 64)), 0.0)


def test_rejects_unknown_step_edge_measure():
    with pytest.raises(ValueError, match="measure"):
        step_edges(np.zeros((64, 64)), 4.0, measure="area")


# --- the fast implementations count what scikit-image counts ------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_dog_blob_counts_like_skimage_blob_dog(seed):
    from skimage.feature import blob_dog

    image, _, _ = _surface(256, seed=seed, particle_density_per_um2=[10.0, 60.0, 200.0][seed])
    reference = len(blob_dog(image.astype(np.float64), min_sigma=5, max_sigma=40, threshold=0.01))
    ours = dog_blob(image, PAPER_PIXEL_NM, threshold=0.01)
    # Stated tolerance of the 2x-coarser, chained-Gaussian DoG stack: 10 % or 3 blobs.
    assert abs(ours - reference) <= max(3, 0.1 * reference)


# --- paper_pixels=True is the paper's code ---------------------------------------------------------------------

@pytest.mark.parametrize("material", ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2"])
def test_paper_pixels_reproduce_the_papers_functions(material):
    from tests.paper_reference import paper_descriptors
    from tmdafm_core.data.synthetic import sample_params

    params = sample_params(material, np.random.default_rng(7))
    image = normalize_height(render_surface(params, 96, seed=3)[0])
    ours = compute_all(image, PAPER_PIXEL_NM, paper_pixels=True)
    reference = paper_descriptors(image)
    for name in FEATURE_COLUMNS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-9, abs=1e-12), name


def test_paper_step_edges_count_4_connected_segments():
    """A diagonal band: Canny's edges touch only at corners in places, so scipy's default 4-connected label
    counts 5 segments where 8-connectivity sees one."""
    from skimage.feature import canny

    rows, cols = np.mgrid[:64, :64]
    image = (((rows + cols) % 2 == 0) & (np.abs(rows - cols) < 3)).astype(float)
    square = np.ones((3, 3), dtype=bool)
    closed = ndi.binary_erosion(ndi.binary_dilation(canny(image, sigma=0.3), square), square)
    assert ndi.label(closed, structure=square)[1] == 1
    assert step_edges(image, paper_pixels=True) == 5


def test_anisotropy_angle_is_arctan2_of_column_over_row_derivative():
    """A ramp rising along columns only: every gradient points along +columns, angle arctan2(1, 0) = pi/2 for
    all pixels, so the spread is 0; half the image rising along rows gives angles 0 and pi/2, std pi/4."""
    rows, cols = np.mgrid[:64, :64]
    assert anisotropy(cols / 63.0, paper_pixels=True) == pytest.approx(0.0, abs=1e-12)
    mixed = np.where(cols < 32, rows / 63.0, (cols - 32) / 63.0 + 0.0)
    grad_x, grad_y = np.gradient(mixed)
    expected = np.std(np.arctan2(grad_y, grad_x)) / np.hypot(grad_x, grad_y).mean()
    assert anisotropy(mixed, paper_pixels=True) == pytest.approx(expected)
    swapped = np.std(np.arctan2(grad_x, grad_y)) / np.hypot(grad_x, grad_y).mean()
    assert not np.isclose(expected, swapped)


# --- synthetic ground truth: one factor varied on a plain reference sample ----------------------------------------

def _sweep(field, values, size=256, seeds=(0, 1)):
    rows = []
    for value in values:
        for seed in seeds:
            image, pixel_nm, truth = _surface(size, seed=seed, **{field: value})
            rows.append((truth, compute_all(image, pixel_nm)))
    return rows


def _spearman(rows, feature, truth_key):
    return spearmanr([t[truth_key] for t, _ in rows], [v[feature] for _, v in rows])[0]


def test_particle_counts_follow_truth():
    rows = _sweep("particle_density_per_um2", [5, 20, 80, 320])
    assert _spearman(rows, "dog_blob", "particle_count") >= 0.8
    assert _spearman(rows, "defect_density", "particle_count") >= 0.8


def test_grain_density_follows_domain_density():
    rows = _sweep("domain_density_per_um2", [2, 5, 10, 20, 40, 80])
    assert _spearman(rows, "grain_density", "grain_count") >= 0.8


def test_step_edges_follow_terrace_count():
    rows = _sweep("terrace_spacing_nm", [40, 60, 90, 140, 220])
    assert _spearman(rows, "step_edges", "terrace_count") >= 0.8


def test_rms_roughness_follows_noise_amplitude():
    rows = _sweep("noise_nm", [0.005, 0.02, 0.05, 0.1, 0.2], size=128)
    assert _spearman(rows, "rms_roughness", "noise_amplitude") >= 0.8


def _resolution_pairs(field, values, seeds=(0, 1)):
    for value in values:
        for seed in seeds:
            fine = compute_all(*_surface(256, seed=seed, **{field: value})[:2])
            coarse = compute_all(*_surface(128, seed=seed, **{field: value})[:2])
            yield fine, coarse


@pytest.mark.parametrize(("field", "values", "names"), [
    ("particle_density_per_um2", [10, 80], ("dog_blob", "defect_density")),
    ("domain_density_per_um2", [10, 40], ("grain_density", "grain_size")),
])
def test_same_surface_at_256_and_128_px_agrees_within_15_percent(field, values, names):
    for fine, coarse in _resolution_pairs(field, values):
        for name in names:
            # Counts over 1 µm² are whole numbers: one feature more or less is within tolerance too.
            assert abs(fine[name] - coarse[name]) <= max(0.15 * fine[name], 1.0 if name != "grain_size" else 0), \
                (name, fine[name], coarse[name])


# --- batch engine -----------------------------------------------------------------------------------------------

@pytest.fixture
def small_set(tmp_path):
    write_synthetic_dataset(tmp_path / "syn", n=12, size=64, seed=5)
    return read_dataset(tmp_path / "syn")


def test_compute_table_columns_rows_and_values(small_set, tmp_path):
    table = compute_table(small_set, jobs=1, cache=tmp_path / "cache", progress=False)
    assert list(table.columns[:15]) == ["image", *FEATURE_COLUMNS]
    assert list(table["image"]) == list(small_set["image"])
    first = small_set.iloc[0]
    from tmdafm_core.data import load_image

    image, pixel_nm = load_image(first["path"], pixel_size_nm=first["pixel_size_nm"])
    assert table.loc[0, list(FEATURE_COLUMNS)].tolist() == list(compute_all(image, pixel_nm).values())


class _SimulatedCrash(Exception):
    """A failure midway through a run (pytest treats a real KeyboardInterrupt as stopping the session)."""


def test_rerun_computes_nothing_and_interrupted_run_resumes(small_set, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls, crashed = [], []
    real = table_module._compute_one

    def counting(task):
        calls.append(task[0])
        if len(calls) == 5 and not crashed:
            crashed.append(True)
            raise _SimulatedCrash
        return real(task)

    monkeypatch.setattr(table_module, "_compute_one", counting)
    with pytest.raises(_SimulatedCrash):
        compute_table(small_set, jobs=1, cache=cache, progress=False)
    assert len(calls) == 5
    calls.clear()
    first = compute_table(small_set, jobs=1, cache=cache, progress=False)
    assert len(calls) == len(small_set) - 4  # the four finished before the crash were kept
    calls.clear()
    again = compute_table(small_set, jobs=1, cache=cache, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(first, again)


def test_cache_key_changes_with_pixel_size_and_paper_mode(small_set, tmp_path):
    cache = tmp_path / "cache"
    base = compute_table(small_set.head(2), jobs=1, cache=cache, progress=False)
    finer = compute_table(small_set.head(2).assign(pixel_size_nm=5.0), jobs=1, cache=cache, progress=False)
    paper = compute_table(small_set.head(2), jobs=1, cache=cache, progress=False, paper_pixels=True)
    assert not np.allclose(base["grain_size"], finer["grain_size"])
    assert not np.allclose(base["grain_size"], paper["grain_size"])


def test_compute_table_with_two_processes_matches_serial(small_set):
    serial = compute_table(small_set, jobs=1, cache=False, progress=False)
    parallel = compute_table(small_set, jobs=2, cache=False, progress=False)
    pd.testing.assert_frame_equal(serial, parallel)


def test_compute_table_rejects_manifest_without_paths():
    with pytest.raises(ValueError, match="path"):
        compute_table(pd.DataFrame({"image": ["a.tif"]}), cache=False)


def test_unreadable_small_image_names_the_file(tmp_path):
    save_tiff(tmp_path / "tiny.tif", np.zeros((16, 16)), pixel_size_nm=4.0)
    with pytest.raises(ValueError, match="tiny.tif: too small: 16 x 16 px"):  # refused where images are read
        read_dataset(tmp_path)
    manifest = pd.DataFrame({"image": ["tiny.tif"], "path": [str(tmp_path / "tiny.tif")], "pixel_size_nm": [4.0]})
    with pytest.raises(ValueError, match="tiny.tif"):
        compute_table(manifest, jobs=1, cache=False, progress=False, strict=True)
    assert compute_table(manifest, jobs=1, cache=False, progress=False).attrs["skipped"][0][0].endswith("tiny.tif")


def test_scale_to_unit_max_divides_by_the_column_maximum():
    table = pd.DataFrame({"image": ["a", "b"], **{c: [1.0, 4.0] for c in FEATURE_COLUMNS}})
    table["grain_density"] = [0.0, 0.0]
    scaled = scale_to_unit_max(table)
    assert scaled["rms_roughness"].tolist() == [0.25, 1.0]
    assert scaled["grain_density"].tolist() == [0.0, 0.0]
    assert table["rms_roughness"].tolist() == [1.0, 4.0]  # raw values kept
    with pytest.raises(ValueError, match="lacks"):
        scale_to_unit_max(table.drop(columns="asm"))


def test_cli_features_writes_exact_columns(small_set, tmp_path, monkeypatch):
    from tmdafm_core.cli import main

    monkeypatch.setenv("TMDAFM_CACHE", str(tmp_path / "envcache"))
    out = tmp_path / "features.csv"
    assert main(["features", str(tmp_path / "syn"), "--out", str(out), "--jobs", "1"]) == 0
    written = pd.read_csv(out)
    assert list(written.columns) == ["image", "pixel_size_nm", *FEATURE_COLUMNS]
    assert len(written) == len(small_set)
    assert np.allclose(written["pixel_size_nm"], small_set.set_index("image").loc[written["image"], "pixel_size_nm"])
    assert (tmp_path / "envcache").is_dir()
    # Read back as a feature table, the pixel size is metadata, not one of the features.
    from tmdafm_core.data import read_feature_table

    assert read_feature_table(out).feature_names == list(FEATURE_COLUMNS)


def test_cli_features_bad_output_suffix_exits_2(small_set, tmp_path, capsys):
    from tmdafm_core.cli import main

    assert main(["features", str(tmp_path / "syn"), "--out", str(tmp_path / "f.xlsx")]) == 2
    assert "csv" in capsys.readouterr().err


def test_descriptor_cache_version_follows_the_code_not_its_comments():
    from tmdafm_core.features.table import FEATURE_CODE_VERSION, descriptor_code_version

    code = "def rms(x):\n    return (x ** 2).mean() ** 0.5\n"
    documented = 'def rms(x):\n    """Root mean square."""\n    # of the heights\n    return (x**2).mean() ** 0.5\n'
    changed = "def rms(x):\n    return (x ** 2).mean() ** 0.25\n"
    assert descriptor_code_version([code]) == descriptor_code_version([documented])
    assert descriptor_code_version([code]) != descriptor_code_version([changed])
    assert FEATURE_CODE_VERSION == descriptor_code_version()  # the installed descriptors' code
