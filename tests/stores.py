"""Small profiles the app's tests build whole stores with (plain and browser tests alike)."""

from __future__ import annotations

from tmdafm_core import pipeline

#: A data set and thumbnails for the overview (three folds so that every class has a test sample).
TINY = pipeline.Profile("tiny", n=40, size=32, n_folds=3)
#: The whole demo precompute at its smallest (two classes in the sequential study, PCA only): ~17 s on 2 cores. Its
#: folds train in the build's own process: spawning fold workers costs ~5 s a step, and the tests that are about
#: fold workers ask for them (``fold_jobs=2``).
MICRO = pipeline.Profile("tiny", n=80, size=32, n_folds=2, epochs=1, image_size=32, order=("MoS2", "WS2"),
                         volumes=("full",), sequential_task="mtc", umap_dims=(), n_boot=20, fold_jobs=1)
