"""Which image files a dataset row may name: input is data, never an order.

A row's image cell can carry a ``path`` instead of bytes (``{"bytes": None, "path": "..."}``, or a plain string
column of paths). Read blindly, a crafted Parquet file or Hub dataset could name ``~/.ssh/id_ed25519`` or any
other local file and have it read, hashed, and (with ``--keep_images``) copied into an output that is then
published. So every read of a path that a row names goes through an :class:`ImageAccess`: the folders (and, for
streamed Hub datasets, the repository URL) that belong to the input itself, plus whatever the user allowed by name
(``--image_root``). Anything else becomes an error row ("image path outside the input's own storage"), never a
read.

What belongs to an input (:func:`charattr_hf.inputs.image_access`):

- an image folder: that folder;
- Parquet / Arrow / CSV / JSON files, or a folder of them, or a ``save_to_disk`` folder: the folder they are in;
- a Hub dataset: its files in the local Hub cache (``datasets--<org>--<name>``) and the ``datasets`` download
  cache (archives extracted there), and, when streamed, ``hf://datasets/<org>/<name>`` (also inside archives:
  ``zip://member::hf://datasets/<org>/<name>/...``);
- the synthetic sample: nothing (its images are bytes).

Paths are compared after resolving ``..`` and symbolic links, so a link inside the input folder that points
elsewhere is outside too. A relative path is read relative to the input's folder (then each ``--image_root``), never
the working directory. In a chained URL every link but the last must be an archive member (``zip://``, ``tar://``,
a compression), and the last, the file itself, must belong to the input; a URL with ``.`` or ``..`` segments is
refused whole. Local files are read only when they are regular files, up to :data:`MAX_FILE_BYTES`. A ``datasets`` object handed to the Python API in memory is the caller's own: its paths
are read wherever they are (:data:`ANY`), unless ``image_root`` is given.

Readers of an annotated output (card pictures, the review app, curation, export) open a row's ``path`` only
through :func:`read_verified`: the bytes must hash to the row's ``sha256``, the hash the annotation run recorded
of the bytes it read. A crafted output cannot name a file whose content it does not already know.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import unquote

__all__ = ["ImageAccess", "ImageAccessError", "ANY", "NOTHING", "MAX_FILE_BYTES", "is_remote", "read_local",
           "read_verified"]

#: The largest file read as one image (a safeguard against a row naming a device or a huge file; PIL's own
#: decompression-bomb limit applies to the pixels after that).
MAX_FILE_BYTES = 1 << 30

#: Protocols that may come before the input's own file in a chained URL (``zip://member::hf://...``): archive
#: members and compressions, which read only from the file after them.
_MEMBER_PROTOCOLS = frozenset({"zip", "tar", "gzip", "bz2", "xz", "lzma", "zstd", "lz4", "snappy", "libarchive",
                               "sevenzip"})


class ImageAccessError(Exception):
    """A row names a file that is not part of the input; the message goes to the row's ``error``."""


