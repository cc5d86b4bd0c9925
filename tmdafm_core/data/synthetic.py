"""Synthetic TMD-AFM data: physically motivated AFM topography of 2-D TMD films with known ground truth.

Every physical sample draws one set of growth parameters (:class:`SampleParams`) from a material-conditional
prior; every 1 µm crop of that sample places its domains, particles and terraces at fresh random positions. A crop
is a height map in nanometres built from, bottom to top:

* substrate step terraces: parallel, gently wavy steps every ``terrace_spacing_nm`` (a plane-levelled staircase,
  so each terrace shows as a band that rises across its width and drops at the step edge);
* monolayer domains: sharp-edged equilateral triangles (optionally truncated towards hexagons) nucleated at random
  with ``domain_density_per_um2``; most point one way, a share is rotated by 60°; where domains meet they coalesce
  and leave a shallow grain-boundary groove;
* bilayer/multilayer nucleation: smaller triangles stacked on a domain (pyramids);
* bright round nuclei at domain centres and particles anywhere (10–40 nm hemispherical caps);
* for granular growths, a dense texture of small domains (10–30 nm), isotropic or needle-like;
* AFM artefacts: tip blur (Gaussian, σ in nm), per-scan-line offsets, white noise.

Geometry lives in nanometres and is drawn from a random generator that does not depend on the pixel count, so
:func:`render_surface` draws the same surface at any resolution; only the per-pixel artefacts (scan-line offsets and
white noise) are drawn per resolution. :func:`write_synthetic_dataset` writes a data set in the public TMD-AFM file
layout with a ``manifest.csv`` holding each crop's true generator parameters as ``truth_*`` columns.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..progress import as_callback, iterate
from .images import afm_colours, save_tiff
from .readers import MANIFEST_CSV_NAME

#: Images per class in the real TMD-AFM data set (train + validation, held-out test), DESIGN.md.
PAPER_CLASS_COUNTS = {
    "MoS2": (344 + 85, 47),
    "WS2": (131 + 33, 18),
    "WSe2": (99 + 25, 13),
    "MoSe2": (93 + 24, 12),
    "Mo-WSe2": (70 + 18, 14),
}
SCAN_SIZE_NM = 1000.0
GROWTH_MODES = ("isolated", "coalesced", "pyramids", "granular")
MIN_IMAGES_PER_CLASS = 2  # one training and one held-out image
MIN_SIZE_PX = 32
_IMAGES_PER_SAMPLE = (3, 8)  # inclusive range of crops drawn from one physical sample
_GRANULAR_WAVES = 48
_MIN_GRAIN_AREA_NM2 = 300.0  # a domain fragment smaller than this is not a visible grain

# Material-conditional priors: each material has a characteristic look that survives shrinking a 1 µm crop to
# 32-64 px (one pixel = 16-31 nm), so it lives at >= 30-60 nm scales: its usual growth mode, the coverage and
# nucleation density of that mode (hence the domain size), layer stacking, particle load, substrate terraces and
# texture. Every sample draws its own values around that look, about one sample in ten grows in another mode, and
# MoS2 and WS2 share their mode (isolated sharp triangles), differing only in distributions that overlap: MoS2
# nucleates densely into many medium triangles, WS2 sparsely into fewer, larger, more often bilayer ones covering
# more of the substrate, as in the real data's main confusion.
_MODE_RANGES = {  # growth mode -> (nucleation density per µm² range, coverage range) of an off-mode sample
    "isolated": ((3.0, 40.0), (0.08, 0.45)),
    "coalesced": ((15.0, 120.0), (0.8, 0.97)),
    "pyramids": ((3.0, 30.0), (0.08, 0.5)),
    "granular": ((5.0, 80.0), (0.05, 0.9)),
}
_MATERIAL_PRIORS = {
    # modes: growth-mode weights (isolated, coalesced, pyramids, granular); density, coverage: ranges in the
    # material's own (dominant) mode; particles: typical particles per µm²; particle_nm: particle diameter range;
    # terraces: chance of visible substrate steps; truncation: mean corner cut; bilayer: bilayer tendency; texture:
    # chance of a granular texture outside the granular mode; grains: granular domain size range (nm); grain_nm:
    # texture height range (nm); needles: chance that the texture is needle-like; noise: noise factor; monolayer:
    # step height (nm)
    "MoS2": dict(modes=(0.90, 0.04, 0.04, 0.02), density=(8.0, 45.0), coverage=(0.12, 0.38), particles=30.0,
                 particle_nm=(12.0, 30.0), terraces=0.3, truncation=0.03, bilayer=0.15, texture=0.03,
                 grains=(10.0, 25.0), grain_nm=(0.2, 0.4), needles=0.4, noise=1.0, monolayer=0.65),
    "WS2": dict(modes=(0.88, 0.03, 0.07, 0.02), density=(3.0, 22.0), coverage=(0.25, 0.6), particles=15.0,
                particle_nm=(12.0, 30.0), terraces=0.3, truncation=0.05, bilayer=0.25, texture=0.03,
                grains=(10.0, 25.0), grain_nm=(0.2, 0.4), needles=0.4, noise=1.0, monolayer=0.70),
    "WSe2": dict(modes=(0.04, 0.03, 0.90, 0.03), density=(3.0, 12.0), coverage=(0.15, 0.4), particles=5.0,
                 particle_nm=(12.0, 30.0), terraces=0.6, truncation=0.25, bilayer=0.6, texture=0.03,
                 grains=(10.0, 25.0), grain_nm=(0.2, 0.4), needles=0.4, noise=0.8, monolayer=0.70),
    "MoSe2": dict(modes=(0.03, 0.05, 0.02, 0.90), density=(20.0, 90.0), coverage=(0.55, 0.92), particles=3.0,
                  particle_nm=(12.0, 30.0), terraces=0.15, truncation=0.08, bilayer=0.1, texture=0.5,
                  grains=(25.0, 40.0), grain_nm=(0.5, 0.9), needles=0.75, noise=1.2, monolayer=0.68),
    "Mo-WSe2": dict(modes=(0.03, 0.90, 0.02, 0.05), density=(20.0, 120.0), coverage=(0.85, 0.97), particles=60.0,
                    particle_nm=(25.0, 45.0), terraces=0.85, truncation=0.10, bilayer=0.15, texture=0.02,
                    grains=(10.0, 25.0), grain_nm=(0.2, 0.4), needles=0.4, noise=1.0, monolayer=0.70),
}
_HOME_MODE = {material: GROWTH_MODES[int(np.argmax(prior["modes"]))] for material, prior in _MATERIAL_PRIORS.items()}


@dataclass(frozen=True)
class SampleParams:
    """Growth and imaging parameters of one physical sample (lengths in nm, densities per µm²).

    Build one with :func:`sample_params` (drawn from a material prior) or directly, e.g. with
    ``dataclasses.replace(params, particle_density_per_um2=100.0)`` to sweep one factor.
    """

    material: str
    growth_mode: str
    domain_density_per_um2: float
    domain_size_nm: float  # mean triangle edge length
    domain_size_spread: float = 0.25  # log-normal sigma of edge lengths
    orientation_deg: float = 0.0  # direction of the substrate lattice: where the first orientation points
    flipped_fraction: float = 0.2  # share of domains rotated by 60° (the second preferred orientation)
    misoriented_fraction: float = 0.05  # share of domains at a random angle
    truncation: float = 0.0  # corner cut as a fraction of the edge: 0 = triangle, 1/3 = regular hexagon
    monolayer_nm: float = 0.7
    bilayer_probability: float = 0.2  # chance that a domain carries one more layer (repeated up to max_layers)
    bilayer_scale: float = 0.5  # edge of a layer relative to the one below
    max_layers: int = 2
    boundary_depth: float = 0.45  # grain-boundary groove depth as a fraction of the monolayer height
    nucleus_probability: float = 0.3  # chance of a bright nucleus at a domain centre
    particle_density_per_um2: float = 20.0
    particle_diameter_nm: float = 20.0
    particle_height_nm: float = 1.5
    terrace_spacing_nm: float = math.nan  # NaN: no substrate steps visible
    terrace_angle_deg: float = 0.0  # direction of the step edges
    terrace_step_nm: float = 0.3
    terrace_wave_nm: float = 10.0  # amplitude of the step meander
    terrace_wavelength_nm: float = 400.0
    granular_size_nm: float = math.nan  # NaN: no granular texture
    granular_height_nm: float = 0.3
    granular_needles: float = 0.0  # 0 isotropic grains .. 1 needle-like
    tip_sigma_nm: float = 3.0
    noise_nm: float = 0.05
    scan_line_nm: float = 0.03
    scan_size_nm: float = SCAN_SIZE_NM

    @property
    def has_terraces(self) -> bool:
        return bool(np.isfinite(self.terrace_spacing_nm) and self.terrace_spacing_nm > 0)

    @property
    def has_granular(self) -> bool:
        return bool(np.isfinite(self.granular_size_nm) and self.granular_size_nm > 0)


def _log_uniform(rng, low, high):
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def sample_params(material: str, rng) -> SampleParams:
    """Draw the growth parameters of one physical sample of ``material`` from its prior.

    Parameters
    ----------
    material : str
        One of :data:`tmdafm_core.data.PAPER_MATERIALS`.
    rng : numpy.random.Generator or int
        Random source.
    """
    if material not in _MATERIAL_PRIORS:
        raise ValueError(f"material {material!r} has no synthetic prior; use one of {list(_MATERIAL_PRIORS)}")
    rng = np.random.default_rng(rng)
    prior = _MATERIAL_PRIORS[material]
    mode = GROWTH_MODES[rng.choice(len(GROWTH_MODES), p=prior["modes"])]
    bilayer = float(np.clip(prior["bilayer"] * rng.uniform(0.2, 1.6), 0.0, 0.9))
    max_layers, bilayer_scale = 2, rng.uniform(0.3, 0.55)
    granular_size, granular_height = math.nan, 0.0
    density_range, coverage_range = _MODE_RANGES[mode]
    if mode == _HOME_MODE[material]:
        density_range, coverage_range = prior["density"], prior["coverage"]
    density, coverage = _log_uniform(rng, *density_range), rng.uniform(*coverage_range)
    if mode == "pyramids":
        bilayer, max_layers, bilayer_scale = rng.uniform(0.6, 1.0), int(rng.integers(3, 5)), rng.uniform(0.65, 0.85)
    if mode == "granular" or rng.random() < prior["texture"]:
        granular_size, granular_height = rng.uniform(*prior["grains"]), rng.uniform(*prior["grain_nm"])
    density = float(np.clip(density, 1.0, 300.0))
    # Boolean model of equal triangles: coverage = 1 - exp(-density * area), area = sqrt(3)/4 * edge^2.
    area_um2 = -math.log(1.0 - coverage) / density
    edge_nm = math.sqrt(4.0 * area_um2 / math.sqrt(3.0)) * 1000.0 * rng.uniform(0.9, 1.1)
    edge_nm = float(np.clip(edge_nm, 45.0, 700.0))
    has_terraces = rng.random() < prior["terraces"]
    return SampleParams(
        material=material,
        growth_mode=mode,
        domain_density_per_um2=density,
        domain_size_nm=edge_nm,
        domain_size_spread=rng.uniform(0.1, 0.35),
        orientation_deg=rng.uniform(0.0, 120.0),
        flipped_fraction=rng.uniform(0.0, 0.5),
        misoriented_fraction=rng.uniform(0.0, 0.12),
        truncation=float(np.clip(rng.exponential(prior["truncation"]), 0.0, 1.0 / 3.0)),
        monolayer_nm=prior["monolayer"] * rng.uniform(0.9, 1.1),
        bilayer_probability=bilayer,
        bilayer_scale=bilayer_scale,
        max_layers=max_layers,
        boundary_depth=rng.uniform(0.35, 0.65),
        nucleus_probability=rng.uniform(0.0, 0.6),
        particle_density_per_um2=float(np.clip(prior["particles"] * _log_uniform(rng, 0.5, 2.0), 1.0, 400.0)),
        particle_diameter_nm=rng.uniform(*prior["particle_nm"]),
        particle_height_nm=rng.uniform(1.0, 2.5),
        terrace_spacing_nm=_log_uniform(rng, 50.0, 150.0) if has_terraces else math.nan,
        terrace_angle_deg=rng.uniform(0.0, 180.0),
        terrace_step_nm=rng.uniform(0.25, 0.5),
        terrace_wave_nm=rng.uniform(0.0, 14.0),
        terrace_wavelength_nm=rng.uniform(250.0, 900.0),
        granular_size_nm=granular_size,
        granular_height_nm=granular_height,
        granular_needles=float(rng.random() < prior["needles"]) * rng.uniform(0.5, 1.0),
        tip_sigma_nm=rng.uniform(1.5, 4.5),
        noise_nm=prior["noise"] * _log_uniform(rng, 0.02, 0.12),
        scan_line_nm=rng.uniform(0.0, 0.05),
    )


def broad_params(rng) -> SampleParams:
    """Draw one sample from the generator's whole parameter space, not from any material's prior.

    Every growth mode is equally likely and every factor (density, coverage, stacking, particles, terraces, texture,
    tip, noise) is drawn over the union of the ranges the material priors use, independently of the others: an
    unlabelled corpus for pretraining (:mod:`tmdafm_core.pretrain`) that covers the five classes' looks without
    being drawn from their distributions. ``material`` is ``"unlabelled"``.
    """
    rng = np.random.default_rng(rng)
    mode = GROWTH_MODES[int(rng.integers(len(GROWTH_MODES)))]
    priors = list(_MATERIAL_PRIORS.values())
    look = priors[int(rng.integers(len(priors)))]  # texture and particle scales of some material, mixed freely below
    density_range, coverage_range = _MODE_RANGES[mode]
    density, coverage = _log_uniform(rng, *density_range), rng.uniform(*coverage_range)
    bilayer, max_layers, bilayer_scale = rng.uniform(0.0, 0.7), 2, rng.uniform(0.3, 0.55)
    if mode == "pyramids":
        bilayer, max_layers, bilayer_scale = rng.uniform(0.6, 1.0), int(rng.integers(3, 5)), rng.uniform(0.65, 0.85)
    granular_size, granular_height = math.nan, 0.0
    if mode == "granular" or rng.random() < 0.2:
        granular_size, granular_height = rng.uniform(10.0, 40.0), rng.uniform(0.2, 0.9)
    area_um2 = -math.log(1.0 - coverage) / float(np.clip(density, 1.0, 300.0))
    edge_nm = float(np.clip(math.sqrt(4.0 * area_um2 / math.sqrt(3.0)) * 1000.0, 45.0, 700.0))
    has_terraces = rng.random() < 0.45
    return SampleParams(
        material="unlabelled", growth_mode=mode, domain_density_per_um2=float(np.clip(density, 1.0, 300.0)),
        domain_size_nm=edge_nm, domain_size_spread=rng.uniform(0.1, 0.35), orientation_deg=rng.uniform(0.0, 120.0),
        flipped_fraction=rng.uniform(0.0, 0.5), misoriented_fraction=rng.uniform(0.0, 0.12),
        truncation=rng.uniform(0.0, 1.0 / 3.0), monolayer_nm=rng.uniform(0.6, 0.75), bilayer_probability=bilayer,
        bilayer_scale=bilayer_scale, max_layers=max_layers, boundary_depth=rng.uniform(0.35, 0.65),
        nucleus_probability=rng.uniform(0.0, 0.6), particle_density_per_um2=_log_uniform(rng, 1.0, 200.0),
        particle_diameter_nm=rng.uniform(*look["particle_nm"]), particle_height_nm=rng.uniform(1.0, 2.5),
        terrace_spacing_nm=_log_uniform(rng, 50.0, 150.0) if has_terraces else math.nan,
        terrace_angle_deg=rng.uniform(0.0, 180.0), terrace_step_nm=rng.uniform(0.25, 0.5),
        terrace_wave_nm=rng.uniform(0.0, 14.0), terrace_wavelength_nm=rng.uniform(250.0, 900.0),
        granular_size_nm=granular_size, granular_height_nm=granular_height,
        granular_needles=float(rng.random() < 0.5) * rng.uniform(0.5, 1.0), tip_sigma_nm=rng.uniform(1.5, 4.5),
        noise_nm=_log_uniform(rng, 0.015, 0.15), scan_line_nm=rng.uniform(0.0, 0.05),
    )


def reference_params(material: str = "MoS2", **overrides) -> SampleParams:
    """A plain, moderate sample (isolated triangles, few particles, no terraces, low noise) to sweep one factor.

    Descriptor validation varies one truth variable at a time on top of this, e.g.
    ``[reference_params(particle_density_per_um2=d) for d in (5, 20, 80, 300)]``; in the mixed data set every
    factor varies at once and confounds the others.
    """
    base = SampleParams(material=material, growth_mode="isolated", domain_density_per_um2=10.0,
                        domain_size_nm=150.0, domain_size_spread=0.2, flipped_fraction=0.3, misoriented_fraction=0.0,
                        bilayer_probability=0.0, nucleus_probability=0.0, particle_density_per_um2=5.0,
                        particle_diameter_nm=25.0, particle_height_nm=1.5, tip_sigma_nm=2.5, noise_nm=0.02,
                        scan_line_nm=0.01)
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SampleParams)})
    if unknown:
        raise ValueError(f"reference_params: unknown parameter(s) {unknown}; see SampleParams for the fields")
    return dataclasses.replace(base, **overrides)


# --- geometry (nm, independent of the pixel count) ---------------------------------------------------------------

@dataclass
class _Layout:
    polygons: list  # (label, layer, vertices (k, 2) in nm as x, y), in painting order
    particles: np.ndarray  # (n, 4): x, y, radius, height (nm)
    particle_count: int  # centres inside the crop
    terrace_phase: float
    terrace_wave_phase: float
    waves: np.ndarray  # (K, 4): kx, ky (rad/nm), phase, amplitude of the granular texture


def _domain_polygon(center, edge, angle, truncation):
    """Vertices (k, 2) of an equilateral triangle of edge ``edge`` centred at ``center``, corners cut by
    ``truncation`` × edge (a hexagon at 1/3)."""
    corner_angles = angle + np.array([90.0, 210.0, 330.0]) * (math.pi / 180.0)
    circumradius = edge / math.sqrt(3.0)
    corners = center + circumradius * np.stack([np.cos(corner_angles), np.sin(corner_angles)], axis=1)
    if truncation <= 1e-3:
        return corners
    nxt = np.roll(corners, -1, axis=0)
    near = corners + truncation * (nxt - corners)
    far = corners + (1.0 - truncation) * (nxt - corners)
    return np.stack([near, far], axis=1).reshape(-1, 2)


def _layout(params: SampleParams, rng) -> _Layout:
    size = params.scan_size_nm
    margin = min(1.2 * params.domain_size_nm, 600.0) + 50.0
    extent = size + 2 * margin
    area_um2 = extent * extent / 1e6
    n_domains = rng.poisson(params.domain_density_per_um2 * area_um2)
    centers = rng.uniform(-margin, size + margin, size=(n_domains, 2))
    edges = np.clip(params.domain_size_nm * rng.lognormal(0.0, params.domain_size_spread, n_domains),
                    15.0, 3.0 * params.domain_size_nm)
    base = math.radians(params.orientation_deg)
    angles = base + math.pi / 3.0 * (rng.random(n_domains) < params.flipped_fraction) \
        + rng.normal(0.0, math.radians(1.5), n_domains)
    misoriented = rng.random(n_domains) < params.misoriented_fraction
    angles[misoriented] = rng.uniform(0.0, 2 * math.pi, misoriented.sum())
    extra_layers = _layer_counts(rng, n_domains, params.bilayer_probability, params.max_layers)
    layer_shift = rng.uniform(-0.15, 0.15, size=(n_domains, params.max_layers, 2))

    # Larger (earlier nucleated) domains are painted last so that they win where domains coalesce.
    polygons = []
    for label, i in enumerate(np.argsort(edges, kind="stable"), start=1):
        polygons.append((label, 1, _domain_polygon(centers[i], edges[i], angles[i], params.truncation)))
        edge, center = edges[i], centers[i].copy()
        for layer in range(2, 2 + extra_layers[i]):
            edge = edge * params.bilayer_scale
            center = center + layer_shift[i, layer - 1] * edge
            polygons.append((label, layer, _domain_polygon(center, edge, angles[i], params.truncation)))

    has_nucleus = rng.random(n_domains) < params.nucleus_probability
    nucleus_xy = centers[has_nucleus]
    n_particles = rng.poisson(params.particle_density_per_um2 * area_um2)
    particle_xy = rng.uniform(-margin, size + margin, size=(n_particles, 2))
    xy = np.concatenate([nucleus_xy, particle_xy])
    n_round = len(xy)
    radius = 0.5 * params.particle_diameter_nm * rng.lognormal(0.0, 0.2, n_round)
    height = params.particle_height_nm * rng.lognormal(0.0, 0.25, n_round)
    particles = np.column_stack([xy, radius, height]) if n_round else np.zeros((0, 4))
    inside = (xy >= 0).all(axis=1) & (xy < size).all(axis=1)

    waves = np.zeros((0, 4))
    if params.has_granular:
        # A band-limited random field: grains of diameter d come from waves of length ~2d.
        k = 2 * math.pi / (2.0 * params.granular_size_nm) * rng.uniform(0.8, 1.25, _GRANULAR_WAVES)
        spread = math.pi * (1.0 - 0.9 * params.granular_needles)
        theta = rng.uniform(0.0, 2 * math.pi) + rng.uniform(-spread / 2, spread / 2, _GRANULAR_WAVES)
        waves = np.column_stack([k * np.cos(theta), k * np.sin(theta), rng.uniform(0, 2 * math.pi, _GRANULAR_WAVES),
                                 np.full(_GRANULAR_WAVES, math.sqrt(2.0 / _GRANULAR_WAVES))])
    return _Layout(polygons, particles, int(inside.sum()), rng.random(), rng.uniform(0, 2 * math.pi), waves)


def _layer_counts(rng, n, probability, max_layers):
    """Extra layers per domain: each further layer nucleates with ``probability`` on the one below."""
    counts = np.zeros(n, dtype=int)
    growing = np.ones(n, dtype=bool)
    for _ in range(max_layers - 1):
        growing &= rng.random(n) < probability
        counts += growing
    return counts


# --- rendering ---------------------------------------------------------------------------------------------------

def _pixel_centres_nm(size_px: int, scan_size_nm: float) -> np.ndarray:
    return (np.arange(size_px) + 0.5) * (scan_size_nm / size_px)


def _terrace_coordinate(params: SampleParams, layout: _Layout, x, y):
    """Position across the steps in units of the terrace spacing (step edges at integers)."""
    angle = math.radians(params.terrace_angle_deg)
    across = x * math.cos(angle) + y * math.sin(angle)
    along = -x * math.sin(angle) + y * math.cos(angle)
    phase = 2 * math.pi * along / params.terrace_wavelength_nm + layout.terrace_wave_phase
    # Two incommensurate harmonics: step meanders are irregular, not sinusoidal.
    meander = params.terrace_wave_nm * (np.sin(phase) + 0.45 * np.sin(2.37 * phase + 1.3))
    return (across + meander) / params.terrace_spacing_nm + layout.terrace_phase


def _terrace_count(params: SampleParams, layout: _Layout) -> int:
    """Step edges crossing the crop, counted on a fixed 5 nm grid so that it does not depend on the pixel count."""
    if not params.has_terraces:
        return 0
    grid = np.linspace(0.0, params.scan_size_nm, 201)
    u = _terrace_coordinate(params, layout, grid[None, :], grid[:, None])
    return int(np.floor(u.max()) - np.floor(u.min()))


def _paint_domains(layout: _Layout, size_px: int, pixel_nm: float):
    from skimage.draw import polygon

    labels = np.zeros((size_px, size_px), dtype=np.int32)
    layers = np.zeros((size_px, size_px), dtype=np.int8)
    for label, layer, vertices in layout.polygons:
        cols = vertices[:, 0] / pixel_nm - 0.5
        rows = vertices[:, 1] / pixel_nm - 0.5
        if cols.max() < -1 or rows.max() < -1 or cols.min() > size_px or rows.min() > size_px:
            continue
        rr, cc = polygon(rows, cols, shape=labels.shape)
        if layer == 1:
            labels[rr, cc] = label
            layers[rr, cc] = 1
        else:
            layers[rr, cc] = np.maximum(layers[rr, cc], layer)
    return labels, layers


def _grain_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels where two different domains touch (one pixel wide)."""
    boundary = np.zeros(labels.shape, dtype=bool)
    horizontal = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    vertical = (labels[1:, :] != labels[:-1, :]) & (labels[1:, :] > 0) & (labels[:-1, :] > 0)
    boundary[:, 1:] |= horizontal
    boundary[1:, :] |= vertical
    return boundary


