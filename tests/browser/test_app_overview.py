"""The overview page in a real (headless) browser: a prepared store, and an empty one the app fills itself."""

from __future__ import annotations

import time

import pytest

from tests.stores import MICRO, TINY
from tmdafm_core import pipeline
from tmdafm_core.store import step_done

pytestmark = [pytest.mark.browser,
              # selenium 4.2 calls a urllib3 method deprecated in 2.x on every request
              pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]


@pytest.fixture
def tmdafm_app():
    import app as app_module

    yield app_module
    app_module.configure(app_module.app, None)  # back to the default store for whoever imports it next


def _rows(dash_duo, selector):
    return [row.text for row in dash_duo.find_elements(selector)]


def test_overview_of_a_prepared_store(dash_duo, tmdafm_app, tmp_path):
    cache = tmp_path / "cache"
    pipeline.complete_store(cache, profile=TINY)
    table = pipeline.dataset_overview(cache)["table"]
    tmdafm_app.configure(tmdafm_app.app, cache)

    started = time.perf_counter()
    dash_duo.start_server(tmdafm_app.app)
    dash_duo.wait_for_element("#split-table", timeout=10)
    assert time.perf_counter() - started < 10

    body = _rows(dash_duo, "#split-table tbody tr")
    assert [row.split()[0] for row in body] == ["MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2", "total"]
    total = body[-1].split()
    assert int(total[1]) == table.loc["total", "train_pool"]
    assert int(total[-4]) == 40  # images
    assert "synthetic" in dash_duo.find_element("#synthetic-notice").text.lower()
    assert "demo trains from scratch" in dash_duo.find_element("#demo-cannot").text
    assert "data with known answers" not in dash_duo.find_element("#demo-can").text  # no runs in this store
    # element vectors in MtC order: MoS2 = [Mo, W, S, Se] = 1 0 1 0
    assert _rows(dash_duo, "#class-table tbody tr")[0].split() == ["0", "MoS2", "1", "0", "1", "0"]
    thumbs = dash_duo.find_elements("#examples img")
    assert len(thumbs) >= 5 and all(t.get_attribute("src").startswith("data:image/png;base64,") for t in thumbs)
    store = {row.find_element("css selector", "th").text: row.text
             for row in dash_duo.find_elements("#store-table tbody tr")}
    assert "in store" in store["data set (manifest with splits)"]
    descriptors = store["physical descriptors"]
    assert "missing" in descriptors and "tmdafm precompute" in descriptors and "--steps descriptors" in descriptors
    dash_duo.wait_for_element("#split-chart .main-svg", timeout=10)
    assert dash_duo.get_logs() == []


def _banner_class(dash_duo) -> str:
    return dash_duo.find_element("#build-banner").get_attribute("class")


def test_empty_store_is_built_with_progress_in_the_browser(dash_duo, tmdafm_app, tmp_path):
    cache = tmp_path / "empty"
    tmdafm_app.configure(tmdafm_app.app, cache, profile=MICRO)

    dash_duo.start_server(tmdafm_app.app)
    dash_duo.wait_for_element("#overview-preparing", timeout=10)
    dash_duo.wait_for_contains_text("#build-banner", " of 9 — ", timeout=15)
    assert "running" in _banner_class(dash_duo)
    # The overview fills in (the page reloads itself) once the data set and thumbnails land, before training ends.
    dash_duo.wait_for_element("#split-table", timeout=30)
    assert _rows(dash_duo, "#split-table tbody tr")[-1].split()[-4] == "80"
    if not step_done(cache, "latent-sequential"):
        assert "running" in _banner_class(dash_duo)
    deadline = time.monotonic() + 90
    while "hidden" not in _banner_class(dash_duo):  # the whole build; the banner goes when it is done
        assert time.monotonic() < deadline, dash_duo.find_element("#build-banner").text
        time.sleep(0.5)
    assert all(artifact.present for artifact in pipeline.store_contents(cache))
    dash_duo.wait_for_page(url=f"{dash_duo.server_url}/performance")
    dash_duo.wait_for_element("#scores", timeout=20)
    assert not dash_duo.find_elements("#performance-missing")
    assert "hidden" in _banner_class(dash_duo)
    assert dash_duo.get_logs() == []
