"""The app without a browser: entry points, page layout and the preparation callback called as plain functions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pages import _build
from tmdafm_core import build, pipeline, store
from tmdafm_core.cli import main as tmdafm

from .processes import group_members, needs_proc
from .stores import MICRO, TINY


@pytest.fixture
def tmdafm_app():
    import app as app_module

    app_module.app.server.test_client().get("/")  # Dash imports the pages on the first request
    yield app_module
    app_module.configure(app_module.app, None)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A store the build job filled from empty with MICRO, its result and every status it wrote on the way."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    statuses = []
    write_json = build.write_json

    def record(path, document):
        statuses.append(dict(document))
        return write_json(path, document)

    build.write_json = record
    try:
        result = build.build(cache, MICRO)
    finally:
        build.write_json = write_json
    return cache, result, [s for s in statuses if s.get("state") == "running"]


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


def test_empty_store_layout_starts_a_build_and_the_overview_waits(tmdafm_app, tmp_path):
    import pages.overview as overview

    cache = tmp_path / "cache"
    tmdafm_app.configure(tmdafm_app.app, cache, profile=TINY)
    with tmdafm_app.app.server.test_request_context("/"):
        assert "overview-preparing" in _ids(overview.layout())
        parts = _ids(tmdafm_app._layout())
    assert {"build-banner", "build-poll", "build-trigger"} <= parts
    assert not cache.exists()  # drawing the page builds nothing; the build-trigger callback does


def test_the_build_job_fills_the_whole_store_and_reports_each_step(built):
    cache, result, statuses = built
    assert result["state"] == "done" and result["steps"] == [s for s in pipeline.STEPS if s != "pretrain"]  # tiny
    assert all(artifact.present for artifact in pipeline.store_contents(cache))
    numbers = [s["number"] for s in statuses]
    assert numbers == sorted(numbers) and set(numbers) == set(range(len(pipeline.STEPS)))  # 0: before
    assert all(s["state"] == "running" and s["count"] == 9 for s in statuses)
    assert any(s["step"] == "dataset" and s["total"] == 80 and 0 < s["done"] for s in statuses)  # images
    assert build.read_status(cache)["state"] == "done"
    assert _build.banner(build.read_status(cache)) == ([], "build-banner hidden")
    # Progress came through the library's callback: the data set's images, then each run's folds one by one.
    assert any(s["step"] == "mtc" and s["message"] == "training folds" and s["done"] == 1 for s in statuses)
    assert {"dataset", "thumbnails", "mtc"} <= set(statuses[-1]["finished_seconds"])
    fractions = [build.build_fraction(s) for s in statuses]
    assert fractions[0] == 0 and 0 < fractions[len(fractions) // 2] < 1 and fractions[-1] > 0.9
    assert build.build_fraction({**statuses[-1], "state": "done"}) == 1


def test_a_restart_after_a_complete_build_starts_nothing(tmdafm_app, built):
    cache, _, _ = built
    tmdafm_app.configure(tmdafm_app.app, cache, profile=MICRO)
    with tmdafm_app.app.server.test_request_context("/"):
        parts = _ids(tmdafm_app._layout())
    assert "build-trigger" not in parts and "build-banner" in parts
    started = time.perf_counter()
    assert build.run_build(cache, MICRO)["state"] == "done"  # every step found done: seconds, no training
    assert time.perf_counter() - started < 20


def test_a_store_changed_after_it_was_written_is_announced_on_every_page(tmdafm_app, built, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(built[0], cache)
    tmdafm_app.configure(tmdafm_app.app, cache, profile=MICRO)
    with tmdafm_app.app.server.test_request_context("/"):
        assert "store-damaged" not in _ids(tmdafm_app._layout())
    features = cache / "features.csv"
    features.write_text(features.read_text().replace("0.", "9.", 1))  # same store, one value altered
    with tmdafm_app.app.server.test_request_context("/"):
        layout = tmdafm_app._layout()
    assert "store-damaged" in _ids(layout)
    assert "descriptors: features.csv: content changed" in json.dumps(layout.to_plotly_json(), default=str)


@needs_proc
def test_stopping_a_build_ends_its_fold_workers_too(tmp_path):
    import dataclasses

    long_folds = dataclasses.replace(MICRO, epochs=200, fold_jobs=2)  # the MtC step's two folds train for a while
    cache = tmp_path / "cache"
    process = build.start_build(cache, long_folds)

    def training() -> bool:  # the MtC step running, with the build and its two fold workers in the group
        return build.read_status(cache).get("step") == "mtc" and len(group_members(process.pid)) >= 3

    deadline = time.monotonic() + 120
    while not training() and time.monotonic() < deadline:
        assert process.poll() is None, (cache / build.LOG_NAME).read_text()[-2000:]
        time.sleep(0.2)
    assert training(), "the fold workers never started"
    build.stop_build(process)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert group_members(process.pid) == []


def test_a_second_build_while_one_holds_the_lock_starts_nothing(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    lock = build._build_lock(cache)
    with lock:
        assert build.start_build(cache, MICRO) is None
        assert build.run_build(cache, MICRO) == {"state": "busy"}
        assert build.build(cache, MICRO) == {"state": "busy"}
        assert not (cache / "store.json").exists()


def test_a_build_that_fails_says_why_and_how_to_build_by_hand(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    result = build.build(blocked, MICRO)
    assert result["state"] == "failed" and "\n" not in result["error"] and "FileExistsError" in result["error"]
    assert result["command"].startswith(f"tmdafm precompute --out {blocked}")
    status = build.read_status(blocked, result)  # no status file can be written there: the result is shown
    children, class_name = _build.banner(status)
    assert class_name == "build-banner failed" and result["command"] in str(children)


def test_banner_line_names_the_step_its_progress_and_an_eta():
    status = {"state": "running", "steps": list(pipeline.STEPS), "step": "thumbnails", "number": 2, "count": 9,
              "message": "making thumbnails", "done": 250, "total": 1000, "phase_started": 100.0,
              "step_started": 90.0, "pid": os.getpid()}
    line = build.build_line(status, now=110.0)  # 250 in 10 s: 750 more take 30 s
    assert line == ("Building the demo store (2% done): step 2 of 9 — thumbnails (making thumbnails, 250/1000, "
                    "about 30 s left)")
    # The data set took twice its typical time here: the steps left are expected at half the typical speed too.
    timed = {**status, "finished_seconds": {"dataset": 2 * build.STEP_SECONDS["dataset"]}}
    expected = 2 * (sum(build.STEP_SECONDS.values()) - build.STEP_SECONDS["dataset"] - build.STEP_SECONDS["thumbnails"])
    assert build.build_eta_seconds(timed, now=110.0) == pytest.approx(expected + 30)
    assert build.build_line(timed, now=110.0).startswith("Building the demo store (2% done, about 28 min to go)")
    opaque = {**status, "step": "mtc", "number": 4, "message": "mtc: computing (not computed yet)", "done": 0,
              "total": 1}
    assert build.build_line(opaque, now=90.0 + 125).endswith("(mtc: computing (not computed yet), running for "
                                                             "2 min 05 s)")
    assert build.eta_seconds(opaque) is None
    children, class_name = _build.banner(opaque, "/performance", now=200.0)
    assert class_name == "build-banner running"
    assert "This page fills in as its MtC run and MtL run land." in str(children)
    assert "fills in" not in str(_build.banner(opaque, "/", now=200.0)[0])  # the overview's steps are done


def test_a_page_waiting_for_a_running_build_says_so_calmly_and_offers_a_command_only_when_idle(tmp_path):
    from pages import _ui

    cache = tmp_path / "cache"
    cache.mkdir()
    running = {"state": "running", "pid": os.getpid(), "steps": list(pipeline.STEPS), "step": "descriptors",
               "number": 3, "count": 10, "message": "descriptors", "done": 200, "total": 1026,
               "phase_started": time.time() - 10, "step_started": time.time() - 10}
    store.write_json(cache / build.STATUS_NAME, running)
    card = _ui.needs_card(cache, ["descriptors", "latent-mtc"], title="needs", what="", card_id="latent-missing")
    text = str(card.to_plotly_json())
    assert card.id == "latent-missing" and "waiting-card" in card.className
    assert "Being built now: the physical descriptors and MtC latent space" in text and "% done" in text
    assert "tmdafm precompute" not in text  # nothing to run while the app builds it
    store.write_json(cache / build.STATUS_NAME, {**running, "state": "done"})
    card = _ui.needs_card(cache, ["descriptors", "latent-mtc"], title="needs", what="", card_id="latent-missing")
    assert "missing-card" in card.className and "tmdafm precompute" in str(card.to_plotly_json())


def test_a_status_whose_process_is_gone_reads_as_stopped(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    store.write_json(tmp_path / build.STATUS_NAME, {"state": "running", "pid": gone.pid, "number": 3})
    assert build.read_status(tmp_path)["state"] == "stopped"
    assert "reload the page to resume" in str(_build.banner(build.read_status(tmp_path))[0])
    assert build.read_status(tmp_path / "none")["state"] == "idle"


def test_poll_reloads_only_a_page_whose_step_landed(tmp_path):
    running = {"state": "running", "pid": os.getpid(), "steps": list(pipeline.STEPS), "step": "mtl", "number": 6,
               "count": 10, "message": "", "done": 0, "total": 0, "phase_started": 0, "step_started": 0}
    store.write_json(tmp_path / build.STATUS_NAME, running)
    *_, disabled, seen, reload = _build.poll(tmp_path, "/performance", None, ["dataset", "thumbnails"])
    assert not disabled and seen == ["dataset", "thumbnails", "descriptors", "pretrain", "mtc"] and reload is not None
    assert _build.poll(tmp_path, "/sequential", None, ["dataset", "thumbnails"])[-1] is None
    assert _build.poll(tmp_path, "/performance", None, seen)[-1] is None  # seen already: no second reload
    # This tab's job has not written yet: an older finished status is not news (no reload, keep polling).
    store.write_json(tmp_path / build.STATUS_NAME, {**running, "state": "done", "updated": 1000.0})
    children, class_name, disabled, seen, reload = _build.poll(tmp_path, "/", None, [], True)
    assert "starting" in str(children) and not disabled and seen == [] and reload is None
    started = {"state": "started", "since": 990.0}  # the build this tab started has written since: news
    assert _build.poll(tmp_path, "/", started, [], True)[1:3] == ("build-banner hidden", True)


def test_app_command_serves_from_any_working_folder(tmp_path):
    """`tmdafm app` started outside the checkout still finds pages/ beside app.py (a real server process)."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = tmp_path / "store"
    process = subprocess.Popen([sys.executable, "-m", "tmdafm_core.cli", "app", "--cache", str(store), "--port",
                                str(port), "--profile", "tiny"], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
    try:
        for _ in range(120):
            try:
                # A static asset: proves app.py, pages/ and assets/ loaded, without a page visit starting a build.
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/app.css", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(process.stdout.read().decode()[-2000:]) from None
                time.sleep(0.5)
        else:
            raise AssertionError("the app did not answer within 60 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_an_installed_wheel_serves_every_page_from_any_folder(tmp_path):
    """`pip install .` (not -e): the wheel carries app.py, pages/ and assets/; `tmdafm app` serves them from it."""
    import socket
    import urllib.request
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, cwd=tmp_path)
    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("tmdafm-*.whl"))) as wheel:
        wheel.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install
    where = subprocess.run([sys.executable, "-c", "import tmdafm_core.cli as c; print(c.__file__); "
                            "print(c.app_script())"], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout.split()
    assert all(Path(path).is_relative_to(site) for path in where)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tmdafm_core.cli", "app", "--cache", str(tmp_path / "store"),
                                "--port", str(port), "--profile", "tiny"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        pages = {}
        for path in ("/assets/app.css", "/", "/latent", "/physical", "/performance", "/sequential", "/classify"):
            for _ in range(120):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                        pages[path] = (response.status, response.read().decode())
                        break
                except OSError:
                    if process.poll() is not None:
                        raise AssertionError(process.stdout.read().decode()[-2000:]) from None
                    time.sleep(0.5)
        assert all(status == 200 for status, _ in pages.values()) and len(pages) == 7
        assert ".build-banner" in pages["/assets/app.css"][1] and "_dash-config" in pages["/latent"][1]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_app_command_rejects_a_bad_port(capsys):
    assert tmdafm(["app", "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err


def test_the_app_answers_only_to_the_hosts_it_is_served_as():
    import app as app_module

    client = app_module.app.server.test_client()
    assert client.get("/", headers={"Host": "127.0.0.1:8050"}).status_code == 200
    assert client.get("/", headers={"Host": "localhost"}).status_code == 200
    refused = client.get("/", headers={"Host": "attacker.example:8050"})
    assert refused.status_code == 403 and b"not one this app is served as" in refused.data
    assert app_module._host_name("[::1]:8050") == "::1"


def test_sigterm_ends_the_build_the_app_started(tmp_path):
    """The build-trigger callback starts the build in its own process; the app's exit (SIGTERM) ends it."""
    import json
    import signal
    import socket
    import urllib.error
    import urllib.request
    from pathlib import Path

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    cache = tmp_path / "store"
    server = subprocess.Popen([sys.executable, str(root / "app.py"), "--cache", str(cache), "--port", str(port)],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "tmdafm app on" not in line and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line and server.poll() is not None:
                break
        assert "tmdafm app on" in line, "the app did not start"
        # What the page's build-trigger store sends when it is drawn: a plain callback request.
        request = {"output": "build-result.data", "outputs": {"id": "build-result", "property": "data"},
                   "inputs": [{"id": "build-trigger", "property": "data", "value": server.pid}], "state": [],
                   "changedPropIds": []}
        call = urllib.request.Request(f"http://127.0.0.1:{port}/_dash-update-component",
                                      data=json.dumps(request).encode(), headers={"Content-Type": "application/json"})
        while True:  # the line above is printed just before the server listens
            try:
                reply = urllib.request.urlopen(call, timeout=60)
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the app does not answer"
                time.sleep(0.2)
        assert json.loads(reply.read())["response"]["build-result"]["data"]["state"] == "started"
        while build.read_status(cache).get("state") != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = build.read_status(cache)["pid"]
        assert pid != server.pid and build._alive(pid)  # the build runs in a process of its own
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    for _ in range(50):
        if build.read_status(cache)["state"] != "running":
            break
        time.sleep(0.2)
    assert build.read_status(cache)["state"] == "stopped"  # ended with the app; the next start resumes it