def _particle_heights(particles: np.ndarray, size_px: int, pixel_nm: float, scan_nm: float) -> np.ndarray:
    """Hemispherical caps (x, y, radius, height in nm), overlapping ones merged by their maximum."""
    heights = np.zeros((size_px, size_px), dtype=np.float64)
    if not len(particles):
        return heights
    x, y, radius, cap = particles.T
    keep = (x > -radius) & (x < scan_nm + radius) & (y > -radius) & (y < scan_nm + radius)
    x, y, radius, cap = x[keep], y[keep], radius[keep], cap[keep]
    if not len(x):
        return heights
    half = int(math.ceil(radius.max() / pixel_nm)) + 1
    offsets = np.arange(-half, half + 1)
    col0 = np.floor(x / pixel_nm).astype(int)
    row0 = np.floor(y / pixel_nm).astype(int)
    cols = col0[:, None, None] + offsets[None, None, :]
    rows = row0[:, None, None] + offsets[None, :, None]
    dx = (cols + 0.5) * pixel_nm - x[:, None, None]
    dy = (rows + 0.5) * pixel_nm - y[:, None, None]
    fraction = 1.0 - (dx * dx + dy * dy) / (radius[:, None, None] ** 2)
    values = cap[:, None, None] * np.sqrt(np.clip(fraction, 0.0, None))
    rows, cols = np.broadcast_arrays(rows, cols)
    inside = (fraction > 0) & (rows >= 0) & (rows < size_px) & (cols >= 0) & (cols < size_px)
    np.maximum.at(heights, (rows[inside], cols[inside]), values[inside])
    return heights


