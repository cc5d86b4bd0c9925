"""The *Examples* sections of the public API run as written (numpydoc doctests)."""

from __future__ import annotations

import doctest
import importlib
import tempfile

import pytest

MODULES = ("tmdafm_core.progress", "tmdafm_core.layout", "tmdafm_core.features.table",
           "tmdafm_core.features.descriptors", "tmdafm_core.latent", "tmdafm_core.training.inference")


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name, tmp_path, monkeypatch):
    # An example that trains a run leaves ~250 MB of checkpoints behind unless it cleans up after itself.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
    left = [p.name for p in tmp_path.iterdir() if not p.name.startswith("torchinductor")]  # torch's own cache
    assert not left, f"an example left {left} in the temporary folder"


def test_every_public_descriptor_has_references_or_an_example():
    from tmdafm_core.features import DESCRIPTORS

    for descriptor in DESCRIPTORS:
        assert "Examples\n    --------\n    >>> " in descriptor.function.__doc__, descriptor.name
