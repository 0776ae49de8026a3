"""Which caption files charattr-hf wrote: a manifest beside them, so they are never read back as a person's tags.

``--write_captions`` (and the kohya export) write ``foo.txt`` beside ``foo.png``, the very files the input reader
takes as the tags a person wrote (kohya's layout). Read back as such, a second annotation of the folder would count
the tagger's own output as human evidence, twice (#17). A marker inside the caption text would be trained on by
every trainer that reads the file, so the record lives beside the captions instead: one ``.charattr-captions.json``
per folder (trainers list images by suffix, and ``datasets``' image folder skips dot files), naming each caption
file written there with the sha256 of the bytes written::

    {"written_by": "charattr-hf", "version": 1,
     "files": {"foo.txt": {"sha256": "...", "person": "the person's own text merged into it, or null"}}}

A caption file whose bytes still hash to its entry is the toolkit's, untouched: the reader leaves it out of the
person's tags (or takes the ``person`` text recorded for it, which is exactly what the person contributed). A file
that was edited since (its hash differs) is the person's now and counts in full; a file with no entry is a
person's. The manifest is data too: it can only make the reader *skip* a file whose content it already knows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

__all__ = ["MANIFEST_NAME", "read_manifest", "record_written", "written_entry", "file_sha256", "toolkit_caption"]

MANIFEST_NAME = ".charattr-captions.json"
_WRITER = "charattr-hf"
_VERSION = 1


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: str | os.PathLike) -> dict[str, dict]:
    """The entries of ``folder``'s manifest by file name (empty when there is none or it cannot be read: then every
    caption file there counts as a person's, which is the safe reading). An entry is ``{"sha256": hex digest of the
    bytes written, "person": the person's own text merged into the file, or None}``."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, Mapping) and data.get("written_by") == _WRITER else None
    if not isinstance(files, Mapping):
        return {}
    out = {}
    for name, entry in files.items():
        if isinstance(name, str) and isinstance(entry, Mapping) and isinstance(entry.get("sha256"), str):
            person = entry.get("person")
            out[name] = {"sha256": entry["sha256"], "person": person if isinstance(person, str) else None}
    return out


def record_written(folder: str | os.PathLike, written: Mapping[str, Mapping]) -> None:
    """Add (or replace) the entries ``written`` (file name -> entry) to ``folder``'s manifest, atomically."""
    if not written:
        return
    folder = Path(folder)
    files = dict(read_manifest(folder))
    files.update(written)
    payload = {"written_by": _WRITER, "version": _VERSION,
               "files": {name: {"sha256": e["sha256"], "person": e.get("person")} for name, e in sorted(files.items())}}
    tmp = folder / f"{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(folder / MANIFEST_NAME)


def written_entry(path: str | os.PathLike, data: bytes,
                  manifests: dict[str, dict[str, dict]] | None = None) -> dict | None:
    """The manifest entry of the caption file ``path`` when charattr-hf wrote it and its bytes ``data`` are
    unchanged since, else None (a person's file). ``manifests`` caches the folders' manifests across calls."""
    path = Path(path)
    folder = str(path.parent)
    if manifests is None:
        entries = read_manifest(folder)
    else:
        if folder not in manifests:
            manifests[folder] = read_manifest(folder)
        entries = manifests[folder]
    entry = entries.get(path.name)
    if entry is None or entry["sha256"] != file_sha256(data):
        return None
    return entry


def toolkit_caption(path: str | os.PathLike, manifests: dict | None = None) -> dict | None:
    """:func:`written_entry` for a file on disk (None when it cannot be read)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return written_entry(path, data, manifests)
