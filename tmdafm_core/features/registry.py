"""Names, units and one-line meanings of the 14 descriptors, in the table's column order (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import descriptors as d


@dataclass(frozen=True)
class Descriptor:
    """One physical descriptor: what it is called, measures and returns."""

    name: str
    function: Callable
    unit: str  # resolution-aware default
    paper_unit: str  # with paper_pixels=True
    meaning: str  # one line, shown as a tooltip


DESCRIPTORS: tuple[Descriptor, ...] = (
    Descriptor("rms_roughness", d.rms_roughness, "height range", "height range",
               "RMS difference between the image and its 3.9 nm Gaussian-smoothed copy: fine-scale roughness"),
    Descriptor("local_variation", d.local_variation, "1", "1",
               "Mean over maximum of the absolute deviation from the smoothed image: how evenly rough the surface is"),
    Descriptor("step_edges", d.step_edges, "µm/µm²", "count",
               "Length of Canny edges per area: substrate steps, domain and grain edges (paper: edge segment count)"),
    Descriptor("defect_density", d.defect_density, "1/µm²", "1/px",
               "Local height maxima (prominence ≥ 5 % of the range) per area: particles, nuclei, point defects"),
    Descriptor("anisotropy", d.anisotropy, "rad·px/height", "rad·px/height",
               "Spread of gradient directions over mean gradient magnitude"),
    Descriptor("dog_blob", d.dog_blob, "1/µm²", "count",
               "Difference-of-Gaussian blobs 20–160 nm in scale per area: islands, nuclei, particles"),
    Descriptor("grain_size", d.grain_size, "nm", "px",
               "Mean equivalent-circle diameter of the regions above Otsu's height threshold"),
    Descriptor("grain_density", d.grain_density, "1/µm²", "1/px",
               "Grains wider than ~40 nm (surviving a 19.5 nm-radius opening) per area"),
    Descriptor("contrast", d.contrast, "grey level²", "grey level²",
               "GLCM contrast: mean squared 8-bit height difference of horizontal neighbours"),
    Descriptor("dissimilarity", d.dissimilarity, "grey level", "grey level",
               "GLCM dissimilarity: mean absolute 8-bit height difference of horizontal neighbours"),
    Descriptor("homogeneity", d.homogeneity, "1", "1",
               "GLCM homogeneity: how often horizontal neighbours have nearly the same height"),
    Descriptor("energy", d.energy, "1", "1",
               "GLCM energy: square root of ASM; high for uniform or periodic textures"),
    Descriptor("correlation", d.correlation, "1", "1",
               "GLCM correlation: linear dependence of neighbouring heights (smooth surfaces near 1)"),
    Descriptor("asm", d.asm, "1", "1",
               "GLCM angular second moment: sum of squared co-occurrence probabilities"),
)

#: The feature table's columns after ``image``, in DESIGN.md order.
FEATURE_COLUMNS: tuple[str, ...] = tuple(descriptor.name for descriptor in DESCRIPTORS)

_BY_NAME = {descriptor.name: descriptor for descriptor in DESCRIPTORS}


def get_descriptor(name: str) -> Descriptor:
    """The :class:`Descriptor` called ``name``."""
    if name not in _BY_NAME:
        raise ValueError(f"unknown descriptor {name!r}; choose one of {', '.join(FEATURE_COLUMNS)}")
    return _BY_NAME[name]