def _granular_texture(params: SampleParams, layout: _Layout, coords_nm: np.ndarray) -> np.ndarray:
    """Small plateau-like domains from a thresholded band-limited random field, evaluated as one matrix product
    (a sum of plane waves separates into x and y factors), so it is defined in nm at any resolution."""
    kx, ky, phase, amplitude = layout.waves.T
    along_x = amplitude * np.exp(1j * (np.outer(coords_nm, kx) + phase))
    along_y = np.exp(1j * np.outer(coords_nm, ky))
    field = (along_y @ along_x.T).real
    return params.granular_height_nm * np.clip((field - 0.3) / 0.4, 0.0, 1.0)


def render_surface(params: SampleParams, size_px: int = 256, *, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Render one crop of a sample as an AFM height map.

    The same ``params`` and ``seed`` give the same physical surface (positions in nm) at any ``size_px``; only the
    per-pixel artefacts (scan-line offsets, white noise) are drawn for the given resolution.

    Parameters
    ----------
    params : SampleParams
        Growth and imaging parameters of the sample.
    size_px : int
        Output side length in pixels (the crop spans ``params.scan_size_nm``).
    seed : int
        Crop seed: positions of domains, particles and terraces.

    Returns
    -------
    height : ndarray of float32, shape (size_px, size_px)
        Height in nm (rows = slow scan axis y, columns = fast scan axis x).
    truth : dict
        Measured ground truth of this crop: ``coverage`` (fraction covered by ≥ 1 layer), ``grain_count``
        (visible domains, fragments ≥ 300 nm²), ``particle_count`` (nuclei and particles centred in the crop),
        ``terrace_count`` (step edges crossing the crop), ``noise_amplitude`` (white-noise std as a fraction of the
        crop's height range, i.e. on the 0..1 scale of :func:`~tmdafm_core.data.load_image`).
    """
    if not isinstance(params, SampleParams):
        raise ValueError(f"params must be a SampleParams, got {type(params).__name__}")
    if int(size_px) != size_px or size_px < MIN_SIZE_PX:
        raise ValueError(f"size_px must be an integer >= {MIN_SIZE_PX}, got {size_px}")
    size_px = int(size_px)
    scan_nm = params.scan_size_nm
    pixel_nm = scan_nm / size_px
    layout = _layout(params, np.random.default_rng([seed, 0]))
    coords = _pixel_centres_nm(size_px, scan_nm)

    labels, layers = _paint_domains(layout, size_px, pixel_nm)
    height = params.monolayer_nm * layers.astype(np.float64)
    height -= params.boundary_depth * params.monolayer_nm * _grain_boundaries(labels)
    if params.has_terraces:
        u = _terrace_coordinate(params, layout, coords[None, :], coords[:, None])
        height += params.terrace_step_nm * (u - np.floor(u))
    if params.has_granular:
        height += _granular_texture(params, layout, coords)
    height += _particle_heights(layout.particles, size_px, pixel_nm, scan_nm)

    from scipy.ndimage import gaussian_filter

    height = gaussian_filter(height, params.tip_sigma_nm / pixel_nm, mode="nearest", truncate=3.0)
    pixel_rng = np.random.default_rng([seed, 1, size_px])
    line_offsets = pixel_rng.normal(0.0, params.scan_line_nm, size_px)
    glitches = pixel_rng.random(size_px) < 0.01
    line_offsets[glitches] += pixel_rng.normal(0.0, 4.0 * params.scan_line_nm + 0.05, glitches.sum())
    height += line_offsets[:, None]
    height += pixel_rng.normal(0.0, params.noise_nm, height.shape)

    areas = np.bincount(labels.ravel())[1:]
    span = float(height.max() - height.min())
    truth = {
        "coverage": float((layers > 0).mean()),
        "grain_count": int((areas * pixel_nm**2 >= _MIN_GRAIN_AREA_NM2).sum()),
        "particle_count": layout.particle_count,
        "terrace_count": _terrace_count(params, layout),
        "noise_amplitude": params.noise_nm / span if span > 0 else 0.0,
    }
    return height.astype(np.float32), truth


# --- data set ----------------------------------------------------------------------------------------------------

def class_image_counts(n: int, *, class_counts=None) -> dict[str, tuple[int, int]]:
    """Images per class, (train, test), scaled from the real data set so that they add up to exactly ``n``.

    Class totals are the real proportions rounded by largest remainder with at least
    :data:`MIN_IMAGES_PER_CLASS` images per class; each class holds out its real test fraction (at least one image,
    never all of them).

    Parameters
    ----------
    n : int
        Total number of images, at least ``MIN_IMAGES_PER_CLASS × number of classes``.
    class_counts : dict, optional
        ``{material: (train_and_val, test)}``; defaults to :data:`PAPER_CLASS_COUNTS`.
    """
    class_counts = dict(class_counts or PAPER_CLASS_COUNTS)
    minimum = MIN_IMAGES_PER_CLASS * len(class_counts)
    if int(n) != n or n < minimum:
        raise ValueError(f"n must be an integer >= {minimum} ({MIN_IMAGES_PER_CLASS} images for each of "
                         f"{len(class_counts)} classes), got {n}")
    n = int(n)
    materials = list(class_counts)
    totals = np.array([sum(class_counts[m]) for m in materials], dtype=float)
    target = n * totals / totals.sum()
    counts = np.maximum(np.floor(target).astype(int), MIN_IMAGES_PER_CLASS)
    while counts.sum() < n:
        counts[np.argmax(target - counts)] += 1
    while counts.sum() > n:
        surplus = np.where(counts > MIN_IMAGES_PER_CLASS, counts - target, -np.inf)
        counts[np.argmax(surplus)] -= 1
    result = {}
    for material, total in zip(materials, counts, strict=True):
        train_val, test = class_counts[material]
        n_test = int(np.clip(round(total * test / (train_val + test)), 1, total - 1))
        result[material] = (int(total) - n_test, n_test)
    return result


def _split_into_samples(n_images: int, rng) -> list[int]:
    sizes = []
    while n_images > 0:
        k = min(int(rng.integers(_IMAGES_PER_SAMPLE[0], _IMAGES_PER_SAMPLE[1] + 1)), n_images)
        sizes.append(k)
        n_images -= k
    return sizes


def plan_dataset(n: int = 1026, *, seed: int = 0) -> list[dict]:
    """Decide every image of a synthetic data set without rendering it.

    Returns one dict per image with ``name`` (file name), ``material``, ``sample_id``, ``split``, ``params``
    (:class:`SampleParams`, shared by the crops of one sample) and ``seed`` (the crop seed). Held-out (test) images
    come from their own samples.
    """
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    counts = class_image_counts(n)
    root = np.random.SeedSequence(seed)
    plan_rng = np.random.default_rng(root.spawn(1)[0])
    jobs, sample_number = [], 0
    for material, (n_train, n_test) in counts.items():
        for split, n_split in (("train", n_train), ("test", n_test)):
            for n_crops in _split_into_samples(n_split, plan_rng):
                sample_number += 1
                sample_id = f"{material}-s{sample_number:03d}"
                sample_rng = np.random.default_rng([seed, 7, sample_number])
                params = sample_params(material, sample_rng)
                for index in range(n_crops):
                    suffix = "_test" if split == "test" else ""
                    jobs.append({
                        "name": f"{material}_syn_{sample_id}_{index:03d}{suffix}.tif",
                        "material": material,
                        "sample_id": sample_id,
                        "split": split,
                        "params": params,
                        "seed": int(sample_rng.integers(2**62)),
                    })
    return jobs


def fresh_films(n: int = 1026, *, size: int = 256, seed: int = 1001) -> tuple[list[np.ndarray], list[str]]:
    """Height maps and materials of a whole new synthetic data set, rendered in memory: new samples from the same
    plan as :func:`write_synthetic_dataset` (class shares, crops per sample), for judging a model trained on a data
    set of another ``seed`` on many more images than its test set holds (every image here is from a sample it never
    saw).

    Parameters
    ----------
    n : int
        Images (the paper's 1026 by default: ten times a demo store's test set).
    size : int
        Side in pixels of each 1 µm crop.
    seed : int
        Seed of the plan and the renders; differ from the training data set's (the demo's is 0).

    Returns
    -------
    images : list of ndarray, shape (size, size)
    materials : list of str
    """
    jobs = plan_dataset(n, seed=seed)
    return [render_surface(job["params"], size, seed=job["seed"])[0] for job in jobs], [job["material"] for job in jobs]


_TRUTH_PARAMETERS = {  # manifest column -> SampleParams field
    "truth_domain_density_per_um2": "domain_density_per_um2",
    "truth_domain_size_nm": "domain_size_nm",
    "truth_bilayer_probability": "bilayer_probability",
    "truth_max_layers": "max_layers",
    "truth_truncation": "truncation",
    "truth_orientation_deg": "orientation_deg",
    "truth_particle_diameter_nm": "particle_diameter_nm",
    "truth_terrace_spacing_nm": "terrace_spacing_nm",
    "truth_terrace_angle_deg": "terrace_angle_deg",
    "truth_granular_size_nm": "granular_size_nm",
    "truth_tip_sigma_nm": "tip_sigma_nm",
    "truth_noise_nm": "noise_nm",
}


def expected_particle_density(params: SampleParams) -> float:
    """Expected bright round features (particles and domain-centre nuclei) per µm² of a sample."""
    return params.particle_density_per_um2 + params.nucleus_probability * params.domain_density_per_um2


def truth_columns(params: SampleParams, truth: dict) -> dict:
    """The ``truth_*`` manifest columns of one rendered crop: its sample's parameters and what
    :func:`render_surface` measured on it (coverage, grain, particle and terrace counts, relative noise)."""
    row = {"truth_growth_mode": params.growth_mode}
    row.update({column: getattr(params, field) for column, field in _TRUTH_PARAMETERS.items()})
    row["truth_particle_density_per_um2"] = expected_particle_density(params)
    row.update({
        "truth_coverage": truth["coverage"],
        "truth_grain_count": truth["grain_count"],
        "truth_particle_count": truth["particle_count"],
        "truth_terrace_count": truth["terrace_count"],
        "truth_noise_amplitude": truth["noise_amplitude"],
    })
    return row


def _write_one(job: dict, out_dir: Path, size: int) -> dict:
    params = job["params"]
    height, truth = render_surface(params, size, seed=job["seed"])
    pixel_nm = params.scan_size_nm / size
    save_tiff(out_dir / job["name"], height, pixel_size_nm=pixel_nm)
    return {"path": job["name"], "material": job["material"], "sample_id": job["sample_id"], "split": job["split"],
            "pixel_size_nm": pixel_nm, **truth_columns(params, truth)}


def _is_previous_output(path: Path) -> bool:
    name = path.name
    return name == MANIFEST_CSV_NAME or (path.suffix == ".tif" and "_syn_" in name) or path.suffix == ".png"


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder; give a new or empty folder")
    if out_dir.is_dir():
        entries = list(out_dir.iterdir())
        foreign = [p for p in entries if not (p.is_file() and _is_previous_output(p))]
        if foreign:
            raise ValueError(f"{out_dir}: folder is not empty and not a previous synth output (e.g. {foreign[0].name});"
                             " give a new or empty folder")
        for path in entries:
            if path.suffix != ".png":
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def write_synthetic_dataset(out_dir, *, n: int = 1026, size: int = 256, seed: int = 0, preview=None,
                            progress=False) -> pd.DataFrame:
    """Write a synthetic data set in the public TMD-AFM layout plus ``manifest.csv`` with the ground truth.

    Files are named ``{material}_syn_{sample_id}_{index:03d}.tif`` (held-out images end in ``_test.tif``) and hold
    float32 heights in nm with TIFF resolution tags giving the pixel size. A folder holding an earlier synth output
    is overwritten; any other non-empty folder is refused.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    n : int
        Total number of images; class counts follow the real data set (:func:`class_image_counts`).
    size : int
        Image side in pixels (≥ 32); every crop spans 1 µm.
    seed : int
        Seed; the same seed gives the same data set at any ``size`` (the same surfaces).
    preview : str or Path, optional
        Also write a labelled montage PNG there (:func:`write_preview`).
    progress : bool or callable
        tqdm bar on stderr (True) or ``progress(message, done, total)`` per image (:mod:`tmdafm_core.progress`).

    Returns
    -------
    manifest : DataFrame
        One row per image: ``path`` (relative to ``out_dir``), ``material``, ``sample_id``, ``split``,
        ``pixel_size_nm``, ``truth_growth_mode`` and the numeric ``truth_*`` columns (sample parameters and the
        crop's measured coverage, grain, particle and terrace counts and relative noise amplitude).
    """
    if int(size) != size or size < MIN_SIZE_PX:
        raise ValueError(f"size must be an integer >= {MIN_SIZE_PX} pixels, got {size}")
    if preview is not None:
        _check_preview_path(preview)
    jobs = plan_dataset(n, seed=seed)
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir)
    jobs = iterate(jobs, as_callback(progress, unit="img"), "generating synthetic images")
    rows = [_write_one(job, out_dir, int(size)) for job in jobs]
    manifest = pd.DataFrame(rows)
    manifest.to_csv(out_dir / MANIFEST_CSV_NAME, index=False)
    if preview is not None:
        write_preview(manifest, preview, root=out_dir)
    return manifest


# --- learnability ------------------------------------------------------------------------------------------------

def descriptor_separability(features: pd.DataFrame, *, folds: int = 5, seed: int = 0, trees: int = 200) -> dict:
    """How well the physical descriptors tell the materials apart: a sample-grouped cross-validated random forest.

    A fast proxy of whether a CNN can learn the classes of a data set (the synthetic demo must be learnable, not
    trivially separable). Every image is predicted once, by a forest that saw no image of its sample.

    Parameters
    ----------
    features : DataFrame
        A descriptor table (:func:`tmdafm_core.features.compute_table`) with ``material`` and ``sample_id``.
    folds : int
        Group folds (>= 2; at most the number of samples).
    seed : int
        Seed of the forests.
    trees : int
        Trees per forest.

    Returns
    -------
    dict
        ``f1_macro`` and ``accuracy`` (0..1), ``classes`` (tuple, label-space order) and ``confusion_percent``
        (rows = true class, each row sums to 100).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.model_selection import GroupKFold

    from ..features import FEATURE_COLUMNS
    from .labels import LabelSpace

    missing = [c for c in (*FEATURE_COLUMNS, "material", "sample_id") if c not in features.columns]
    if missing:
        raise ValueError(f"feature table lacks column(s) {missing}; build it with tmdafm_core.features.compute_table")
    n_samples = features["sample_id"].nunique()
    if int(folds) != folds or not 2 <= folds <= n_samples:
        raise ValueError(f"folds must be an integer from 2 to the number of samples ({n_samples}), got {folds}")
    classes = LabelSpace.from_materials(features["material"]).classes
    values = np.nan_to_num(features[list(FEATURE_COLUMNS)].to_numpy(dtype=float))
    true = features["material"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    predicted = np.empty_like(true)
    for train, test in GroupKFold(n_splits=int(folds)).split(values, true, groups=features["sample_id"]):
        forest = RandomForestClassifier(n_estimators=trees, class_weight="balanced", random_state=seed, n_jobs=1)
        predicted[test] = forest.fit(values[train], true[train]).predict(values[test])
    confusion = confusion_matrix(true, predicted, labels=range(len(classes))).astype(float)
    confusion = 100.0 * confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)
    return {"f1_macro": float(f1_score(true, predicted, average="macro")),
            "accuracy": float(accuracy_score(true, predicted)), "classes": tuple(classes),
            "confusion_percent": confusion}


# --- preview -----------------------------------------------------------------------------------------------------

def _check_preview_path(png_path) -> Path:
    png_path = Path(png_path)
    if png_path.suffix.lower() != ".png":
        raise ValueError(f"{png_path}: the preview is a PNG; give a file name ending in .png")
    return png_path


def write_preview(manifest: pd.DataFrame, png_path, *, root=None, per_class: int = 6, tile: int = 160) -> Path:
    """Write a labelled montage: one row per material, up to ``per_class`` images from different samples.

    Images are shown as the models see them (:func:`~tmdafm_core.data.load_image`, min-max scaled) in an AFM
    colour scale.
    """
    from PIL import Image, ImageDraw, ImageFont

    from .images import load_image

    png_path = _check_preview_path(png_path)
    root = Path(root if root is not None else manifest.attrs.get("root", "."))
    materials = list(dict.fromkeys(manifest["material"]))
    label_width, gap = 110, 4
    canvas = Image.new("RGB", (label_width + per_class * (tile + gap), len(materials) * (tile + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    for row, material in enumerate(materials):
        rows = manifest[manifest["material"] == material]
        picks = rows.drop_duplicates("sample_id")
        if len(picks) < per_class:
            picks = pd.concat([picks, rows.drop(picks.index)]).head(per_class)
        picks = picks.iloc[np.linspace(0, len(picks) - 1, min(per_class, len(picks))).round().astype(int)]
        top = row * (tile + gap)
        draw.text((8, top + tile // 2 - 10), material, fill="black", font=font)
        for col, path in enumerate(picks["path"]):
            image, _ = load_image(root / path)
            thumb = Image.fromarray(afm_colours(image)).resize((tile, tile), Image.Resampling.LANCZOS)
            canvas.paste(thumb, (label_width + col * (tile + gap), top))
    png_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(png_path)
    return png_path
