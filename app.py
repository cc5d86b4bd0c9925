"""tmdafm in the browser: ``python app.py [--cache CACHE] [--host 127.0.0.1] [--port 8050]``.

Builds the Dash app over an artifact store (``--cache``, else ``$TMDAFM_CACHE``, else ``./cache``) and serves it.
``server`` is the Flask app for WSGI servers (``gunicorn app:server``; the store then comes from ``$TMDAFM_CACHE``).
Pages live in ``pages/``; they ask ``tmdafm_core`` for tables and figures and never compute features themselves.
An empty store is filled with the synthetic demo when the overview page is first opened, with its progress shown
in the browser (a Dash background callback running in its own process).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import dash
import diskcache
from dash import Dash, DiskcacheManager, dcc, html

from tmdafm_core.store import default_cache_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
SELECTION_STORE = "selection"  # id of the shared selection (tmdafm_core.selection documents its data)


def background_jobs_fork() -> bool:
    """Whether background callbacks run in forked children, which inherit this app and its pages.

    Python 3.14 defaults to forkserver on Linux (spawn elsewhere): a fresh child cannot import a page module without
    an app, so on Linux fork is asked for explicitly; where it is not the default, :func:`serve` prepares an empty
    store in the terminal before serving instead.
    """
    import multiprocess

    if sys.platform.startswith("linux") and multiprocess.get_start_method(allow_none=True) is None:
        multiprocess.set_start_method("fork")
    return multiprocess.get_start_method() == "fork"


def _background_manager() -> DiskcacheManager:
    # Job results and progress of background callbacks: private to this server process, removed when it exits.
    # Hence one server process (threads are fine): `gunicorn -w 1 --threads 8 app:server`.
    folder = tempfile.mkdtemp(prefix="tmdafm-dash-jobs-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return DiskcacheManager(diskcache.Cache(folder))


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
    background_jobs_fork()
    app = Dash(
        __name__,
        use_pages=True,
        title="tmdafm",
        update_title=None,
        background_callback_manager=_background_manager(),
        suppress_callback_exceptions=True,
    )
    configure(app, cache_dir)
    app.layout = lambda: html.Div(className="page", children=[
        _header(),
        # The one selection shared by every page (lasso in /latent, a confusion-matrix cell, a percentile gallery):
        # {"images": [image, ...], "source": "where it came from"}; kept for the browser tab's session.
        dcc.Store(id=SELECTION_STORE, storage_type="session"),
        html.Main(dash.page_container, className="content"),
    ])
    return app


def configure(app: Dash, cache_dir=None, *, profile="demo") -> None:
    """Point ``app`` at a store and a precompute profile (what an empty store is filled with)."""
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    app.server.config["TMDAFM_CACHE"] = str(Path(cache_dir).resolve())
    app.server.config["TMDAFM_PROFILE"] = profile


app = create_app()
server = app.server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="Serve the tmdafm app in the browser.")
    parser.add_argument("--cache", type=Path, default=default_cache_dir(),
                        help="artifact store (default: $TMDAFM_CACHE or ./cache; the demo fills an empty one)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    parser.add_argument("--debug", action="store_true", help="Dash dev tools and reloading (for development)")
    return parser


def serve(cache_dir, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, debug: bool = False) -> None:
    """Serve the app over the store at ``cache_dir`` until interrupted."""
    from tmdafm_core.pipeline import complete_store, store_ready

    configure(app, cache_dir)
    cache = app.server.config["TMDAFM_CACHE"]
    if not store_ready(cache):
        if background_jobs_fork():
            print(f"store {cache} is not ready yet: it is prepared when you open the page (progress shown there)",
                  file=sys.stderr, flush=True)
        else:
            print(f"preparing the store {cache} before serving", file=sys.stderr, flush=True)
            complete_store(cache, profile=app.server.config["TMDAFM_PROFILE"], progress=True)
    print(f"tmdafm app on http://{host}:{port}/  (store: {cache}; Ctrl+C stops it)", file=sys.stderr, flush=True)
    app.run(host=host, port=port, debug=debug)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"app.py: error: --port must be in 1..65535, got {args.port}", file=sys.stderr)
        return 2
    serve(args.cache, host=args.host, port=args.port, debug=args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
