"""Small profiles and stores the tests share (plain and browser tests alike)."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd

from tmdafm_core import latent, pipeline, training
from tmdafm_core.embeddings import fit_projection, run_embeddings
from tmdafm_core.features import FEATURE_COLUMNS

#: The tiny profile with the one-volume sweep (the 8-image cut adds runs, not code paths) and PCA only (UMAP's first
#: fit compiles for ~15 s; tests/test_latent.py covers it): the whole store that ``tiny_store`` (conftest) builds once
#: for the pipeline and reproduce tests.
STORE_PROFILE = dataclasses.replace(pipeline.PROFILES["tiny"], volumes=("full",), umap_dims=())

#: A data set and thumbnails for the overview (three folds so that every class has a test sample).
TINY = pipeline.Profile("tiny", n=40, size=32, n_folds=3)
#: The whole demo precompute at its smallest (two classes in the sequential study, PCA only): ~17 s on 2 cores. Its
#: folds train in the build's own process: spawning fold workers costs ~5 s a step, and the tests that are about
#: fold workers ask for them (``fold_jobs=2``).
MICRO = pipeline.Profile("tiny", n=80, size=32, n_folds=2, epochs=1, image_size=32, order=("MoS2", "WS2"),
                         volumes=("full",), sequential_task="mtc", umap_dims=(), n_boot=20, fold_jobs=1)

#: The data set of ``build_classify_store``.
CLASSIFY_PROFILE = pipeline.Profile("tiny", n=80, size=32, n_folds=2)


def link_copy(source, target):
    """A copy of a store that a test may change: every store file is replaced (never rewritten in place), so hard
    links keep the copies independent."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def build_classify_store(cache):
    """A store with the demo data set, a 1-epoch MtC run, its latent outputs (PCA only) and a descriptor table.

    The run sees 64 px inputs: a 2 x 2 last feature map, so its activation maps are not flat."""
    pipeline.complete_store(cache, profile=CLASSIFY_PROFILE)
    manifest = pipeline.load_manifest(cache)
    training.cross_validate(manifest, cache / "runs" / "mtc", weights="none", folds=2, epochs=1, image_size=64,
                            presplit=True, batch_size=16)
    embeddings = run_embeddings(cache / "runs" / "mtc", manifest)
    projection = fit_projection(embeddings)
    rng = np.random.default_rng(0)
    features = pd.DataFrame(rng.random((len(manifest), len(FEATURE_COLUMNS))), columns=list(FEATURE_COLUMNS))
    features.insert(0, "image", manifest["image"])
    features.to_csv(cache / "features.csv", index=False)
    tables = latent.analyse(embeddings, features, projection=projection, n_boot=0)
    latent.write_latent_outputs(cache / "latent" / "mtc", tables, projection=projection)
    return cache
