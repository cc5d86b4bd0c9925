"""Browser tests run headless in Debian's chromium through dash[testing]'s selenium fixtures (``dash_duo``).

Plain ``python -m pytest`` runs them headless; without chromium and chromedriver they are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = None if CHROMIUM and CHROMEDRIVER else (
    "browser tests need chromium and chromedriver on PATH (Debian: apt-get install chromium chromium-driver); "
    f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}")


def pytest_configure(config):
    # dash's plugin reads this option when it opens the browser; headless is the only mode that works in CI.
    config.option.headless = True
    if CHROMIUM and "DASH_TEST_CHROMEPATH" not in os.environ:
        os.environ["DASH_TEST_CHROMEPATH"] = CHROMIUM


def pytest_collection_modifyitems(config, items):
    if MISSING is None:
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=MISSING))
