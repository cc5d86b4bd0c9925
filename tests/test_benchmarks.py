"""The benchmarks are not run by the suite (they take minutes to hours), so a renamed or moved name of tmdafm_core
would break them unseen: ``bench_demo_models.py --precision`` failed for sessions on ``pipeline.PRETRAINED_DIR``
after the name moved to ``layout``. Check statically that every tmdafm_core name they use exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def _resolve(module, name: str) -> bool:
    if hasattr(module, name):
        return True
    try:
        importlib.import_module(f"{module.__name__}.{name}")
    except ImportError:
        return False
    return True


def missing_names(source: str) -> list[str]:
    """``module.name`` references to tmdafm_core (``from`` imports, and attributes of imported modules) that do not
    resolve, as ``"line: module.name"``."""
    tree = ast.parse(source)
    modules, missing = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("tmdafm_core"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not _resolve(module, alias.name):
                    missing.append(f"{node.lineno}: {node.module}.{alias.name}")
                    continue
                value = getattr(module, alias.name)  # a submodule is an attribute once _resolve imported it
                if isinstance(value, ModuleType):
                    modules[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tmdafm_core"):
                    name = alias.asname or alias.name.split(".")[0]
                    modules[name] = importlib.import_module(alias.name if alias.asname else name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            if not _resolve(modules[node.value.id], node.attr):
                missing.append(f"{node.lineno}: {modules[node.value.id].__name__}.{node.attr}")
    return missing


def test_a_moved_name_is_found():
    source = "from tmdafm_core import pipeline\nfrom tmdafm_core.layout import NO_SUCH\npipeline.NO_SUCH_EITHER\n"
    assert missing_names(source) == ["2: tmdafm_core.layout.NO_SUCH", "3: tmdafm_core.pipeline.NO_SUCH_EITHER"]
    assert missing_names("from tmdafm_core.layout import BACKBONE_NAME\nfrom tmdafm_core import pipeline\n"
                         "pipeline.load_manifest\n") == []


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_tmdafm_name_a_benchmark_uses_exists(path):
    assert missing_names(path.read_text()) == [], f"{path.name} uses names tmdafm_core no longer has"
