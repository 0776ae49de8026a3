"""kohya's folder convention: ``<repeats>_<trigger>[ <class>]`` names a folder of training images.

kohya's sd-scripts reads a DreamBooth-style training folder by its sub-folders' names: the number before the first
``_`` is how often each image is repeated per epoch, the rest is the caption used for images without a caption
file (``library/config_util.py``, ``generate_dreambooth_subsets_config_by_subdirs``). The kohya_ss GUI writes that
rest as ``<instance prompt> <class prompt>`` (``10_darius kawasaki person``): the trigger word, then the class word.
:func:`parse_folder` reads a name the same way (the last word is the class when there are several), and
:func:`folder_name` writes one back, so a folder read and exported again keeps its name.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

__all__ = ["KohyaFolder", "parse_folder", "folder_name", "clean_text", "safe_path_part"]

_FOLDER = re.compile(r"^(\d+)_(.+)$")
#: characters no file or folder name may hold on any common system
_PATH_UNSAFE = re.compile(r'[/\\:*?"<>|]')
_WINDOWS_RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                               *(f"lpt{i}" for i in range(10))})


class KohyaFolder(NamedTuple):
    repeats: int
    trigger: str
    class_token: str | None


def parse_folder(name: str) -> KohyaFolder | None:
    """``"10_darius kawasaki person"`` -> (10, "darius kawasaki", "person"); ``"5_sks"`` -> (5, "sks", None); a name
    without the ``<number>_`` prefix (or with 0 repeats, which sd-scripts skips) -> None."""
    m = _FOLDER.match(name)
    if m is None or int(m.group(1)) < 1:
        return None
    words = m.group(2).split()
    if not words:
        return None
    if len(words) == 1:
        return KohyaFolder(int(m.group(1)), words[0], None)
    return KohyaFolder(int(m.group(1)), " ".join(words[:-1]), words[-1])


def folder_name(repeats: int, trigger: str | None, class_token: str | None) -> str:
    """The folder name sd-scripts reads as ``repeats`` and ``trigger class`` (both made safe for a path; a folder
    with neither is named ``<repeats>_images``)."""
    words = " ".join(safe_path_part(w) for w in (trigger, class_token) if w and safe_path_part(w))
    return f"{max(1, int(repeats))}_{words or 'images'}"


def clean_text(text: str) -> str:
    """One line of printable text: control, format and unassigned characters (NUL, newlines, bidi overrides...)
    become spaces, runs of whitespace one space, no space at either end."""
    out = "".join(" " if unicodedata.category(ch)[0] in "CZ" and ch != " " else ch for ch in str(text))
    return " ".join(out.split())


def safe_path_part(text: str, max_bytes: int = 120) -> str:
    """``text`` as one file or folder name: no separators or characters a file system refuses, no leading dots
    (no ``..``, no hidden files), not a reserved Windows device name, at most ``max_bytes`` of UTF-8; may be ""."""
    part = _PATH_UNSAFE.sub("_", clean_text(text)).strip(" .")
    while len(part.encode("utf-8")) > max_bytes:
        part = part[:-1]
    part = part.rstrip(" .")
    if part.split(".")[0].lower() in _WINDOWS_RESERVED:
        part = "_" + part
    return part
