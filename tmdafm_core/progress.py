"""One progress convention for the library: a callback ``progress(message, done, total)``.

Long functions (the data set writer, the descriptor table, cross-validation, the precompute steps) take
``progress``: None (silent), a callable called as ``progress(message, done, total)`` whenever a unit of work is
done, or True (tqdm bars on stderr: :class:`TqdmProgress`, what the command line passes). The app passes a
callable that writes its build status file, so nothing has to watch the disk to know how far a job got.

Examples
--------
>>> seen = []
>>> for item in iterate([1, 2, 3], lambda *args: seen.append(args), "counting"):
...     pass
>>> seen
[('counting', 0, 3), ('counting', 1, 3), ('counting', 2, 3), ('counting', 3, 3)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

#: ``progress(message, done, total)``.
ProgressCallback = Callable[[str, int, int], None]


class TqdmProgress:
    """A progress callback drawing a tqdm bar on stderr (the command line's progress): one bar per message, the
    previous bar closed when the message changes (phases follow one another)."""

    def __init__(self, unit: str = "it"):
        self.unit = unit
        self._message = None
        self._bar = None

    def __call__(self, message: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if message != self._message:
            self.close()
            self._message = message
            # initial=done: the rate (and so the ETA) counts only work done in this session, not resumed work.
            self._bar = tqdm(total=total, initial=done, desc=message, unit=self.unit, dynamic_ncols=True)
        self._bar.total = total
        self._bar.update(done - self._bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._message = None


def as_callback(progress, *, unit: str = "it") -> ProgressCallback | None:
    """The callback for ``progress`` (None/False, True or a callable), or None for silence."""
    if progress is True:
        return TqdmProgress(unit)
    if callable(progress):
        return progress
    if progress in (None, False):
        return None
    raise ValueError(f"progress must be None, True or a callable(message, done, total), got {progress!r}")


def report(progress, message: str, done: int, total: int) -> None:
    """Call ``progress`` (already a callback, or None) with one report."""
    if progress is not None:
        progress(message, int(done), int(total))


def iterate(items: Iterable, progress, message: str, *, total: int | None = None, every: int = 1,
            start: int = 0) -> Iterator:
    """Yield ``items``, reporting ``message`` before the first and after every ``every``-th and the last.

    ``progress`` as in :func:`as_callback`; ``start`` counts items done before this call (a resumed job).
    """
    callback = as_callback(progress)
    items = list(items) if total is None else items
    total = start + (len(items) if total is None else total)
    done = start
    report(callback, message, done, total)
    for item in items:
        yield item
        done += 1
        if done % every == 0 or done == total:
            report(callback, message, done, total)
