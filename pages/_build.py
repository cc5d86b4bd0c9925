"""The app's own build of its store, and the banner that shows it on every page; not a page.

An empty or partial store is filled by one background job (``run_build``, started by a Dash background callback in
``app.py``): the data set and thumbnails first, so the overview appears within seconds, then the descriptors, the
MtC/MtL runs, the sequential study and the latent analyses (:func:`tmdafm_core.pipeline.app_steps`). Each step is
recorded in the store as it finishes, so a restarted app resumes where the last one stopped. The job writes how far
it got to ``CACHE/.app-build.json``; every tab polls that small file (``banner``) and reloads a page that waits for
a step once the step lands. A lock file keeps a second tab, or a second app on the same store, from starting a
second build.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from dash import html

from tmdafm_core import pipeline
from tmdafm_core.store import read_json, read_record, write_json

ROOT = Path(__file__).resolve().parent.parent
STATUS_NAME = ".app-build.json"
LOCK_NAME = ".app-build.lock"
POLL_MS = 3000
_WRITE_EVERY_S = 0.5  # progress lines arrive per image: the status file is rewritten at most this often

#: What each step makes, as the banner names it.
STEP_NAMES = {
    "dataset": "demo data set", "thumbnails": "thumbnails", "descriptors": "physical descriptors",
    "pretrain": "AFM-pretrained backbone (training)",
    "mtc": "MtC run (training)", "mtl": "MtL run (training)", "sequential": "sequential study (training)",
    "latent-mtc": "MtC latent space", "latent-mtl": "MtL latent space",
    "latent-sequential": "sequential latent projections",
}

#: What the data set and thumbnail steps report (every later step re-checks them first).
_DEPENDENCY_MESSAGES = ("generating synthetic images", "reading the data set", "data set ready", "making thumbnails",
                        "thumbnails ready")

#: The steps each page shows; a page that shows a "missing" card reloads itself when one of them lands.
PAGE_STEPS = {
    "/": ("dataset", "thumbnails"),
    "/latent": ("descriptors", "latent-mtc", "latent-mtl", "latent-sequential"),
    "/physical": ("descriptors", "latent-mtc", "latent-mtl"),
    "/performance": ("mtc", "mtl"),
    "/sequential": ("sequential", "latent-sequential"),
    "/classify": ("mtc", "mtl", "latent-mtc", "latent-mtl"),
}


# --- the job ----------------------------------------------------------------------------------------------------

def status_path(cache) -> Path:
    return Path(cache) / STATUS_NAME


def plan(cache, profile="demo") -> list[str]:
    """The steps the app builds for this store: those of its own earlier build when there was one (it resumes it),
    :func:`~tmdafm_core.pipeline.app_steps` for a store with no data set yet; for a store prepared elsewhere (by
    ``tmdafm precompute`` or by hand) only the data set and thumbnails the overview needs, the pages telling the
    commands for the rest."""
    status = read_json(status_path(cache))
    if isinstance(status, dict) and status.get("steps"):
        return list(status["steps"])
    if not (Path(cache) / pipeline.DATASET_DIR / pipeline.PREPARED_NAME).is_file():
        return list(pipeline.app_steps(cache, profile=profile))
    return ["dataset", "thumbnails"]


def step_states(cache, profile="demo") -> tuple[list[str], list[str]]:
    """(steps ``store.json`` records as done, steps of :func:`plan` that are not done)."""
    records = read_record(cache)
    done = [step for step in pipeline.STEPS if records.get(step, {}).get("status") == "done"]
    return done, [step for step in plan(cache, profile) if step not in done]


def _try_lock(cache: Path):
    """The build lock's open file when this process got it, else None (another build holds it)."""
    import fcntl

    handle = open(cache / LOCK_NAME, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


class _Reporter:
    """Keeps the status document and writes it (atomically, throttled) as the build reports progress."""

    def __init__(self, cache: Path, steps: list[str], server: int):
        now = time.time()
        self.path = status_path(cache)
        self.cache = cache
        self.lock = threading.Lock()
        self.status = {"state": "running", "pid": os.getpid(), "server": server, "steps": steps,
                       "step": None, "number": 0, "count": len(steps), "message": "starting", "done": 0, "total": 0,
                       "phase_started": now, "step_started": now, "started": now, "updated": now}
        self.written = 0.0
        self.write(force=True)

    def write(self, *, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.written < _WRITE_EVERY_S:
            return
        self.status["updated"] = now
        write_json(self.path, self.status)
        self.written = now

    def on_step(self, step: str, number: int, count: int) -> None:
        with self.lock:
            now = time.time()
            self.status.update(step=step, number=number, count=count, message=STEP_NAMES.get(step, step), done=0,
                               total=0, phase_started=now, step_started=now)
            self.write(force=True)

    def progress(self, message: str, done: int, total: int) -> None:
        with self.lock:
            step = self.status["step"]
            if step not in ("dataset", "thumbnails") and message.startswith(_DEPENDENCY_MESSAGES):
                return  # a later step re-checks the data set it reads: not this step's progress
            if message.startswith(f"{step}: computing"):
                message = STEP_NAMES.get(step, step)  # the banner names the step already
            previous = self.status
            if message != previous["message"] or done < previous["done"] or total != previous["total"]:
                previous["phase_started"] = time.time()  # a new phase: its ETA starts afresh
            previous.update(message=message, done=int(done), total=int(total))
            self.write(force=done >= total)

    def count_folds(self, folds: int, stop: threading.Event) -> None:
        """While a run trains, count its finished folds (the trainer reports no progress of its own)."""
        while not stop.wait(2.0):
            with self.lock:
                step = self.status["step"]
                if step not in ("mtc", "mtl"):
                    continue
                staging = self.cache / pipeline.RUNS_DIR / f".{step}.partial"
                finished = len(list(staging.glob("fold*.pt"))) if staging.is_dir() else 0
                message = f"training fold {min(finished + 1, folds)} of {folds}"
                if (finished, folds, message) != (self.status["done"], self.status["total"], self.status["message"]):
                    if not self.status["message"].startswith("training fold") or finished < self.status["done"]:
                        self.status["phase_started"] = time.time()
                    self.status.update(message=message, done=finished, total=folds)
                    self.write(force=True)


def _folds(cache: Path) -> int:
    prepared = read_json(cache / pipeline.DATASET_DIR / pipeline.PREPARED_NAME) or {}
    return int(prepared.get("settings", {}).get("n_folds") or 0)


def run_build(cache, profile="demo") -> dict:
    """The app's background job: :func:`build` in a fresh interpreter; its final status.

    The job is a fork of the threaded server, where another thread may have held an import lock at the moment of
    the fork (a page importing its modules, the classify page loading torch): importing in the fork can then hang
    for ever. A new interpreter imports cleanly; the job only starts it and waits (a cancelled job's children are
    ended with it).
    """
    argument = profile if isinstance(profile, str) else json.dumps(asdict(profile))
    # The result comes back in a file, not a pipe: worker pools the build leaves behind (joblib keeps its workers
    # for minutes) inherit its stdout, and reading a pipe to its end would wait for them.
    handle, result_path = tempfile.mkstemp(prefix="tmdafm-build-", suffix=".json")
    os.close(handle)
    try:
        finished = subprocess.run([sys.executable, "-m", "pages._build", str(cache), argument, str(os.getppid()),
                                   result_path], cwd=ROOT)
        result = read_json(result_path)
    finally:
        os.unlink(result_path)
    if isinstance(result, dict):
        return result
    return {"state": "failed", "error": f"the build process ended with exit status {finished.returncode}",
            "command": pipeline_command(cache, profile)}


def build(cache, profile="demo", *, server: int | None = None) -> dict:
    """Build what the store lacks; the final status (``server``: the app's process id, kept in the status).

    Returns ``{"state": "busy"}`` at once when another build holds the store's build lock, ``{"state": "done"}``
    after a complete build, and ``{"state": "failed", "error": one line, "command": the command to run by hand}``
    when a step fails (the steps finished so far stay in the store, so the next start resumes from there).
    """
    cache = Path(cache)
    command = pipeline_command(cache, profile)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = _try_lock(cache)
    except OSError as exc:
        return {"state": "failed", "error": _one_line(exc), "command": command}
    if lock is None:
        return {"state": "busy"}
    reporter = None
    stop = threading.Event()
    try:
        steps = plan(cache, profile)
        reporter = _Reporter(cache, list(steps), server if server is not None else os.getppid())

        def on_step(step, number, count):
            reporter.on_step(step, number, count)
            if step in ("mtc", "mtl") and not counter.is_alive() and _folds(cache):
                counter.start()

        counter = threading.Thread(target=lambda: reporter.count_folds(_folds(cache), stop), daemon=True)
        pipeline.complete_store(cache, profile=profile, progress=reporter.progress, steps=steps, on_step=on_step)
        final = {"state": "done", "steps": reporter.status["steps"], "finished": time.time(),
                 "seconds": time.time() - reporter.status["started"]}
    except Exception as exc:  # the job's boundary: every failure becomes the banner's one line
        traceback.print_exc()
        final = {"state": "failed", "error": _one_line(exc), "command": command, "finished": time.time()}
    finally:
        stop.set()
        lock.close()
    try:
        write_json(status_path(cache), {**(reporter.status if reporter else {}), **final, "updated": time.time()})
    except OSError:
        pass  # the callback's own result still carries the status to the page
    return final


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def pipeline_command(cache, profile="demo") -> str:
    """The command that builds the same store by hand, in a terminal (shows tqdm bars and the full traceback)."""
    data, resolved = pipeline.recorded_source(Path(cache), profile)
    return shlex.join(["tmdafm", "precompute", *([data] if data else []), "--out", str(cache),
                       *pipeline.profile_arguments(resolved)])


# --- reading it back (the banner) ------------------------------------------------------------------------------

def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_status(cache, result: dict | None = None) -> dict:
    """What the banner shows: the status file, or the job's own result when it could not write one.

    ``state`` is "running", "done", "failed", "stopped" (the status says running but its process is gone: the
    next page load resumes it) or "idle" (no build has written anything yet).
    """
    status = read_json(status_path(cache))
    if not isinstance(status, dict):
        status = dict(result) if result and result.get("state") == "failed" else {"state": "idle"}
    if status.get("state") == "running" and not _alive(status.get("pid")):
        status = {**status, "state": "stopped"}
    return status


def eta_seconds(status: dict, now: float | None = None) -> float | None:
    """Seconds left in the current phase, from its rate so far; None when it cannot be told yet."""
    done, total = status.get("done", 0), status.get("total", 0)
    if not total or total <= 1 or not 0 < done < total:
        return None
    elapsed = (now if now is not None else time.time()) - status.get("phase_started", 0)
    return elapsed / done * (total - done) if elapsed > 0 else None


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 10 else f"{minutes} min"


def banner_text(status: dict, now: float | None = None) -> str:
    """The banner's line for a running build: step k of n — name (message, done/total, ETA)."""
    now = now if now is not None else time.time()
    step = status.get("step")
    name = STEP_NAMES.get(step, step or "starting")
    details = []
    message = status.get("message") or ""
    if message and message != name:
        details.append(message)
    if status.get("total", 0) > 1 and " of " not in message:
        details.append(f"{status.get('done', 0)}/{status['total']}")
    eta = eta_seconds(status, now)
    if eta is not None:
        details.append(f"about {_duration(eta)} left")
    elif step is not None:
        details.append(f"running for {_duration(now - status.get('step_started', now))}")
    line = f"Building the demo store: step {status.get('number', 0)} of {status.get('count', 0)} — {name}"
    return line + (f" ({', '.join(details)})" if details else "")


def banner(status: dict, pathname: str = "/", now: float | None = None) -> tuple[list, str]:
    """(children, class name) of the app-wide banner for ``status`` on the page at ``pathname``."""
    state = status.get("state")
    if state == "running":
        waiting = [STEP_NAMES[s].removesuffix(" (training)") for s in PAGE_STEPS.get(pathname or "/", ())
                   if s in status.get("steps", []) and status["steps"].index(s) >= status.get("number", 1) - 1]
        children = [html.Span(className="build-spinner"), html.Span(banner_text(status, now), id="build-line")]
        if waiting:
            names = ", ".join(waiting[:-1]) + " and " + waiting[-1] if len(waiting) > 1 else waiting[0]
            children.append(html.Span(f" This page fills in as its {names} land{'s' if len(waiting) == 1 else ''}.",
                                      className="build-page"))
        return children, "build-banner running"
    if state == "failed":
        return [html.Strong("The demo store could not be built: "), html.Span(status.get("error", ""),
                                                                              id="build-line"),
                html.Span([" Build it by hand to see the details: ", html.Code(status.get("command", ""))],
                          className="build-page")], "build-banner failed"
    if state == "stopped":
        return [html.Span("The build of the demo store stopped before it finished (its process ended); reload the "
                          "page to resume it where it stopped.", id="build-line")], "build-banner failed"
    return [], "build-banner hidden"


def finished_steps(status: dict) -> list[str]:
    """The build's steps that are done: those before the current one, or all once the build is done."""
    steps = list(status.get("steps", []))
    return steps if status.get("state") == "done" else steps[:max(status.get("number", 1) - 1, 0)]


def starting_banner() -> tuple[list, str]:
    return ([html.Span(className="build-spinner"),
             html.Span("Building the demo store: starting…", id="build-line")], "build-banner running")


def poll(cache, pathname: str, result: dict | None, seen: list | None, started: bool = False):
    """The banner poll: (banner children, class name, poll disabled, steps seen done, reload token or None).

    ``started``: this tab's page load started a build job, ``result``: what that job returned (None while it
    runs). Until the job has written its status, an older status file (a finished or stopped build) is not news.
    """
    status = read_status(cache, result)
    state = status.get("state")
    seen = list(seen or [])
    if started and result is None and state != "running":
        children, class_name = starting_banner()
        return children, class_name, False, seen, None
    children, class_name = banner(status, pathname)
    landed = [step for step in finished_steps(status) if step not in seen]
    reload = time.time() if set(PAGE_STEPS.get(pathname or "/", ())) & set(landed) else None
    return children, class_name, state != "running", seen + landed, reload


if __name__ == "__main__":  # python -m pages._build CACHE PROFILE SERVER_PID RESULT_JSON  (run_build's interpreter)
    _cache, _profile, _server, _result = sys.argv[1:5]
    _profile = pipeline.Profile.from_dict(json.loads(_profile)) if _profile.startswith("{") else _profile
    write_json(_result, build(_cache, _profile, server=int(_server)))
