"""map_items / imap_items: local processes, in-process, and a real Dask LocalCluster on loopback."""

from __future__ import annotations

import os
import time

import pytest

from tmdafm_core import parallel
from tmdafm_core.parallel import imap_items, map_items, shared_pools


def _square(x):
    return x * x


def _fail_on_three(x):
    if x == 3:
        raise ValueError("item 3 is bad")
    return x


@pytest.mark.parametrize("jobs", [1, 2])
def test_map_items_keeps_item_order(jobs):
    assert map_items(_square, range(20), jobs=jobs, progress=False, chunk_size=3) == [x * x for x in range(20)]


def test_imap_items_yields_every_index_once():
    results = dict(imap_items(_square, range(10), jobs=2, chunk_size=4))
    assert results == {x: x * x for x in range(10)}


def test_empty_input_gives_empty_list():
    assert map_items(_square, [], jobs=2) == []


def test_worker_errors_reach_the_caller():
    with pytest.raises(ValueError, match="item 3"):
        map_items(_fail_on_three, range(6), jobs=2, progress=False)


def _pid(_):
    return os.getpid()


def test_shared_pools_reuse_their_workers_until_the_block_ends():
    with shared_pools():
        first = {pid for _, pid in imap_items(_pid, range(4), jobs=2, chunk_size=1, start_method="spawn")}
        second = {pid for _, pid in imap_items(_pid, range(4), jobs=2, chunk_size=1, start_method="spawn")}
        with shared_pools():  # nested: the outer block's pools
            third = {pid for _, pid in imap_items(_pid, range(4), jobs=2, chunk_size=1, start_method="spawn")}
        workers = first | second | third
        assert len(workers) <= 2 and os.getpid() not in workers  # the same two processes served all three calls
    assert parallel._shared is None
    fresh = {pid for _, pid in imap_items(_pid, range(4), jobs=2, chunk_size=1, start_method="spawn")}
    assert not fresh & workers  # outside the block every call starts its own processes


def _fail_or_sleep(x):
    if x == 0:
        raise ValueError("item 0 fails")
    time.sleep(60)


@pytest.mark.parametrize("shared", [False, True])
def test_a_failing_item_ends_the_other_workers_at_once(shared):
    import contextlib
    import multiprocessing

    started = time.monotonic()
    with pytest.raises(ValueError, match="item 0 fails"):
        with shared_pools() if shared else contextlib.nullcontext():
            list(imap_items(_fail_or_sleep, [0, 1], jobs=2))
    assert time.monotonic() - started < 30  # not waiting for the sleeping item
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_rejects_bad_job_count():
    with pytest.raises(ValueError, match="jobs"):
        map_items(_square, [1, 2], jobs=0)


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("tmdafm_core.parallel.DASK_CONNECT_TIMEOUT", "1s")
    with pytest.raises(ValueError, match="Dask scheduler"):
        map_items(_square, [1, 2], dask_address="tcp://127.0.0.1:1", progress=False)


def test_dask_local_cluster_on_loopback():
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        assert map_items(_square, range(15), dask_address=cluster.scheduler_address, progress=False,
                         chunk_size=4) == [x * x for x in range(15)]


def test_features_on_a_dask_cluster_match_local(tmp_path):
    from dask.distributed import LocalCluster

    from tmdafm_core.data import read_dataset
    from tmdafm_core.data.synthetic import write_synthetic_dataset
    from tmdafm_core.features import compute_table

    write_synthetic_dataset(tmp_path / "syn", n=10, size=48, seed=1)
    manifest = read_dataset(tmp_path / "syn")
    local = compute_table(manifest, jobs=1, cache=False, progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=None) as cluster:
        remote = compute_table(manifest, dask_address=cluster.scheduler_address, cache=False, progress=False)
    assert remote.equals(local)
