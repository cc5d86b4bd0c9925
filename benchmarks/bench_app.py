"""App speed: demo store preparation (cold vs warm) and server start to first rendered page.

    python benchmarks/bench_app.py [--repeat 3] [--port 8090]

Cold = the synthetic demo data set (profile "demo") generated, read, split and thumbnailed in an empty store;
warm = the same call on the filled store (what every later start does). Server start to first page = launching
``python app.py`` on the warm store until headless chromium shows the overview's Table 1 (needs chromium and
chromedriver; skipped otherwise). The straightforward comparison is the cold path a store-less app would take.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _timing import timed  # noqa: E402

from tmdafm_core import pipeline  # noqa: E402


def first_page_seconds(cache: Path, port: int) -> tuple[float, float]:
    """(seconds to the first HTTP 200 on "/", seconds to Table 1 rendered in chromium), both from process launch."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options)  # started first: its own start-up is not the app's
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--cache", str(cache), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.perf_counter() - start > 60:
                    raise RuntimeError("the app did not start") from None
                time.sleep(0.05)
        http = time.perf_counter() - start
        browser.get(url)
        while not browser.find_elements(By.ID, "split-table"):
            if time.perf_counter() - start > 60:
                raise RuntimeError("the overview did not render")
            time.sleep(0.05)
        return http, time.perf_counter() - start
    finally:
        browser.quit()
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tmdafm-bench-") as tmp:
        cache = Path(tmp) / "cache"
        dataset = timed(lambda: pipeline.prepare_dataset(cache, profile="demo"))[0]
        thumbs = timed(lambda: pipeline.prepare_thumbnails(cache))[0]
        warm = statistics.median(timed(lambda: pipeline.complete_store(cache))[0] for _ in range(args.repeat))
        rows = [("demo data set, cold (generate 1026 x 128 px, read, split)", dataset),
                ("thumbnails, cold (1026 x 96 px PNG)", thumbs),
                ("store preparation, cold total", dataset + thumbs),
                ("store preparation, warm (skip check)", warm)]
        if shutil.which("chromium") and shutil.which("chromedriver"):
            starts = [first_page_seconds(cache, args.port + i) for i in range(args.repeat)]
            rows += [("server start to HTTP 200 on / (median)", statistics.median(s[0] for s in starts)),
                     ("server start to overview rendered (median)", statistics.median(s[1] for s in starts))]
        else:
            print("chromium/chromedriver not found: first-page timing skipped")
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  seconds")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.2f}")
    print(f"warm start vs cold preparation: {(dataset + thumbs) / rows[-1][1]:.0f}x faster to a usable page")


if __name__ == "__main__":
    main()