def is_remote(path: str) -> bool:
    """A URL (``https://``, ``hf://``) or an archive member (``zip://a.png::https://...``), not a local path."""
    return "://" in path or "::" in path


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _within(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # another drive (Windows), or a relative path against an absolute one
        return False


def _protocol(part: str) -> str:
    return part.split("://", 1)[0].lower() if "://" in part else ""


def _dot_segments(url: str) -> bool:
    """Whether a URL's path has ``.`` or ``..`` segments (percent-encoded too): a server or fsspec may resolve them to
    another repository than the prefix names."""
    rest = unquote(url.split("://", 1)[-1]).replace("\\", "/")
    return any(seg in (".", "..") for seg in rest.split("/"))


@dataclass(frozen=True)
class ImageAccess:
    """Where the image files named by rows may be read from.

    ``local_roots``: folders (resolved); a local path must lie inside one. ``None``: any local path.
    ``remote_prefixes``: URL prefixes (``hf://datasets/org/name``); a URL (or the archive a member is read from)
    must start with one. ``None``: any URL.
    """

    local_roots: tuple[str, ...] | None = ()
    remote_prefixes: tuple[str, ...] | None = ()

    @classmethod
    def within(cls, roots: Iterable[str] = (), prefixes: Iterable[str] = ()) -> "ImageAccess":
        """Local ``roots`` (folders; resolved here) and URL ``prefixes``."""
        return cls(tuple(sorted({_real(os.fspath(r)) for r in roots})), tuple(sorted({p.rstrip("/") for p in prefixes})))

    def plus(self, extra: Iterable[str]) -> "ImageAccess":
        """This access and the folders or URL prefixes in ``extra`` (``--image_root``)."""
        extra = [os.fspath(e) for e in extra if e]
        if not extra:
            return self
        roots = [e for e in extra if not is_remote(e)]
        prefixes = [e.rstrip("/") for e in extra if is_remote(e)]
        local = None if self.local_roots is None else tuple(sorted({*self.local_roots, *(_real(r) for r in roots)}))
        remote = None if self.remote_prefixes is None else tuple(sorted({*self.remote_prefixes, *prefixes}))
        return ImageAccess(local, remote)

    def refusal(self, path: str) -> str | None:
        """Why ``path`` may not be read (a short message for the row's ``error``), or None when it may."""
        try:
            self.resolve(path)
        except ImageAccessError as exc:
            return str(exc)
        return None

    def resolve(self, path: str) -> str:
        """What to open for ``path`` (a relative local path made absolute against the input's folders), or
        :class:`ImageAccessError` saying why it may not be read."""
        if self.local_roots is None and self.remote_prefixes is None:
            return path
        if not is_remote(path):
            return self._local(path, path)
        *members, container = path.split("::")
        if any(_protocol(m) not in _MEMBER_PROTOCOLS for m in members):
            raise ImageAccessError(f"image URL not read: {path} (only archive members may come before the input's "
                                   "own file in a chained URL)")
        if _protocol(container) in ("file", "local"):
            self._local(container.split("://", 1)[1], path)
            return path
        if not is_remote(container):  # an archive member of a local file: the archive must be local and ours
            local = self._local(container, path)
            return "::".join([*members, local])
        if _dot_segments(container):
            raise ImageAccessError(f"image URL with '.' or '..' segments, not read: {path}")
        if self.remote_prefixes is None:
            return path
        for prefix in self.remote_prefixes:
            if container == prefix or container.startswith(prefix + "/") or container.startswith(prefix + "@"):
                return path
        raise ImageAccessError(f"image URL outside the input's own storage, not read: {path} (give --image_root with "
                               "its prefix to allow it)")

    def _local(self, local: str, path: str) -> str:
        if self.local_roots is None:
            return local
        expanded = os.path.expanduser(local)
        if not os.path.isabs(expanded):
            # relative to the input's own folder (then each --image_root), never to the working directory
            for root in self.local_roots:
                real = _real(os.path.join(root, expanded))
                if os.path.exists(real) and any(_within(real, r) for r in self.local_roots):
                    return os.path.join(root, expanded)
            where = ", ".join(self.local_roots) or "no folder (the input has none; give --image_root)"
            raise ImageAccessError(f"relative image path not found in the input's folder or --image_root, not read: "
                                   f"{path} (looked in: {where})")
        real = _real(expanded)
        if any(_within(real, root) for root in self.local_roots):
            return local
        raise ImageAccessError(f"image path outside the input's own folder, not read: {path} (give --image_root to "
                               "allow its folder)")

    def check(self, path: str) -> None:
        """Raise :class:`ImageAccessError` when ``path`` may not be read."""
        why = self.refusal(path)
        if why is not None:
            raise ImageAccessError(why)

    def params(self) -> dict:
        """For fingerprints: what changes which rows are read."""
        return {"local_roots": None if self.local_roots is None else list(self.local_roots),
                "remote_prefixes": None if self.remote_prefixes is None else list(self.remote_prefixes)}

    def describe(self) -> str:
        if self.local_roots is None and self.remote_prefixes is None:
            return "any path"
        parts = list(self.local_roots or ()) + list(self.remote_prefixes or ())
        return ", ".join(parts) if parts else "none (image bytes only)"


#: Every path and URL (a ``datasets`` object given in memory: the caller's own).
ANY = ImageAccess(None, None)
#: No path at all: image bytes only.
NOTHING = ImageAccess((), ())


def read_local(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file at ``path``, at most ``max_bytes`` (:class:`ImageAccessError` for a device, a
    pipe, a folder or a larger file; ``OSError`` as ``open`` raises it). Opened without blocking, so a named pipe
    cannot hold a run."""
    fd = os.open(os.path.expanduser(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageAccessError(f"not a regular file, not read: {path}")
        if info.st_size > max_bytes:
            raise ImageAccessError(f"file too large, not read: {path} ({info.st_size} bytes > {max_bytes})")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while read
        raise ImageAccessError(f"file too large, not read: {path} (over {max_bytes} bytes)")
    return data


def read_verified(path: str | None, sha256: str | None) -> bytes | None:
    """The bytes of the local file ``path`` when they hash to ``sha256`` (the hash an annotation run recorded of
    the bytes it read), else None. For readers of an annotated output: a row cannot make them read a file whose
    content it does not already know, whatever its ``path`` says (nor a device or a pipe: regular files only)."""
    if not path or not sha256 or is_remote(path):
        return None
    try:
        data = read_local(path)
    except (OSError, ImageAccessError):
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None
