"""Physical image descriptors of AFM images (the paper's 14) and the batch engine that tabulates them."""

from .descriptors import (
    MIN_SIZE_PX,
    PAPER_PIXEL_NM,
    anisotropy,
    asm,
    compute_all,
    contrast,
    correlation,
    default_parameters,
    defect_density,
    dissimilarity,
    dog_blob,
    energy,
    grain_density,
    grain_size,
    homogeneity,
    local_variation,
    rms_roughness,
    step_edges,
)
from .registry import DESCRIPTORS, FEATURE_COLUMNS, Descriptor, get_descriptor
from .table import FEATURE_CODE_VERSION, compute_table, scale_to_unit_max

__all__ = [
    "DESCRIPTORS", "FEATURE_CODE_VERSION", "FEATURE_COLUMNS", "MIN_SIZE_PX", "PAPER_PIXEL_NM", "Descriptor",
    "anisotropy", "asm", "compute_all", "compute_table", "contrast", "correlation", "default_parameters",
    "defect_density", "dissimilarity", "dog_blob", "energy", "get_descriptor", "grain_density", "grain_size",
    "homogeneity", "local_variation", "rms_roughness", "scale_to_unit_max", "step_edges",
]
