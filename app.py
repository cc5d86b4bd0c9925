"""tmdafm in the browser: ``python app.py [--cache CACHE] [--host 127.0.0.1] [--port 8050] [--profile demo]``.

Builds the Dash app over an artifact store (``--cache``, else ``$TMDAFM_CACHE``, else ``./cache``) and serves it.
``server`` is the Flask app for WSGI servers (``gunicorn app:server``; the store then comes from ``$TMDAFM_CACHE``).
Pages live in ``pages/``; they ask ``tmdafm_core`` for tables and figures and never compute features themselves.
An empty or partial store is filled with the synthetic demo when a page is first opened: a callback starts the
build in its own process (:func:`tmdafm_core.build.start_build`; a lock keeps a second tab from starting a second
build), the data set and thumbnails first so the overview appears within seconds, and a banner on every page shows
the whole build's progress until the store is complete (``pages/_build.py``). A restarted app resumes the build where
it stopped; the app's exit ends a build it started.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import threading
import time
from pathlib import Path

import dash
from dash import Dash, Input, Output, State, dcc, html

from pages import _build
from tmdafm_core.build import build_command, read_status, start_build, step_states, stop_build
from tmdafm_core.cli import DEFAULT_HOST, DEFAULT_PORT, PROFILE_ENV, add_app_arguments, app_profile
from tmdafm_core.store import default_cache_dir, store_problem

SELECTION_STORE = "selection"  # id of the shared selection (tmdafm_core.selection documents its data)


#: Build processes this server started; ended when it exits (a restart resumes them).
_BUILDS: list = []
_BUILDS_LOCK = threading.Lock()


@atexit.register
def _end_builds() -> None:
    for process in _BUILDS:
        stop_build(process)


def _header() -> html.Header:
    links = [dcc.Link(page["name"], href=page["relative_path"], className="nav-link")
             for page in dash.page_registry.values()]
    return html.Header(className="topbar", children=[
        html.Div(className="brand", children=[
            html.Span("tmdafm", className="brand-name"),
            html.Span("AFM of 2-D TMD films · transfer learning and latent-space analysis", className="brand-sub"),
        ]),
        html.Nav(links, className="nav"),
    ])


def create_app(cache_dir=None) -> Dash:
    """The Dash app over the store at ``cache_dir`` (default: ``$TMDAFM_CACHE`` or ``./cache``)."""
    app = Dash(
        __name__,
        use_pages=True,
        title="tmdafm",
        update_title=None,
        suppress_callback_exceptions=True,
    )
    configure(app, cache_dir)
    app.layout = _layout
    app.server.before_request(_refuse_foreign_host)
    return app


#: Host names a loopback app answers to; ``serve`` adds the one it listens on. Any other Host header is refused, so
#: a web page that rebinds its own domain to 127.0.0.1 (DNS rebinding) cannot drive the app.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8050
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _refuse_foreign_host():
    from flask import current_app, request

    allowed = current_app.config.get("TMDAFM_ALLOWED_HOSTS", LOOPBACK_HOSTS)
    if allowed is not None and _host_name(request.host or "") not in allowed:
        return (f"Host {request.host!r} is not one this app is served as ({', '.join(sorted(allowed))}); "
                "start it with --host NAME to serve it under another name", 403)
    return None


def _layout() -> html.Div:
    return html.Div(className="page", children=[
        _header(),
        *_build_parts(),
        # The one selection shared by every page (lasso in /latent, a confusion-matrix cell, a percentile gallery):
        # {"images": [image, ...], "source": "where it came from"}; kept for the browser tab's session.
        dcc.Store(id=SELECTION_STORE, storage_type="session"),
        html.Main(dash.page_container, className="content"),
    ])


def _build_parts() -> list:
    """The build banner, its poll, and (when the store lacks something and no build runs) the build's trigger."""
    config = dash.get_app().server.config
    cache, profile = config["TMDAFM_CACHE"], config["TMDAFM_PROFILE"]
    status = read_status(cache)
    done, missing = step_states(cache, profile)
    failed_here = status.get("state") == "failed" and status.get("server") == os.getpid()  # retried on restart
    start = bool(missing) and status.get("state") != "running" and not failed_here
    polling = start or status.get("state") == "running"
    children, class_name = _build.banner(status) if polling or failed_here else ([], "build-banner hidden")
    if start:
        children, class_name = _build.starting_banner()
    parts = []
    damaged = store_problem(cache) if not polling else None
    if damaged:  # files changed after they were written: say so on every page rather than serve them silently
        parts.append(html.Div(className="build-banner failed", role="alert", id="store-damaged", children=[
            html.Strong("This store's files are not as they were written: "), damaged,
            ". What the pages show may be damaged or altered; rebuild it with ",
            html.Code(f"tmdafm precompute --out {cache}"), "."]))
    parts += [
        html.Div(children, id="build-banner", className=class_name, role="status"),
        dcc.Location(id="build-url"),
        dcc.Interval(id="build-poll", interval=_build.POLL_MS, disabled=not polling),
        # Steps done when this page was drawn: a step done later reloads a page that waits for it.
        dcc.Store(id="build-seen", data=done),
        dcc.Store(id="build-result"),
        dcc.Store(id="build-started", data=start),
        dcc.Store(id="build-reload"),
    ]
    if start:
        parts.append(dcc.Store(id="build-trigger", data=os.getpid()))
    return parts


