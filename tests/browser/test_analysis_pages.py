"""The analysis pages in a real (headless) browser: every page opens without console errors, a confusion-matrix
click lists its test images and sets the shared selection, a percentile gallery sets it too, and a figure export
downloads a ZIP."""

from __future__ import annotations

import time
import zipfile

import pytest

from tests.test_pages_analysis import build_analysis_store

pytestmark = [pytest.mark.browser,
              pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]


@pytest.fixture
def analysis_app(tmp_path):
    import app as app_module

    cache = tmp_path / "cache"
    build_analysis_store(cache)
    app_module.configure(app_module.app, cache)
    yield app_module
    app_module.configure(app_module.app, None)


_CLICK_CELL = """
const target = document.querySelector(arguments[0]);
target.scrollIntoView({block: 'center'});
const box = target.getBoundingClientRect();
const x = box.left + box.width * arguments[1], y = box.top + box.height * arguments[2];
for (const type of ['mousemove', 'mousedown', 'mouseup', 'click']) {
    target.dispatchEvent(new MouseEvent(type, {clientX: x, clientY: y, bubbles: true, cancelable: true, view: window,
                                               buttons: type === 'mousedown' ? 1 : 0}));
}
"""


def _open(dash_duo, path: str, selector: str) -> None:
    dash_duo.driver.get(dash_duo.server_url + path)
    dash_duo.wait_for_element(selector, timeout=15)


def _wait_for_file(path: str, start: bytes, timeout: float = 10) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as handle:
                content = handle.read()
            if content.lstrip().startswith(start):
                return content
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"no file starting with {start!r} downloaded to {path}")


def _severe(dash_duo) -> list:
    # Software WebGL in headless chromium logs GPU warnings; only errors count.
    return [entry for entry in dash_duo.get_logs() if "WebGL" not in entry.get("message", "")]


def test_analysis_pages_click_select_and_export(dash_duo, analysis_app):
    dash_duo.start_server(analysis_app.app)
    dash_duo.driver.set_window_size(1400, 1000)

    _open(dash_duo, "/sequential", "#sequential-f1 .main-svg")
    dash_duo.wait_for_element("#stage-panels .main-svg", timeout=10)
    assert "MoS2 → WS2 → WSe2" in dash_duo.find_element("#figure4").text
    assert len(dash_duo.find_elements("#sequential-table .ag-center-cols-container .ag-row")) > 3
    assert _severe(dash_duo) == []

    _open(dash_duo, "/physical", "#pearson-heatmap .main-svg")
    dash_duo.wait_for_element("#descriptor-scatter .main-svg", timeout=10)
    assert len(dash_duo.find_elements("#table5 .ag-center-cols-container .ag-row")) >= 14
    # The grid exports what it shows as CSV in the browser, the units among its columns.
    dash_duo.find_element('[data-grid-export="table5"]').click()
    exported = _wait_for_file(f"{dash_duo.download_path}/tmdafm_table5.csv", b"")
    assert b"most positive" in exported and b"grain density" in exported
    dash_duo.find_element("#gallery-select-high").click()
    dash_duo.wait_for_contains_text("#selection-summary", "selected (grain density ≥ 75th percentile", timeout=10)
    assert len(dash_duo.find_elements("#gallery-high img")) > 0
    assert _severe(dash_duo) == []

    _open(dash_duo, "/performance", "#confusion-mtc .main-svg")
    # The shared selection survives navigation (session storage).
    dash_duo.wait_for_contains_text("#selection-summary", "75th percentile", timeout=10)
    # Top-left cell (true MoS2, predicted MoS2), clicked as plotly.js sees a click: mouse events on its drag layer.
    dash_duo.driver.execute_script(_CLICK_CELL, "#confusion-mtc .nsewdrag", 0.1, 0.1)
    dash_duo.wait_for_contains_text("#cell-gallery", "true MoS2, predicted MoS2", timeout=10)
    assert len(dash_duo.find_elements("#cell-gallery img")) > 0
    dash_duo.wait_for_contains_text("#selection-summary", "MtC confusion cell", timeout=10)

    dash_duo.find_element("#confusion-mtc-svg").click()  # drawn by plotly.js in the browser
    _wait_for_file(f"{dash_duo.download_path}/tmdafm_confusion_mtc.svg", b"<svg")

    dash_duo.find_element("#confusion-mtc-zip").click()
    dash_duo.wait_for_contains_text("#confusion-mtc-export-status", "tmdafm_confusion_mtc.zip", timeout=30)
    target = f"{dash_duo.download_path}/tmdafm_confusion_mtc.zip"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with zipfile.ZipFile(target) as archive:
                names = set(archive.namelist())
            break
        except (OSError, zipfile.BadZipFile):
            time.sleep(0.2)
    else:
        pytest.fail(f"no ZIP downloaded to {target}")
    assert {"tmdafm_confusion_mtc.html", "tmdafm_confusion_mtc_data.csv", "README.txt"} <= names
    assert _severe(dash_duo) == []
