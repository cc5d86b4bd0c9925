"""The *Examples* sections of the public API run as written (numpydoc doctests)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ("tmdafm_core.progress", "tmdafm_core.layout", "tmdafm_core.features.table",
           "tmdafm_core.features.descriptors", "tmdafm_core.latent", "tmdafm_core.training.inference")


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_every_public_descriptor_has_references_or_an_example():
    from tmdafm_core.features import DESCRIPTORS

    for descriptor in DESCRIPTORS:
        assert "Examples\n    --------\n    >>> " in descriptor.function.__doc__, descriptor.name