@dash.callback(Output("build-result", "data"), Input("build-trigger", "data"), prevent_initial_call=False)
def build_store(_trigger):
    """Start filling the store in its own process (nothing when another tab's build holds the lock)."""
    config = dash.get_app().server.config
    since = time.time()
    try:
        process = start_build(config["TMDAFM_CACHE"], config["TMDAFM_PROFILE"], server=os.getpid())
    except OSError as exc:
        return {"state": "failed", "error": f"{type(exc).__name__}: {exc}",
                "command": build_command(config["TMDAFM_CACHE"], config["TMDAFM_PROFILE"])}
    if process is not None:
        with _BUILDS_LOCK:
            _BUILDS.append(process)
    return {"state": "started", "since": since}


@dash.callback(
    Output("build-banner", "children"), Output("build-banner", "className"), Output("build-poll", "disabled"),
    Output("build-seen", "data"), Output("build-reload", "data"),
    Input("build-poll", "n_intervals"), Input("build-url", "pathname"),
    State("build-result", "data"), State("build-seen", "data"), State("build-started", "data"),
)
def poll_build(_n, pathname, result, seen, started):
    """The banner from the build's status file (a small JSON read); asks a waiting page to reload when one of the
    steps it shows has landed."""
    config = dash.get_app().server.config
    return _build.poll(config["TMDAFM_CACHE"], pathname, result, seen, started)


# A page that still shows a "missing" card reloads when a step it needs has landed; a filled page is left alone.
dash.clientside_callback(
    """function (landed) {
        if (landed && document.querySelector('[id$="-missing"], .preparing')) { window.location.reload(); }
        return window.dash_clientside.no_update;
    }""",
    Output("build-reload", "id"), Input("build-reload", "data"), prevent_initial_call=True)


def configure(app: Dash, cache_dir=None, *, profile=None) -> None:
    """Point ``app`` at a store and a precompute profile (what an empty store is filled with: a name in
    ``pipeline.PROFILES`` or a ``Profile``; default ``$TMDAFM_PROFILE``, else "demo")."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    app.server.config["TMDAFM_CACHE"] = str(Path(cache_dir).resolve())
    app.server.config["TMDAFM_PROFILE"] = profile if profile is not None else os.environ.get(PROFILE_ENV, "demo")


app = create_app()
server = app.server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="Serve the tmdafm app in the browser.")
    add_app_arguments(parser)
    return parser


def serve(cache_dir, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, debug: bool = False,
          profile=None) -> None:
    """Serve the app over the store at ``cache_dir`` until interrupted."""
    # On SIGTERM (kill, systemd, docker stop) exit through Python so atexit ends a build this server started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    configure(app, cache_dir, profile=profile)
    # Listening on every interface is an explicit choice to be reached under any name; otherwise loopback + --host.
    app.server.config["TMDAFM_ALLOWED_HOSTS"] = None if host in ("0.0.0.0", "::", "") else \
        LOOPBACK_HOSTS | {_host_name(host)}
    cache = app.server.config["TMDAFM_CACHE"]
    missing = step_states(cache, app.server.config["TMDAFM_PROFILE"])[1]
    if missing:
        print(f"store {cache} lacks {', '.join(missing)}: the app builds it when a page is opened (progress in "
              "a banner on every page; a restart resumes it)", file=sys.stderr, flush=True)
    print(f"tmdafm app on http://{host}:{port}/  (store: {cache}; Ctrl+C stops it)", file=sys.stderr, flush=True)
    app.run(host=host, port=port, debug=debug)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"app.py: error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    serve(args.cache, host=args.host, port=args.port, debug=args.debug, profile=app_profile(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
