"""The app's own build of its store: one job in its own process, its status file, and the whole build's ETA.

An empty or partial store is filled by :func:`build` (the data set and thumbnails first, so the overview appears
within seconds, then the descriptors, the pretrained backbone, the MtC/MtL runs, the sequential study and the latent
analyses: :func:`tmdafm_core.pipeline.app_steps`). :func:`start_build` runs it in a new interpreter
(``python -m tmdafm_core.build``), so a web server starts it from a plain request handler. Each step is recorded in
the store as it finishes, so a restarted build resumes where the last one stopped.

The job reports through the library's progress callback (:mod:`tmdafm_core.progress`) into ``CACHE/.app-build.json``
(:class:`StatusWriter`); readers (:func:`read_status`, :func:`build_line`) tell from that small file how far the
whole build got and about how long it still takes. A file lock (``filelock``) keeps a second tab, or a second app on
the same store, from starting a second build. Nothing here imports Dash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from .layout import STEPS, StoreLayout
from .store import read_json, read_record, write_json

STATUS_NAME = ".app-build.json"
LOCK_NAME = ".app-build.lock"
LOG_NAME = ".app-build.log"
_WRITE_EVERY_S = 0.5  # progress arrives per image: the status file is rewritten at most this often

#: What each step makes, as the build's status names it.
STEP_NAMES = {
    "dataset": "demo data set", "thumbnails": "thumbnails", "descriptors": "physical descriptors",
    "pretrain": "AFM-pretrained backbone (training)",
    "mtc": "MtC run (training)", "mtl": "MtL run (training)", "sequential": "sequential study (training)",
    "latent-mtc": "MtC latent space", "latent-mtl": "MtL latent space",
    "latent-sequential": "sequential latent projections",
}

#: Each step's share of the demo build, in seconds of the cold demo build on a 2-core CPU (bench_demo_models.py,
#: session 10: MtC / MtL at 128 px for 20 epochs, the sequential study at 64 px); the whole build's ETA scales them by
#: the speed this build has shown so far.
STEP_SECONDS = {"dataset": 15.0, "thumbnails": 4.8, "descriptors": 13.6, "pretrain": 98.8, "mtc": 200.4, "mtl": 169.8,
                "sequential": 292.3, "latent-mtc": 27.5, "latent-mtl": 15.0, "latent-sequential": 26.9}

#: What the data set and thumbnail steps report (every later step re-checks them first).
_DEPENDENCY_MESSAGES = ("generating synthetic images", "reading the data set", "data set ready", "making thumbnails",
                        "thumbnails ready")


def status_path(cache) -> Path:
    return Path(cache) / STATUS_NAME


# --- what to build ----------------------------------------------------------------------------------------------

def plan(cache, profile="demo") -> list[str]:
    """The steps the app builds for this store: those of its own earlier build when there was one (it resumes it),
    :func:`~tmdafm_core.pipeline.app_steps` for a store with no data set yet; for a store prepared elsewhere (by
    ``tmdafm precompute`` or by hand) only the data set and thumbnails the overview needs, the pages telling the
    commands for the rest."""
    status = read_json(status_path(cache))
    if isinstance(status, dict) and status.get("steps"):
        return list(status["steps"])
    if not StoreLayout(cache).prepared.is_file():
        from .pipeline import app_steps

        return list(app_steps(cache, profile=profile))
    return ["dataset", "thumbnails"]


def step_states(cache, profile="demo") -> tuple[list[str], list[str]]:
    """(steps ``store.json`` records as done, steps of :func:`plan` that are not done)."""
    records = read_record(cache)
    done = [step for step in STEPS if records.get(step, {}).get("status") == "done"]
    return done, [step for step in plan(cache, profile) if step not in done]


def build_command(cache, profile="demo") -> str:
    """The command that builds the same store by hand, in a terminal (shows tqdm bars and the full traceback)."""
    return StoreLayout(cache).build_command(profile=profile)


# --- the job ----------------------------------------------------------------------------------------------------

def _build_lock(cache: Path):
    from filelock import FileLock

    return FileLock(cache / LOCK_NAME, timeout=0)


class StatusWriter:
    """The build's progress callback: keeps the status document and writes it (atomically, throttled).

    ``on_step(step, number, count)`` starts a step; calling the writer as ``writer(message, done, total)`` (the
    library's progress convention) reports progress within it.
    """

    def __init__(self, cache: Path, steps: list[str], server: int, done_before: list[str]):
        now = time.time()
        self.path = status_path(cache)
        self.lock = threading.Lock()
        self.status = {"state": "running", "pid": os.getpid(), "server": server, "steps": steps,
                       "done_before": [s for s in done_before if s in steps],
                       "step": None, "number": 0, "count": len(steps), "message": "starting", "done": 0, "total": 0,
                       "phase_started": now, "step_started": now, "started": now, "updated": now,
                       "finished_seconds": {}}
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
            previous = self.status["step"]
            if previous is not None and previous not in self.status["done_before"]:
                self.status["finished_seconds"][previous] = now - self.status["step_started"]
            self.status.update(step=step, number=number, count=count, message=STEP_NAMES.get(step, step), done=0,
                               total=0, phase_started=now, step_started=now)
            self.write(force=True)

    def __call__(self, message: str, done: int, total: int) -> None:
        with self.lock:
            step = self.status["step"]
            if step not in ("dataset", "thumbnails") and message.startswith(_DEPENDENCY_MESSAGES):
                return  # a later step re-checks the data set it reads: not this step's progress
            if message.startswith(f"{step}: computing"):
                message = STEP_NAMES.get(step, step)  # the status names the step already
            current = self.status
            if message != current["message"] or done < current["done"] or total != current["total"]:
                current["phase_started"] = time.time()  # a new phase: its ETA starts afresh
            current.update(message=message, done=int(done), total=int(total))
            self.write(force=done >= total)


def build(cache, profile="demo", *, server: int | None = None) -> dict:
    """Build what the store lacks; the final status (``server``: the app's process id, kept in the status).

    Returns ``{"state": "busy"}`` at once when another build holds the store's build lock, ``{"state": "done"}``
    after a complete build, and ``{"state": "failed", "error": one line, "command": the command to run by hand}``
    when a step fails (the steps finished so far stay in the store, so the next start resumes from there).
    """
    from filelock import Timeout

    from .pipeline import complete_store

    cache = Path(cache)
    command = build_command(cache, profile)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = _build_lock(cache)
        lock.acquire()
    except Timeout:
        return {"state": "busy"}
    except OSError as exc:
        return {"state": "failed", "error": _one_line(exc), "command": command}
    writer = None
    try:
        steps = plan(cache, profile)
        writer = StatusWriter(cache, list(steps), server if server is not None else os.getppid(),
                              step_states(cache, profile)[0])
        complete_store(cache, profile=profile, progress=writer, steps=steps, on_step=writer.on_step)
        final = {"state": "done", "steps": writer.status["steps"], "finished": time.time(),
                 "seconds": time.time() - writer.status["started"]}
    except Exception as exc:  # the job's boundary: every failure becomes the status's one line
        traceback.print_exc()
        final = {"state": "failed", "error": _one_line(exc), "command": command, "finished": time.time()}
    finally:
        lock.release()
    try:
        write_json(status_path(cache), {**(writer.status if writer else {}), **final, "updated": time.time()})
    except OSError:
        pass  # the returned result still carries the status
    return final


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"


def _profile_argument(profile) -> str:
    return profile if isinstance(profile, str) else json.dumps(asdict(profile))


def start_build(cache, profile="demo", *, server: int | None = None) -> subprocess.Popen | None:
    """Start :func:`build` in a new interpreter (its output in ``CACHE/.app-build.log``); None when another build
    holds the store's lock. The caller keeps the process object and ends it with :func:`stop_build`.

    The build leads a process group of its own: its training folds run in worker processes, which a signal to the
    build alone would leave training (up to minutes, competing with the next build for the CPU).
    """
    from filelock import Timeout

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    try:  # a quick look, so a second tab does not start an interpreter only to find the lock taken
        with _build_lock(cache):
            pass
    except Timeout:
        return None
    log = open(cache / LOG_NAME, "ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "tmdafm_core.build", str(cache), _profile_argument(profile),
                                 str(server if server is not None else os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def stop_build(process: subprocess.Popen) -> None:
    """End a build :func:`start_build` started, with every worker process it started (SIGTERM to its group)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:  # the build and its workers have all ended
        pass


def run_build(cache, profile="demo") -> dict:
    """:func:`build` in a new interpreter, waited for; its final status (for scripts and tests)."""
    process = start_build(cache, profile)
    if process is None:
        return {"state": "busy"}
    try:
        process.wait()
    except KeyboardInterrupt:  # the build runs in its own session: Ctrl-C here does not reach it
        stop_build(process)
        raise
    status = read_json(status_path(cache))
    if isinstance(status, dict) and status.get("state") in ("done", "failed"):
        return status
    return {"state": "failed", "error": f"the build process ended with exit status {process.returncode}",
            "command": build_command(cache, profile)}


# --- reading it back --------------------------------------------------------------------------------------------

def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def read_status(cache, result: dict | None = None) -> dict:
    """The build's status: the status file, or a job's own result when it could not write one.

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


def _typical_seconds(step: str) -> float:
    return STEP_SECONDS.get(step, 10.0)


def _current(status: dict) -> int:
    """Position in ``status["steps"]`` of the step being built (``number`` counts from 1)."""
    return max(int(status.get("number", 1)) - 1, 0)


def build_fraction(status: dict) -> float:
    """Share of the whole build done (0..1), each step weighted by its typical time (:data:`STEP_SECONDS`)."""
    steps = status.get("steps") or []
    weights = [_typical_seconds(step) for step in steps]
    if not weights:
        return 0.0
    if status.get("state") == "done":
        return 1.0
    current = _current(status)
    done = sum(weights[:current])
    if current < len(weights) and status.get("total"):
        done += weights[current] * min(status.get("done", 0) / status["total"], 1.0)
    return done / sum(weights)


def build_eta_seconds(status: dict, now: float | None = None) -> float | None:
    """Seconds the whole build still takes: the steps left at their typical times, scaled by this build's speed
    so far (steps it found done count as done); None until a step has finished here."""
    finished = status.get("finished_seconds") or {}
    if not finished or status.get("state") != "running":
        return None
    speed = sum(finished.values()) / sum(_typical_seconds(step) for step in finished)
    now = now if now is not None else time.time()
    steps = status.get("steps") or []
    current = _current(status)
    left = sum(_typical_seconds(step) for step in steps[current + 1:]) * speed
    if current < len(steps):
        step_time = _typical_seconds(steps[current]) * speed
        left += max(step_time - (now - status.get("step_started", now)), eta_seconds(status, now) or 0.0)
    return left


def duration_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 10 else f"{minutes} min"


def build_line(status: dict, now: float | None = None) -> str:
    """One line for a running build: the whole build's share done and time left, then step k of n — name
    (message, done/total, the step's own ETA)."""
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
        details.append(f"about {duration_text(eta)} left")
    elif step is not None:
        details.append(f"running for {duration_text(now - status.get('step_started', now))}")
    whole = f"{build_fraction(status):.0%} done"
    total_eta = build_eta_seconds(status, now)
    if total_eta is not None:
        whole += f", about {duration_text(total_eta)} to go"
    line = f"Building the demo store ({whole}): step {status.get('number', 0)} of {status.get('count', 0)} — {name}"
    return line + (f" ({', '.join(details)})" if details else "")


def finished_steps(status: dict) -> list[str]:
    """The build's steps that are done: those before the current one, or all once the build is done."""
    steps = list(status.get("steps", []))
    return steps if status.get("state") == "done" else steps[:_current(status)]


def pending_steps(status: dict, wanted) -> list[str]:
    """Those of ``wanted`` that a running build has still to make (the current step included)."""
    steps = list(status.get("steps", []))
    return [s for s in wanted if s in steps and steps.index(s) >= _current(status)]


if __name__ == "__main__":  # python -m tmdafm_core.build CACHE PROFILE SERVER_PID  (start_build's interpreter)
    from .profiles import Profile

    _cache, _profile, _server = sys.argv[1:4]
    _profile = Profile.from_dict(json.loads(_profile)) if _profile.startswith("{") else _profile
    sys.exit(0 if build(_cache, _profile, server=int(_server))["state"] in ("done", "busy") else 1)
