"""One map-over-items helper: local worker processes by default, a Dask cluster when given its address.

Nothing here is home-made distribution: local work goes through :class:`concurrent.futures.ProcessPoolExecutor`,
cluster work through :class:`dask.distributed.Client`. Items travel in chunks so that short tasks (one image's
descriptors, a few tens of ms) are not dominated by the per-task overhead.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

#: How long to wait for a Dask scheduler before giving up.
DASK_CONNECT_TIMEOUT = "10s"
_shared: dict | None = None  # (jobs, start method) -> pool, while inside shared_pools()


@contextlib.contextmanager
def shared_pools():
    """Within this block, local worker processes are started once and reused by every :func:`imap_items` call.

    A study of many short runs (the sequential study: 28 runs of 2 folds on the demo) otherwise starts two fresh
    processes per run, each importing torch again (2-3 s). Pools are shut down when the block ends; nested blocks
    share the outermost one's pools.
    """
    global _shared
    if _shared is not None:
        yield
        return
    _shared = {}
    finished = False
    try:
        yield
        finished = True
    finally:
        pools, _shared = _shared, None
        for pool in pools.values():
            _close(pool, finished=finished)


def _close(pool, *, finished: bool) -> None:
    """Shut a pool down: after finished work, once its processes are idle; else (an interrupted, stopped or failing
    caller) at once, terminating them: a fold they train would otherwise keep this process alive for minutes."""
    if finished:
        pool.shutdown(wait=True, cancel_futures=True)
        return
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


@contextlib.contextmanager
def _local_pool(jobs: int, start_method: str | None):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context(start_method) if start_method else None
    if _shared is None:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
        finished = False
        try:
            yield pool
            finished = True
        finally:
            _close(pool, finished=finished)
        return
    key = (jobs, start_method)
    if key not in _shared:
        _shared[key] = ProcessPoolExecutor(max_workers=jobs, mp_context=context)
    try:
        yield _shared[key]
    except BrokenProcessPool:
        _shared.pop(key).shutdown(wait=False, cancel_futures=True)  # a dead worker: the next call starts afresh
        raise


def _run_chunk(func: Callable, chunk: list) -> list:
    return [func(item) for item in chunk]


def _chunks(items: list, size: int) -> list[tuple[int, list]]:
    return [(start, items[start:start + size]) for start in range(0, len(items), size)]


def default_jobs() -> int:
    """Worker processes used when ``jobs`` is not given: all CPU cores."""
    return os.cpu_count() or 1


def imap_items(func: Callable[[Any], Any], items: Iterable, *, jobs: int | None = None,
               dask_address: str | None = None, chunk_size: int | None = None,
               start_method: str | None = None) -> Iterator[tuple[int, Any]]:
    """Apply ``func`` to every item and yield ``(index, result)`` as results finish (any order).

    Callers that must not lose work when interrupted (caches, checkpoints) store each result as it arrives.

    Parameters
    ----------
    func : callable
        A picklable (module-level) function of one item.
    items : iterable
        Picklable items.
    jobs : int, optional
        Local worker processes; default all cores. ``jobs=1`` runs in this process (no pickling).
    dask_address : str, optional
        Scheduler address (e.g. ``tcp://10.0.0.5:8786``); the work then runs on that Dask cluster and ``jobs`` is
        ignored. Workers must be able to import ``tmdafm_core`` and read any paths the items name.
    chunk_size : int, optional
        Items per task; default splits the work into about four tasks per worker, at most 64 items each.
    start_method : {"fork", "spawn", "forkserver"}, optional
        How local workers start (default: the platform's). ``"spawn"`` for work that uses torch: a forked copy of
        a process whose OpenMP threads already ran can hang.
    """
    items = list(items)
    if jobs is not None and (int(jobs) != jobs or jobs < 1):
        raise ValueError(f"jobs must be a positive integer, got {jobs}")
    if not items:
        return
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if dask_address is not None:
        yield from _imap_dask(func, items, dask_address, chunk_size)
        return
    jobs = min(int(jobs or default_jobs()), len(items))
    if jobs == 1:
        for index, item in enumerate(items):
            yield index, func(item)
        return
    size = chunk_size or max(1, min(64, -(-len(items) // (4 * jobs))))
    from concurrent.futures import as_completed

    with _local_pool(jobs, start_method) as pool:
        futures = {pool.submit(_run_chunk, func, chunk): start for start, chunk in _chunks(items, size)}
        try:
            for future in as_completed(futures):
                start = futures[future]
                for offset, result in enumerate(future.result()):
                    yield start + offset, result
        finally:
            for future in futures:
                future.cancel()


def _imap_dask(func, items, address, chunk_size):
    try:
        from dask.distributed import Client, as_completed
    except ImportError as exc:  # pragma: no cover - dask[distributed] is a hard dependency
        raise ValueError(f"--dask needs dask.distributed ({exc}); install dask[distributed]") from None
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except OSError as exc:
        raise ValueError(f"cannot reach the Dask scheduler at {address!r} ({exc}); check the address and that "
                         "the scheduler is running") from None
    try:
        workers = max(1, sum(client.nthreads().values()))
        size = chunk_size or max(1, min(64, -(-len(items) // (4 * workers))))
        chunks = _chunks(items, size)
        futures = client.map(_run_chunk, [func] * len(chunks), [chunk for _, chunk in chunks], pure=False)
        starts = {future.key: start for future, (start, _) in zip(futures, chunks, strict=True)}
        with client.as_current():  # as_completed looks the client up; it is not made the global default
            for future in as_completed(futures):
                start = starts[future.key]
                for offset, result in enumerate(future.result()):
                    yield start + offset, result
    finally:
        client.close()


def map_items(func: Callable[[Any], Any], items: Iterable, *, jobs: int | None = None,
              dask_address: str | None = None, progress: bool | None = None, desc: str = "items",
              chunk_size: int | None = None) -> list:
    """``[func(item) for item in items]`` computed in parallel (see :func:`imap_items`), results in item order.

    Parameters
    ----------
    progress : bool, optional
        Show a tqdm bar on stderr (default: only when there is more than one item).
    desc : str
        Label of the progress bar.
    """
    items = list(items)
    results: list = [None] * len(items)
    stream = imap_items(func, items, jobs=jobs, dask_address=dask_address, chunk_size=chunk_size)
    if progress is None:
        progress = len(items) > 1
    if progress:
        from tqdm import tqdm

        stream = tqdm(stream, total=len(items), desc=desc, unit="item")
    for index, result in stream:
        results[index] = result
    return results
