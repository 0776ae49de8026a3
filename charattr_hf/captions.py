"""Kohya-style caption files from an annotated dataset: one ``<name>.txt`` per image, the tagger's tags joined by
``", "``, so the output feeds LoRA training (kohya's sd-scripts, and most trainers that read ``foo.png`` +
``foo.txt``) directly.

The caption is the tagger's general tags (highest score first) followed by its character tags, as the WD v3 timm
script builds its training caption (github.com/neggles/wdv3-timm). Names come from the row's ``id``: for an image
folder that is the image's path relative to the folder, so ``sub/foo.png`` gets ``<dir>/sub/foo.txt`` (write into
the image folder itself and every image has its caption beside it); other ids are made file-name safe. Existing
files are left alone unless ``overwrite`` (a hand-written caption is worth more than a tagger's); rows without
tagger output (quarantined images, a failed tagger) get no file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

__all__ = ["CaptionReport", "caption_text", "caption_name", "write_captions"]

_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".jxl"})
_UNSAFE = re.compile(r"[^A-Za-z0-9._()\[\]+=@,' -]")


@dataclass
class CaptionReport:
    written: int = 0
    unchanged: int = 0
    skipped_existing: int = 0
    skipped_rows: int = 0


def caption_text(tags: Iterable[str] | None, characters: Iterable[str] | None = None, separator: str = ", ") -> str:
    """The caption of one image: general tags, then character tags, joined by ``separator``."""
    return separator.join([*(tags or ()), *(characters or ())])


def caption_name(row_id: str | None, index: int) -> PurePosixPath:
    """The caption file's path (relative to the output folder) for a row."""
    key = str(row_id) if row_id not in (None, "") else f"{index:08d}"
    parts = [p for p in PurePosixPath(key.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    parts = [_UNSAFE.sub("_", p) for p in parts] or [f"{index:08d}"]
    name = PurePosixPath(*parts)
    if name.suffix.lower() in _IMAGE_SUFFIXES:
        return name.with_suffix(".txt")
    return name.with_name(name.name + ".txt")


def _rows(source: Any, split: str) -> Iterable[Mapping[str, Any]]:
    columns = ["id", "error", "tagger_tags", "tagger_characters"]
    if isinstance(source, (str, Path)):
        import pyarrow.parquet as pq

        files = sorted(Path(source, "data").glob(f"{split}-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{source}: no data/{split}-*.parquet (an annotated dataset folder?)")
        for f in files:
            table = pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names])
            yield from table.to_pylist()
    else:  # a datasets.Dataset or a list of rows
        yield from (source.select_columns([c for c in columns if c in source.column_names])
                    if hasattr(source, "select_columns") else source)


def write_captions(source: Any, out_dir: str | Path, split: str = "train", overwrite: bool = False,
                   separator: str = ", ") -> CaptionReport:
    """Write ``<name>.txt`` caption files for the rows of ``source`` (an annotated dataset folder, a
    ``datasets.Dataset`` or rows with ``id``, ``tagger_tags``, ``tagger_characters``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = CaptionReport()
    used: set[PurePosixPath] = set()
    for index, row in enumerate(_rows(source, split)):
        if row.get("error") or row.get("tagger_tags") is None:
            report.skipped_rows += 1
            continue
        name = caption_name(row.get("id"), index)
        if name in used:  # two rows, one name: keep both
            name = name.with_name(f"{name.stem}-{index}.txt")
        used.add(name)
        text = caption_text(row.get("tagger_tags"), row.get("tagger_characters"), separator)
        path = out.joinpath(*name.parts)
        if path.exists():
            if path.read_text(encoding="utf-8") == text:
                report.unchanged += 1
                continue
            if not overwrite:
                report.skipped_existing += 1
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        report.written += 1
    return report
