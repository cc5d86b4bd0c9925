"""Data sets: image readers, material labels, group-aware splits and the synthetic TMD-AFM generator."""

from .images import (
    DEFAULT_SCAN_SIZE_NM,
    IMAGE_SUFFIXES,
    afm_colours,
    load_image,
    normalize_height,
    probe_image,
    save_tiff,
)
from .labels import PAPER_ELEMENTS, PAPER_MATERIALS, LabelSpace, parse_elements
from .readers import (
    MANIFEST_COLUMNS,
    FeatureTable,
    dataset_summary,
    parse_tmd_afm_name,
    read_class_folders,
    read_dataset,
    read_feature_table,
    read_image_folder,
    read_manifest_csv,
    read_tmd_afm_folder,
)
from .splits import fold_partitions, split_dataset

__all__ = [
    "DEFAULT_SCAN_SIZE_NM", "IMAGE_SUFFIXES", "MANIFEST_COLUMNS", "PAPER_ELEMENTS", "PAPER_MATERIALS",
    "FeatureTable", "LabelSpace", "afm_colours", "dataset_summary", "fold_partitions", "load_image", "normalize_height",
    "parse_elements", "parse_tmd_afm_name", "probe_image", "read_class_folders", "read_dataset",
    "read_feature_table", "read_image_folder", "read_manifest_csv", "read_tmd_afm_folder", "save_tiff",
    "split_dataset",
]
