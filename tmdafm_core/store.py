"""The artifact store under ``cache/``: computed results kept on disk, keyed by what they were computed from.

For now it is a memo: :func:`open_store` opens a :class:`Store` (a ``diskcache`` database, safe to share between
processes) under the cache folder, ``./cache`` by default or ``$TMDAFM_CACHE``. Keys are built with
:func:`make_key` from everything a result depends on (input content hashes from :func:`file_digest`, parameters,
code versions), so a changed input or parameter never returns a stale value.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = "cache"
CACHE_ENV = "TMDAFM_CACHE"
_MEMO_FOLDER = "memo"


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


def open_store(path=None) -> Store:
    """Open (creating) the store at ``path``, default :func:`default_cache_dir`."""
    return Store(default_cache_dir() if path is None else path)
