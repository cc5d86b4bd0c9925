"""Shared fixtures: small data sets and stores written by the tests themselves."""

from __future__ import annotations

import numpy as np
import pytest

from tmdafm_core.data import PAPER_MATERIALS, save_tiff


def write_tmd_afm_folder(folder, *, materials=PAPER_MATERIALS, samples=4, per_sample=3, size=48, test_samples=1,
                         seed=0):
    """Write a tiny TMD-AFM-layout folder; the first ``test_samples`` samples of each class are held out."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for material in materials:
        for s in range(samples):
            suffix = "_test" if s < test_samples else ""
            for i in range(per_sample):
                image = rng.random((size, size))
                save_tiff(folder / f"{material}_afm_{material}s{s}_{i:02d}{suffix}.tif", image, pixel_size_nm=4.0,
                          dtype=np.uint16)
    return folder


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Train with one torch thread: on the 2-core CI machine, with test processes beside it, one thread is faster
    than two fighting for the cores (session scope so module-scoped training fixtures get it too)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _no_store_in_the_checkout(tmp_path_factory):
    """Point the default store ($TMDAFM_CACHE, else ./cache) at a temporary folder, and check at the end that no
    test wrote a ./cache into the working folder (where README command one would then find a foreign folder)."""
    import os
    from pathlib import Path

    before = Path("cache").exists()
    previous = os.environ.get("TMDAFM_CACHE")
    os.environ["TMDAFM_CACHE"] = str(tmp_path_factory.mktemp("default-store"))
    yield
    if previous is None:
        os.environ.pop("TMDAFM_CACHE", None)
    else:
        os.environ["TMDAFM_CACHE"] = previous
    assert before or not Path("cache").exists(), "a test wrote ./cache into the working folder"


@pytest.fixture
def tmd_afm_folder(tmp_path):
    return write_tmd_afm_folder(tmp_path / "tmd")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory):
    """A whole store of ``STORE_PROFILE``, built in two calls (stopped after the descriptors, then resumed): the
    store, both calls' results and the second call's progress reports. Shared: a test that changes the store works
    on a ``link_copy``."""
    from tmdafm_core import pipeline

    from .stores import STORE_PROFILE

    cache = tmp_path_factory.mktemp("tiny-store") / "cache"
    first = pipeline.precompute(cache, profile=STORE_PROFILE, steps=["descriptors"])
    reports = []
    second = pipeline.precompute(cache, profile=STORE_PROFILE, progress=lambda *args: reports.append(args))
    return cache, first, second, reports


@pytest.fixture(scope="session")
def classify_store(tmp_path_factory):
    """A store to classify against (``build_classify_store``), shared: tests only read it."""
    from .stores import build_classify_store

    return build_classify_store(tmp_path_factory.mktemp("classify-store"))
