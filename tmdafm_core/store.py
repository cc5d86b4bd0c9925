"""The artifact store under ``cache/``: computed results kept on disk, keyed by what they were computed from.

Two layers:

* a memo, :class:`Store` (``diskcache`` under ``CACHE/diskcache``, safe to share between processes) for small
  per-item results such as each image's descriptors. Keys come from :func:`make_key` over everything a result
  depends on (content hashes from :func:`file_digest`, parameters, code versions), so a changed input or parameter
  never returns a stale value;
* the step record ``CACHE/store.json`` (:func:`read_record`, :func:`update_step`): for each pipeline step its status,
  its key (a hash of its settings and of the outputs of the steps it reads), the settings themselves, the inputs,
  every file it wrote with its size, content digest and modification time, its run time and when it finished.
  :func:`check_files` re-checks those files (a file whose size or modification time changed is hashed again, so a
  truncated or altered file is found before it is served, even one altered without changing its size).

Every file is written atomically (:func:`write_atomic`: a temporary file in the same folder, then ``os.replace``),
so a reader sees the old file or the new one, never half of one, and a crash leaves no half-written file behind
under its real name. :func:`exclusive` is an inter-process lock (released by the OS when its holder dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = "cache"
CACHE_ENV = "TMDAFM_CACHE"
RECORD_NAME = "store.json"
_MEMO_FOLDER = "diskcache"
_RECORD_FORMAT = 1


def default_cache_dir() -> Path:
    """``$TMDAFM_CACHE`` when set, else ``./cache``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)


def file_digest(path) -> str:
    """BLAKE2b hex digest of a file's bytes (its content, whatever its name or time stamp)."""
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_key(namespace: str, *parts) -> str:
    """A stable string key from a namespace and JSON-serialisable parts (floats by their repr)."""
    return namespace + ":" + hashlib.blake2b(json.dumps(parts, sort_keys=True, default=repr).encode(),
                                             digest_size=20).hexdigest()


# --- atomic files and locks -------------------------------------------------------------------------------------

def write_atomic(path, write: Callable[[Path], Any]) -> Path:
    """Write through ``write(tmp_path)`` then rename, so readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, document, *, indent: int = 1, sort_keys: bool = True, default=None) -> Path:
    """Write a JSON document atomically (``default``: as :func:`json.dumps`, for values JSON lacks)."""
    text = json.dumps(document, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path) -> dict | None:
    """A JSON document, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def exclusive(cache_dir, name: str):
    """Hold an inter-process lock (released by the OS if the holder dies) so two writers never interleave."""
    from filelock import FileLock

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(cache_dir / f".{name}.lock"):
        yield


# --- the step record --------------------------------------------------------------------------------------------

def read_record(cache_dir) -> dict:
    """The steps recorded in ``CACHE/store.json`` (``{step: record}``); empty when there is none or it is unreadable.

    A step record has ``status`` ("running" or "done"), ``key``, ``settings``, ``inputs`` (the ``output`` of each
    step it read), ``files`` (``{path relative to CACHE: [size, digest or None]}``), ``output`` (what dependent
    steps key on), ``seconds`` and ``finished_at`` (ISO time).
    """
    document = read_json(Path(cache_dir) / RECORD_NAME)
    if not isinstance(document, dict) or not isinstance(document.get("steps"), dict):
        return {}
    return document["steps"]


