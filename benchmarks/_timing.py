"""The one timing helper the benchmark scripts share (run them from the repository root or this folder)."""

from __future__ import annotations

import time


def timed(function, repeat: int = 1):
    """(best wall seconds over ``repeat`` calls, the last call's value) of ``function()``."""
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value
