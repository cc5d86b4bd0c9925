"""/latent and /classify in a real (headless) browser: no console errors, a hover thumbnail with no server call,
an uploaded TIFF classified while a bad file gets its message."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile
from selenium.common.exceptions import TimeoutException

from tests.test_scans import tilted_film, write_gwy

pytestmark = [pytest.mark.browser,
              pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning")]

_SERVER_CALLS = ("return performance.getEntriesByType('resource')"
                 ".filter(e => e.name.includes('_dash-update-component')).length")


@pytest.fixture
def store(classify_store):
    return classify_store


@pytest.fixture
def tmdafm_app():
    import app as app_module

    yield app_module
    app_module.configure(app_module.app, None)


def _severe(dash_duo):
    return [entry for entry in dash_duo.get_logs() if entry.get("level") == "SEVERE"]


def test_latent_hover_shows_a_thumbnail_without_a_server_call(dash_duo, tmdafm_app, store):
    tmdafm_app.configure(tmdafm_app.app, store)
    dash_duo.start_server(tmdafm_app.app)
    dash_duo.wait_for_page(url=f"{dash_duo.server_url}/latent")
    dash_duo.wait_for_element("#latent-graph .main-svg", timeout=20)
    time.sleep(1.0)  # let the page's initial callbacks finish
    before = dash_duo.driver.execute_script(_SERVER_CALLS)
    # Synthetic mouse events do not reach WebGL hover in headless chromium; plotly's hover entry point, given a
    # mouse-like event over the drag layer at the pixel of point 3, runs the same path and emits plotly_hover.
    dash_duo.driver.execute_script(
        "const gd = document.querySelector('#latent-graph .js-plotly-plot');"
        "const drag = gd.querySelector('.nsewdrag'), box = drag.getBoundingClientRect();"
        "const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;"
        "Plotly.Fx.hover(gd, {target: drag, clientX: box.left + xa.l2p(gd._fullData[0].x[3]),"
        "                     clientY: box.top + ya.l2p(gd._fullData[0].y[3])}, 'xy');")
    dash_duo.wait_for_contains_text("#hover-meta", "material:", timeout=5)
    source = dash_duo.find_element("#hover-image").get_attribute("src")
    assert source.startswith("data:image/png;base64,")
    time.sleep(0.5)
    assert dash_duo.driver.execute_script(_SERVER_CALLS) == before  # the hover card is filled client side
    assert _severe(dash_duo) == []


def test_classify_an_uploaded_tiff(dash_duo, tmdafm_app, store, tmp_path):
    good = tmp_path / "sample_upload.tif"
    tifffile.imwrite(good, (np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16))
    bad = tmp_path / "not_an_image.tif"
    bad.write_bytes(b"plain text pretending to be a TIFF")
    flat = tmp_path / "flat_scan.tif"
    yy, xx = np.mgrid[:64, :64]
    tifffile.imwrite(flat, (0.3 * xx + 0.1 * yy).astype(np.float32))
    raw = write_gwy(tmp_path / "raw_scan.gwy", tilted_film(200), side_m=2e-6)  # an instrument file, 2 µm
    tmdafm_app.configure(tmdafm_app.app, store)
    dash_duo.start_server(tmdafm_app.app)
    dash_duo.wait_for_page(url=f"{dash_duo.server_url}/classify")
    upload = dash_duo.wait_for_element("#classify-upload input[type=file]", timeout=10)
    upload.send_keys(f"{good}\n{bad}\n{flat}\n{raw}")
    dash_duo.wait_for_element(".predicted-material", timeout=60)
    material = dash_duo.find_element(".predicted-material").text
    assert material in ("MoS2", "WS2", "WSe2", "MoSe2", "Mo-WSe2")
    assert "not a TIFF, PNG or JPEG" in dash_duo.find_element(".file-message").text
    badge = dash_duo.find_element("#result-2 .unfamiliar-badge")  # the flat scan: unlike the training images
    assert badge.text == "unlike the training images: this prediction is unreliable" and badge.is_displayed()
    # dcc.Graph mounts a placeholder until plotly's bundle has loaded, then its own node: read the style once the
    # chart is drawn, and retry a read that meets the swap (a stale handle).
    dash_duo.wait_for_element("#result-2 .probabilities .main-svg", timeout=20)
    dash_duo.wait_for_style_to_equal("#result-2 .probabilities", "filter", "grayscale(1)", timeout=10)
    try:  # the raw file: levelled, central 1 µm (read through AFMReader, the slowest of the four)
        caption = dash_duo.wait_for_element("#result-3 .scan-caption", timeout=30).text
    except TimeoutException:
        pytest.fail("no result card for the raw scan; the page shows: "
                    + dash_duo.find_element("#classify-results").text.replace("\n", " | ")[-1500:])
    assert caption.startswith("gwyddion file, channel Height, scan 2 × 2 µm; levelled (default)")
    assert dash_duo.find_element("#result-3 .scan-overview").get_attribute("src").startswith("data:image/png")
    dash_duo.wait_for_element("#classify-scatter .main-svg", timeout=10)
    assert "sample_upload.tif" in dash_duo.find_element("#results-table").text
    assert _severe(dash_duo) == []


def test_an_upload_over_the_size_limit_is_refused_with_a_message(dash_duo, tmdafm_app, store, tmp_path):
    from tmdafm_core import classify

    big = tmp_path / "forty_megabytes.tif"
    with open(big, "wb") as handle:
        handle.truncate(classify.MAX_FILE_BYTES + 8 * 2**20)
    tmdafm_app.configure(tmdafm_app.app, store)
    dash_duo.start_server(tmdafm_app.app)
    dash_duo.wait_for_page(url=f"{dash_duo.server_url}/classify")
    upload = dash_duo.wait_for_element("#classify-upload input[type=file]", timeout=10)
    upload.send_keys(str(big))
    dash_duo.wait_for_contains_text("#classify-upload-refused", "forty_megabytes.tif: 40.0 MiB is over the 32.0 MiB",
                                    timeout=10)
    assert _severe(dash_duo) == []
