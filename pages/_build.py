"""The build banner on every page, and the calm card a page shows while the build makes what it waits for; not a
page. The build itself (a job in its own process, its status file, the whole build's ETA) is
:mod:`tmdafm_core.build`; every tab polls the status file (``poll``) and reloads a page that waits for a step once
the step lands.
"""

from __future__ import annotations

import time

from dash import html

from tmdafm_core import build
from tmdafm_core.build import read_status

POLL_MS = 3000

#: The steps each page shows; a page that shows a "missing" card reloads itself when one of them lands.
PAGE_STEPS = {
    "/": ("dataset", "thumbnails"),
    "/latent": ("descriptors", "latent-mtc", "latent-mtl", "latent-sequential"),
    "/physical": ("descriptors", "latent-mtc", "latent-mtl"),
    "/performance": ("mtc", "mtl"),
    "/sequential": ("sequential", "latent-sequential"),
    "/classify": ("mtc", "mtl", "latent-mtc", "latent-mtl"),
}


def _names(steps) -> str:
    names = [build.STEP_NAMES[s].removesuffix(" (training)") for s in steps]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def banner(status: dict, pathname: str = "/", now: float | None = None) -> tuple[list, str]:
    """(children, class name) of the app-wide banner for ``status`` on the page at ``pathname``."""
    state = status.get("state")
    if state == "running":
        waiting = build.pending_steps(status, PAGE_STEPS.get(pathname or "/", ()))
        children = [html.Span(className="build-spinner"), html.Span(build.build_line(status, now), id="build-line")]
        if waiting:
            children.append(html.Span(f" This page fills in as its {_names(waiting)} "
                                      f"land{'s' if len(waiting) == 1 else ''}.", className="build-page"))
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


def waiting_card(status: dict, steps, *, title: str, card_id: str, now: float | None = None) -> html.Section | None:
    """The calm card of a page whose ``steps`` a running build is still making (None when no build is making
    them): what it waits for and the whole build's progress, no command to run."""
    waiting = build.pending_steps(status, steps) if status.get("state") == "running" else []
    if not waiting:
        return None
    return html.Section(className="card waiting-card", id=card_id, children=[
        html.H2(title),
        html.P([html.Span(className="build-spinner"),
                f"Being built now: the {_names(waiting)}. This page fills in by itself when "
                f"{'it lands' if len(waiting) == 1 else 'they land'}; nothing to run."]),
        html.P(build.build_line(status, now), className="caption")])


def starting_banner() -> tuple[list, str]:
    return ([html.Span(className="build-spinner"),
             html.Span("Building the demo store: starting…", id="build-line")], "build-banner running")


#: A started build that has written nothing after this long is not waited for any more (the banner says so).
_START_WAIT_S = 60


def poll(cache, pathname: str, result: dict | None, seen: list | None, started: bool = False):
    """The banner poll: (banner children, class name, poll disabled, steps seen done, reload token or None).

    ``started``: this tab's page load asked for a build; ``result``: what starting it returned
    (``{"state": "started", "since": epoch seconds}`` or a failure). Until that build has written its status, an
    older status file (a finished or stopped build) is not news.
    """
    status = read_status(cache, result)
    state = status.get("state")
    seen = list(seen or [])
    since = (result or {}).get("since", time.time()) if started else 0
    if (started and state != "running" and status.get("updated", 0) < since - 1
            and (result or {}).get("state") != "failed" and time.time() - since < _START_WAIT_S):
        children, class_name = starting_banner()
        return children, class_name, False, seen, None
    children, class_name = banner(status, pathname)
    landed = [step for step in build.finished_steps(status) if step not in seen]
    reload = time.time() if set(PAGE_STEPS.get(pathname or "/", ())) & set(landed) else None
    return children, class_name, state != "running", seen + landed, reload
