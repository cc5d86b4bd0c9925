"""The app without a browser: entry points, page layout and the preparation callback called as plain functions."""

from __future__ import annotations

import pytest

from tmdafm_core import pipeline
from tmdafm_core.cli import main as tmdafm

TINY = pipeline.Profile("tiny", n=40, size=32, n_folds=3)


@pytest.fixture
def tmdafm_app():
    import app as app_module

    app_module.app.server.test_client().get("/")  # Dash imports the pages on the first request
    yield app_module
    app_module.configure(app_module.app, None)


def _ids(component) -> set:
    found = set()
    stack = [component]
    while stack:
        node = stack.pop()
        if isinstance(node, (list, tuple)):
            stack.extend(node)
            continue
        if getattr(node, "id", None):
            found.add(node.id)
        children = getattr(node, "children", None)
        if children is not None and not isinstance(children, str):
            stack.append(children)
    return found


def test_page_is_served_with_local_assets_only(tmdafm_app, tmp_path):
    tmdafm_app.configure(tmdafm_app.app, tmp_path / "cache")
    html = tmdafm_app.app.server.test_client().get("/").get_data(as_text=True)
    assert "/assets/app.css" in html and "/_dash-component-suites/" in html
    assert "https://" not in html and "cdn" not in html.lower()
    assert not (tmp_path / "cache").exists()  # serving a page creates nothing; preparation is the callback's job


def test_empty_store_shows_progress_then_the_callback_fills_it(tmdafm_app, tmp_path):
    import pages.overview as overview

    cache = tmp_path / "cache"
    tmdafm_app.configure(tmdafm_app.app, cache, profile=TINY)
    with tmdafm_app.app.server.test_request_context("/"):
        assert {"prepare-progress", "prepare-trigger"} <= _ids(overview.layout())
    updates = []
    body = overview.prepare_store(updates.append, 1)
    assert {"split-table", "store-table", "examples"} <= _ids(body)
    assert updates[0][2].startswith("generating synthetic images") and updates[-1][0] == updates[-1][1] == "40"
    with tmdafm_app.app.server.test_request_context("/"):
        assert "split-table" in _ids(overview.layout())


def test_callback_reports_a_store_it_cannot_build(tmdafm_app, tmp_path):
    import pages.overview as overview

    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    tmdafm_app.configure(tmdafm_app.app, blocked, profile=TINY)
    body = overview.prepare_store(lambda update: None, 1)
    assert "could not be prepared" in str(body)


def test_app_command_rejects_a_bad_port(capsys):
    assert tmdafm(["app", "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