def update_step(cache_dir, step: str, record: dict | None) -> dict:
    """Set (or with None remove) one step's record in ``store.json``, atomically and under a lock; return all."""
    cache_dir = Path(cache_dir)
    with exclusive(cache_dir, "record"):
        steps = read_record(cache_dir)
        if record is None:
            steps.pop(step, None)
        else:
            steps[step] = record
        write_json(cache_dir / RECORD_NAME, {"format": _RECORD_FORMAT, "steps": steps,
                                             "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return steps


def step_done(cache_dir, step: str) -> bool:
    """Whether ``store.json`` says ``step`` finished (its files are then in place; a running step is not done)."""
    return read_record(cache_dir).get(step, {}).get("status") == "done"


def file_entries(cache_dir, paths) -> dict[str, list]:
    """``{path relative to cache_dir: [size, content digest, modification time in ns]}`` of files."""
    cache_dir = Path(cache_dir).resolve()
    entries = {}
    for path in paths:
        path = Path(path).resolve()
        stat = path.stat()
        entries[path.relative_to(cache_dir).as_posix()] = [stat.st_size, file_digest(path), stat.st_mtime_ns]
    return entries


#: Digests this process computed, by (path, size, modification time, inode): a store copied without its time
#: stamps is hashed once per process, not on every check (the app checks on every page).
_SEEN_DIGESTS: dict[tuple, str] = {}


def _digest_of(path: Path, stat) -> str:
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SEEN_DIGESTS:
        _SEEN_DIGESTS[key] = file_digest(path)
    return _SEEN_DIGESTS[key]


def file_problem(path: Path, entry) -> str | None:
    """How a stored file differs from its record entry (:func:`file_entries`), or None when it is as written.

    The content is hashed again whenever size or modification time differ from the record (writing into a file
    changes its time), so the check stays fast for an untouched store of gigabytes of checkpoints. Records written
    before every file had a digest (``[size, None]``) are checked by size and structure.
    """
    size, digest = entry[0], entry[1]
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    if stat.st_size != size:
        return f"{stat.st_size} bytes, {size} were written"
    if digest is None:
        return check_file(path)
    if len(entry) > 2 and stat.st_mtime_ns == entry[2]:
        return None
    if _digest_of(path, stat) != digest:
        return "content changed since it was written"
    return None


def check_file(path) -> str | None:
    """Why a stored file cannot be served (unparseable for its type), or None when it reads as its type."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".csv":
            import pandas as pd

            pd.read_csv(path, nrows=5)
            with open(path, "rb") as handle:  # every CSV written here ends its last row
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    return "ends in the middle of a row"
        elif suffix == ".parquet":
            import pyarrow.parquet

            pyarrow.parquet.read_metadata(path)
        elif suffix in (".pt", ".npz"):  # torch.save and numpy.savez both write zip archives
            with zipfile.ZipFile(path) as archive:
                if not archive.namelist():
                    return "empty archive"
        elif suffix == ".png":
            if path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                return "not a PNG"
    except Exception as exc:  # each reader fails in its own way on a truncated or foreign file
        return f"unreadable ({type(exc).__name__}: {str(exc)[:120]})"
    return None


def store_problem(cache_dir) -> str | None:
    """The first finished step whose recorded files are no longer as written (``"<step>: <file>: <problem>"``), or
    None. Cheap on an untouched store: files whose size and time stamp match the record are not hashed again."""
    for step, record in read_record(cache_dir).items():
        if record.get("status") == "done":
            problem = check_files(cache_dir, record.get("files", {}))
            if problem:
                return f"{step}: {problem}"
    return None


def check_files(cache_dir, files: dict) -> str | None:
    """The first problem with the files of a step record (missing, other size or content, unreadable), or None."""
    cache_dir = Path(cache_dir)
    for name, entry in files.items():
        problem = file_problem(cache_dir / name, entry)
        if problem:
            return f"{name}: {problem}"
    return None


# --- the memo ---------------------------------------------------------------------------------------------------

class Store:
    """Computed results on disk under ``root``; use as a context manager or call :meth:`close`."""

    def __init__(self, root):
        import diskcache

        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"{self.root}: cache path exists and is not a folder; give a folder for the cache")
        self.root.mkdir(parents=True, exist_ok=True)
        self._memo = diskcache.Cache(str(self.root / _MEMO_FOLDER))

    def get(self, key: str, default=None):
        return self._memo.get(key, default)

    def get_many(self, keys) -> dict[str, Any]:
        """``{key: value}`` for the keys that are stored."""
        found = {}
        missing = object()
        for key in keys:
            value = self._memo.get(key, missing)
            if value is not missing:
                found[key] = value
        return found

    def put(self, key: str, value) -> None:
        self._memo.set(key, value)

    def __contains__(self, key: str) -> bool:
        return key in self._memo

    def memo(self, key: str, compute: Callable[[], Any]):
        """The stored value of ``key``, computing and storing it first when absent."""
        missing = object()
        value = self._memo.get(key, missing)
        if value is missing:
            value = compute()
            self._memo.set(key, value)
        return value

    def close(self) -> None:
        self._memo.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def is_memo_folder(path) -> bool:
    """Whether ``path`` is a store's per-item memo (``diskcache/`` with its database), which the descriptor table
    may have made before the store was claimed (``tmdafm features`` with the default cache)."""
    path = Path(path)
    return path.name == _MEMO_FOLDER and (path / "cache.db").is_file()


def open_store(path=None) -> Store:
    """Open (creating) the store at ``path``, default :func:`default_cache_dir`."""
    return Store(default_cache_dir() if path is None else path)
