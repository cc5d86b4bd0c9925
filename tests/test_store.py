"""The artifact store's primitives: atomic writes, the step record, file checks, and readers during writes."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading

import numpy as np
import pandas as pd
import pytest

from tmdafm_core import store


def test_write_atomic_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "table.csv"
    store.write_atomic(path, lambda tmp: tmp.write_text("a\n1\n"))

    def crash(tmp):
        tmp.write_text("a\n")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        store.write_atomic(path, crash)
    assert path.read_text() == "a\n1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]  # no temporary file left behind


def test_step_record_round_trip_and_unreadable_record(tmp_path):
    assert store.read_record(tmp_path) == {}
    store.update_step(tmp_path, "descriptors", {"status": "running", "key": "k"})
    assert not store.step_done(tmp_path, "descriptors")
    store.update_step(tmp_path, "descriptors", {"status": "done", "key": "k"})
    store.update_step(tmp_path, "mtc", {"status": "done", "key": "m"})
    assert store.step_done(tmp_path, "descriptors") and set(store.read_record(tmp_path)) == {"descriptors", "mtc"}
    store.update_step(tmp_path, "mtc", None)
    assert set(store.read_record(tmp_path)) == {"descriptors"}
    (tmp_path / store.RECORD_NAME).write_text('{"format": 1, "steps": {"descr')  # truncated
    assert store.read_record(tmp_path) == {}


def _write_files(folder):
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"x": list(range(50))}))
    pd.DataFrame({"image": ["a", "b"], "v": [1.0, 2.0]}).to_csv(folder / "t.csv", index=False)
    pd.DataFrame({"v": np.arange(10)}).to_parquet(folder / "t.parquet")
    return sorted(folder.iterdir())


def test_check_files_finds_missing_resized_and_altered_files(tmp_path):
    paths = _write_files(tmp_path / "s")
    entries = store.file_entries(tmp_path, paths)
    assert store.check_files(tmp_path, entries) is None
    (tmp_path / "s" / "a.json").write_text(json.dumps({"x": list(range(49)) + [0]}).ljust(
        len(json.dumps({"x": list(range(50))}))))  # same size, other content
    assert "content changed" in store.check_files(tmp_path, entries)
    (tmp_path / "s" / "t.csv").write_text("image,v\na,1")
    entries.pop("s/a.json")
    assert "bytes" in store.check_files(tmp_path, entries)
    (tmp_path / "s" / "t.csv").unlink()
    assert "missing" in store.check_files(tmp_path, entries)


@pytest.mark.parametrize("name, content, problem", [
    ("x.json", b'{"a": [1, 2', "unreadable"),
    ("x.csv", b"image,v\na,1\nb,", "middle of a row"),
    ("x.parquet", b"PAR1 truncated", "unreadable"),
    ("fold0.pt", b"PK\x03\x04 truncated checkpoint", "unreadable"),
    ("x.png", b"GIF89a", "not a PNG"),
])
def test_check_file_rejects_truncated_files_of_each_type(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    assert problem in store.check_file(path)


def test_big_files_are_checked_by_content_and_old_records_by_structure(tmp_path):
    import torch

    path = tmp_path / "fold0.pt"
    torch.save({"model": torch.zeros(100)}, path)
    entries = store.file_entries(tmp_path, [path])
    assert entries["fold0.pt"][1] is not None and store.check_files(tmp_path, entries) is None
    data = path.read_bytes()
    path.write_bytes(data[:-40] + b"\0" * 40)  # same size, central directory destroyed
    assert "content changed" in store.check_files(tmp_path, entries)
    legacy = {"fold0.pt": [len(data), None]}  # a record from before every file had a digest
    assert "unreadable" in store.check_files(tmp_path, legacy)


def _writer(folder: str, rounds: int) -> None:
    for version in range(rounds):
        table = pd.DataFrame({"image": [f"img{i}" for i in range(3000)], "version": version})
        store.write_atomic(os.path.join(folder, "table.csv"), lambda tmp, t=table: t.to_csv(tmp, index=False))
        store.update_step(folder, "descriptors", {"status": "done", "version": version,
                                                  "padding": "x" * 20000})


def _reader(folder: str, rounds: int, queue) -> None:
    seen = set()
    try:
        for _ in range(rounds):
            table = pd.read_csv(os.path.join(folder, "table.csv"))
            assert len(table) == 3000 and table["version"].nunique() == 1, "torn table"
            record = store.read_record(folder)
            assert record["descriptors"]["status"] == "done", "torn record"
            seen.add(int(table["version"].iloc[0]))
        queue.put(("ok", len(seen)))
    except Exception as exc:  # reported to the test process
        queue.put(("error", repr(exc)))


def test_two_reader_processes_never_see_a_half_written_file(tmp_path):
    _writer(str(tmp_path), 1)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    readers = [context.Process(target=_reader, args=(str(tmp_path), 150, queue)) for _ in range(2)]
    for reader in readers:
        reader.start()
    _writer(str(tmp_path), 60)
    outcomes = [queue.get(timeout=120) for _ in readers]
    for reader in readers:
        reader.join(timeout=30)
    assert all(status == "ok" for status, _ in outcomes), outcomes


def test_concurrent_record_updates_lose_nothing(tmp_path):
    def update(step):
        for i in range(20):
            store.update_step(tmp_path, step, {"status": "done", "i": i})

    threads = [threading.Thread(target=update, args=(f"step{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = store.read_record(tmp_path)
    assert {name: entry["i"] for name, entry in record.items()} == {f"step{k}": 19 for k in range(4)}
