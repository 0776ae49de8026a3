"""A content-addressed cache of model outputs: images already seen are not recomputed.

Keys are the sha256 of the image bytes; a *namespace* is the fingerprint of the stage that produced the
values (model id and revision, schema, preprocessing), so a changed model or schema never reads stale
values. Storage is SQLite (standard library, safe for concurrent readers, one file per writer so that
processes never contend for a write lock): ``<root>/<namespace>/<writer>.sqlite``. Readers look through
every writer's file of the namespace, so work done by any rank, in any earlier run, is reused.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["FeatureCache", "default_cache_dir"]

logger = logging.getLogger(__name__)

_SCHEMA = "CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


def default_cache_dir() -> Path:
    """``$CHARATTR_CACHE``, else ``$HF_HOME/charattr_hf`` (``~/.cache/huggingface/charattr_hf``)."""
    if os.environ.get("CHARATTR_CACHE"):
        return Path(os.environ["CHARATTR_CACHE"]).expanduser()
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface"
    )
    return Path(hf_home) / "charattr_hf"


class FeatureCache:
    """sha256 -> bytes, for one namespace. Cheap to pickle: connections open lazily per process."""

    def __init__(self, root: str | os.PathLike, namespace: str, writer: str = "main"):
        self.root = Path(root)
        self.namespace = namespace
        self.writer = writer
        self._local = threading.local()

    @property
    def directory(self) -> Path:
        return self.root / "features" / self.namespace

    def __getstate__(self):
        return {"root": self.root, "namespace": self.namespace, "writer": self.writer}

    def __setstate__(self, state):
        self.__init__(state["root"], state["namespace"], state["writer"])

    # -- connections -------------------------------------------------------------------------
    def _writer_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "writer", None)
        if conn is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.directory / f"{self.writer}.sqlite", timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            conn.commit()
            self._local.writer = conn
        return conn

    def _reader_conns(self) -> list[sqlite3.Connection]:
        readers: dict = getattr(self._local, "readers", None) or {}
        self._local.readers = readers
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("*.sqlite")):
                if path.stem == self.writer or path in readers:
                    continue
                try:
                    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
                    conn.execute("SELECT 1 FROM features LIMIT 1")
                    readers[path] = conn
                except sqlite3.Error:
                    continue  # not initialised yet by its writer; try again next time
        return [self._writer_conn(), *readers.values()]

    # -- API ---------------------------------------------------------------------------------
    # The cache is an accelerator, never a point of failure: a disk that is full, read-only or locked makes
    # lookups miss and writes no-ops, with one warning, and the run goes on computing.
    def _warn(self, what: str, exc: Exception) -> None:
        if not getattr(self._local, "warned", False):
            logger.warning("feature cache %s failed (%s: %s); continuing without it", what, type(exc).__name__, exc)
            self._local.warned = True

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        try:
            return self._get_many(keys)
        except (sqlite3.Error, OSError) as exc:
            self._warn("read", exc)
            return {}

    def put_many(self, items: Mapping[str, bytes]) -> None:
        try:
            self._put_many(items)
        except (sqlite3.Error, OSError) as exc:
            self._warn("write", exc)

    def _get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(k for k in keys if k))
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        for conn in self._reader_conns():
            missing = [k for k in wanted if k not in found]
            if not missing:
                break
            for start in range(0, len(missing), 500):
                part = missing[start : start + 500]
                marks = ",".join("?" * len(part))
                try:
                    rows = conn.execute(f"SELECT key, value FROM features WHERE key IN ({marks})", part).fetchall()
                except sqlite3.Error:
                    rows = []
                found.update((k, bytes(v)) for k, v in rows)
        return found

    def _put_many(self, items: Mapping[str, bytes]) -> None:
        if not items:
            return
        conn = self._writer_conn()
        with conn:
            conn.executemany(
                "INSERT OR REPLACE INTO features (key, value) VALUES (?, ?)",
                [(k, sqlite3.Binary(v)) for k, v in items.items() if k],
            )

    def __len__(self) -> int:
        keys: set[str] = set()
        for conn in self._reader_conns():
            keys.update(k for (k,) in conn.execute("SELECT key FROM features"))
        return len(keys)

    def close(self) -> None:
        for conn in [getattr(self._local, "writer", None), *(getattr(self._local, "readers", None) or {}).values()]:
            if conn is not None:
                conn.close()
        self._local = threading.local()
