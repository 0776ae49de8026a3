"""The feature cache in Redis, shared by every machine of a run (``--cache_url redis://host:port/db``).

Same keys and namespaces as the embedded SQLite cache (:class:`charattr_hf.cache.FeatureCache`): a value is
stored under ``charattr:<namespace>:<sha256 of the image bytes>``, so a changed model, schema or preprocessing
never reads stale values, and ranks on any machine reuse each other's work. Reads and writes are batched: one
pipelined round trip of ``MGET`` / ``SET`` per batch of keys (plain keys rather than one hash per namespace, so
that a Redis Cluster spreads them over its nodes).

A cache is an accelerator, never a point of failure: when the server is down, slow (socket timeouts, 5 s by
default) or refuses a command, the failure is logged once, and this process goes on without the cache (reads
miss, writes are dropped) and tries the server again a minute later, instead of paying a timeout on every
batch.

Timeouts and other connection options can be given in the URL, e.g.
``redis://cache.internal:6379/0?socket_timeout=2&socket_connect_timeout=1`` (see ``redis.from_url``).
Label embeddings (one small file per model and schema) stay in the local cache folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping
from urllib.parse import urlsplit

from .errors import UserError

__all__ = ["RedisFeatureCache", "open_feature_cache", "check_cache_url", "KEY_PREFIX"]

logger = logging.getLogger(__name__)

KEY_PREFIX = "charattr"
_SCHEMES = ("redis", "rediss", "unix")
_BATCH = 500
_DEFAULT_TIMEOUTS = {"socket_timeout": 5.0, "socket_connect_timeout": 3.0}
RETRY_AFTER_S = 60.0


def check_cache_url(url: str) -> None:
    """Raise :class:`UserError` for a URL this cache cannot use (checked before any work starts)."""
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES:
        raise UserError(
            f"--cache_url {url!r}: expected redis://host:port/db (or rediss://, unix://); "
            "leave it empty to use the local SQLite cache"
        )
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "--cache_url needs the redis client: pip install 'charattr-hf[redis]' (or pip install redis)"
        ) from exc
    from redis.connection import parse_url

    try:
        parse_url(url)
    except ValueError as exc:
        raise UserError(f"--cache_url {url!r}: {exc}") from exc


def _redact(url: str) -> str:
    """The URL without a password, for log lines."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:***@" if parts.username else "***@"
        return parts._replace(netloc=user + netloc).geturl()
    return url


class RedisFeatureCache:
    """sha256 -> bytes for one namespace, in Redis. Cheap to pickle: the client connects lazily per process.

    The interface is that of :class:`~charattr_hf.cache.FeatureCache`: ``get_many``, ``put_many``,
    ``namespace``, ``directory`` (a local folder, for the label embeddings file), ``len()`` and ``close``.
    """

    def __init__(self, url: str, namespace: str, local_root: str | os.PathLike, writer: str = "main", ttl: int | None = None):
        self.url = url
        self.namespace = namespace
        self.local_root = Path(local_root)
        self.writer = writer
        self.ttl = ttl
        self._local = threading.local()
        self._state = {"off_until": 0.0, "warned": False}

    @property
    def directory(self) -> Path:
        return self.local_root / "features" / self.namespace

    @property
    def disabled(self) -> bool:
        """True while a recent failure keeps this process from using the cache."""
        return time.monotonic() < self._state["off_until"]

    def __getstate__(self):
        return {"url": self.url, "namespace": self.namespace, "local_root": self.local_root,
                "writer": self.writer, "ttl": self.ttl}

    def __setstate__(self, state):
        self.__init__(state["url"], state["namespace"], state["local_root"], state["writer"], state["ttl"])

    def key(self, sha256: str) -> str:
        return f"{KEY_PREFIX}:{self.namespace}:{sha256}"

    # -- connection ----------------------------------------------------------------------------
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import redis
            from redis.connection import parse_url

            given = parse_url(self.url)
            options = {k: v for k, v in _DEFAULT_TIMEOUTS.items() if k not in given}
            client = redis.Redis.from_url(self.url, **options)
            self._local.client = client
        return client

    def _fail(self, what: str, exc: Exception) -> None:
        self._state["off_until"] = time.monotonic() + RETRY_AFTER_S
        self._local.client = None
        if not self._state["warned"]:
            self._state["warned"] = True
            logger.warning(
                "feature cache at %s: %s failed (%s: %s); continuing without the cache (retrying every %.0f s, "
                "without further warnings)", _redact(self.url), what, type(exc).__name__, exc, RETRY_AFTER_S,
            )

    # -- API -----------------------------------------------------------------------------------
    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(k for k in keys if k))
        if not wanted or self.disabled:
            return {}
        import redis

        try:
            pipe = self._client().pipeline(transaction=False)
            for start in range(0, len(wanted), _BATCH):
                pipe.mget([self.key(k) for k in wanted[start : start + _BATCH]])
            values = [v for part in pipe.execute() for v in part]
        except (redis.RedisError, OSError) as exc:
            self._fail("read", exc)
            return {}
        return {k: bytes(v) for k, v in zip(wanted, values) if v is not None}

    def put_many(self, items: Mapping[str, bytes]) -> None:
        items = {k: v for k, v in items.items() if k}
        if not items or self.disabled:
            return
        import redis

        try:
            pipe = self._client().pipeline(transaction=False)
            for k, v in items.items():
                pipe.set(self.key(k), v, ex=self.ttl)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            self._fail("write", exc)

    def __len__(self) -> int:
        client = self._client()
        return sum(1 for _ in client.scan_iter(match=f"{KEY_PREFIX}:{self.namespace}:*", count=1000))

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
        self._local = threading.local()


def open_feature_cache(url: str | None, local_root: str | os.PathLike, namespace: str, writer: str = "main"):
    """The cache for ``namespace``: Redis when ``url`` is given, else the SQLite files under ``local_root``."""
    if url:
        check_cache_url(url)
        return RedisFeatureCache(url, namespace, local_root, writer=writer)
    from .cache import FeatureCache

    return FeatureCache(local_root, namespace, writer=writer)
