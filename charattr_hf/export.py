"""Export an annotated or curated dataset as a folder a trainer reads: kohya's sd-scripts layout or a ``datasets``
image folder (what diffusers' training scripts read).

``kohya``::

    DIR/10_mychar girl/foo.png          the image
    DIR/10_mychar girl/foo.txt          its caption (charattr_hf.captions), one line
    DIR/10_mychar girl/.charattr-captions.json   which captions the toolkit wrote (charattr_hf.provenance)
    DIR/dataset.toml                    sd-scripts' --dataset_config: one subset per folder (num_repeats,
                                        class_tokens), caption_extension, keep_tokens

The folder of a row is ``<repeats>_<trigger>[ <class>]`` (:mod:`charattr_hf.kohya`): the options given, else the
row's own ``repeats``/``trigger``/``class_token`` (an input folder in kohya's layout), else 1 and none.

``imagefolder``::

    DIR/foo.png ...
    DIR/metadata.jsonl                  {"file_name": "foo.png", "text": "<caption>", "id": "<row id>"} per image

``load_dataset("imagefolder", data_dir=DIR)`` reads it; diffusers' ``train_text_to_image.py`` takes
``--train_data_dir DIR --caption_column text``.

Which bytes are exported (input is data, never an order): a row's original file only when its bytes hash to the
row's ``sha256``, the hash the annotation run recorded (:func:`charattr_hf.image_access.read_verified`), so a crafted
dataset cannot copy an arbitrary local file into the export; else the image bytes the dataset holds
(``--keep_images``); else the row is left out. Rows with an ``error``, and bytes that are not an image a trainer
opens, are left out too; every row left out is counted with its reason. Images in formats trainers do not read
(GIF, TIFF, PPM...) are written as PNG. File names come from the row ids, made safe (no ``..``, no absolute path,
no character a file system refuses) and unique per folder (``foo.png``, ``foo-2.png``), so no row overwrites
another and nothing is written outside ``DIR``.

The export is built in a temporary folder beside ``DIR`` and moved into place at the end: an interrupted export
leaves no half-written ``DIR``. An existing ``DIR`` is replaced only when it is an earlier export (it holds
``.charattr-export.json``) and ``overwrite`` is set.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .captions import CaptionBuilder, CaptionOptions, caption_columns, check_caption_options, read_rows
from .errors import UserError
from .image_access import read_verified
from .kohya import folder_name, safe_path_part

logger = logging.getLogger(__name__)

__all__ = ["ExportReport", "export", "check_export", "FORMATS", "MARKER", "LEFT_OUT"]

FORMATS = ("kohya", "imagefolder")
MARKER = ".charattr-export.json"
#: why a row is left out -> what it means (for the log)
LEFT_OUT = {
    "error": "the image could not be read when the dataset was annotated",
    "no image": "its file is missing or changed since annotation and the dataset holds no image bytes (annotate "
                "with --keep_images to carry them)",
    "unreadable image": "the bytes are not an image a trainer can open",
}
#: formats trainers read as they are (sd-scripts: png/jpg/jpeg/webp/bmp) -> suffixes; anything else becomes PNG
_KEPT_FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "BMP": (".bmp",)}


@dataclass
class ExportReport:
    output_dir: Path
    format: str
    rows: int = 0
    exported: int = 0
    converted: int = 0
    left_out: Counter = field(default_factory=Counter)
    folders: dict[str, int] = field(default_factory=dict)

    def describe_left_out(self) -> str:
        if not self.left_out:
            return "none"
        return "; ".join(f"{n} {why} ({LEFT_OUT[why]})" for why, n in sorted(self.left_out.items()))


def check_export(output_dir: str | os.PathLike, fmt: str, caption_options: CaptionOptions, *, overwrite: bool = False,
                 repeats: int | None = None) -> None:
    """Everything about an export that can be checked before reading the dataset. Raises :class:`UserError`."""
    from .checks import check_writable

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: give one of {', '.join(FORMATS)}")
    if repeats is not None and repeats < 1:
        raise UserError(f"--repeats must be >= 1 (sd-scripts skips folders with 0 repeats), got {repeats}")
    check_caption_options(caption_options)
    out = Path(output_dir).expanduser()
    if out.exists():
        if not out.is_dir():
            raise UserError(f"--output_dir {output_dir}: is a file; give a folder")
        if any(out.iterdir()):
            if not (out / MARKER).is_file():
                raise UserError(f"--output_dir {output_dir}: the folder is not empty and is not an earlier export; "
                                "give a new folder")
            if not overwrite:
                raise UserError(f"--output_dir {output_dir}: holds an earlier export; add --overwrite to replace it")
    check_writable(out.parent, "--output_dir")


def export(dataset: str | os.PathLike, output_dir: str | os.PathLike, fmt: str = "kohya", *, split: str = "train",
           revision: str | None = None, caption_options: CaptionOptions | None = None, repeats: int | None = None,
           schema: Any = "default", overwrite: bool = False) -> ExportReport:
    """Export ``split`` of ``dataset`` (an annotated or curated output folder, or a Hub dataset id) to ``output_dir``
    in ``fmt`` (see the module docstring). Raises :class:`UserError` for what the user can fix, before any work."""
    from .curation.curate import annotated_files

    caption_options = caption_options or CaptionOptions()
    check_export(output_dir, fmt, caption_options, overwrite=overwrite, repeats=repeats)
    files = annotated_files(str(dataset), split, revision)
    import pyarrow.parquet as pq

    names = set(pq.read_schema(files[0]).names)
    if "id" not in names or not ({"image"} <= names or {"path", "sha256"} <= names):
        raise UserError(f"{dataset}: no id and image (or path and sha256) columns; is this an annotated dataset "
                        "(recipes/annotate.py)?")
    out = Path(output_dir).expanduser()
    if out.resolve() in {f.resolve().parent.parent for f in files}:
        raise UserError("--output_dir must differ from the dataset's folder")
    builder = CaptionBuilder(caption_options, schema)
    report = ExportReport(out, fmt)
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _write(read_rows(files, columns=[*caption_columns(schema), "path", "sha256", "image", "repeats"]), tmp,
               out.resolve(), builder, report, repeats)
        (tmp / MARKER).write_text(json.dumps({
            "written_by": "charattr-hf", "format": fmt, "dataset": str(dataset), "split": split, "rows": report.rows,
            "exported": report.exported, "left_out": dict(report.left_out), "folders": report.folders,
        }, indent=2, ensure_ascii=False), encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported %d of %d rows -> %s; left out: %s", report.exported, report.rows, out,
                report.describe_left_out())
    return report


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        if any(out.iterdir()):  # an earlier export (checked before any work): set aside, removed once replaced
            old = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
            out.rename(old)
        else:
            out.rmdir()
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def image_file(data: bytes, suffix_hint: str | None = None) -> tuple[bytes, str, bool] | None:
    """``(bytes, suffix, converted)`` to write for image bytes ``data``: as they are in a format trainers read (the
    original suffix kept when it fits the format, ``.jpeg`` for a JPEG named so), else re-encoded as PNG; None when
    the bytes are not an image."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()
    except Exception:  # noqa: BLE001 - any decoder failure means: not an image a trainer can open
        return None
    if fmt in _KEPT_FORMATS:
        suffixes = _KEPT_FORMATS[fmt]
        hint = (suffix_hint or "").lower()
        return data, hint if hint in suffixes else suffixes[0], False
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.seek(0)
            im.load()
            if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            buf = io.BytesIO()
            im.save(buf, "PNG")
    except Exception:  # noqa: BLE001
        return None
    return buf.getvalue(), ".png", True


def _row_bytes(row: dict) -> bytes | None:
    """The row's original file when it still hashes to the recorded sha256, else the bytes the dataset holds."""
    data = read_verified(row.get("path"), row.get("sha256"))
    if data is None:
        cell = row.get("image")
        data = cell.get("bytes") if isinstance(cell, dict) else None
    return data or None


def _stem(row_id: Any, index: int) -> tuple[str, str]:
    """(safe file stem, the id's own suffix) from a row id such as ``10_x/sub/foo.png``."""
    last = PurePosixPath(str(row_id or "").replace("\\", "/")).name
    name = PurePosixPath(last)
    stem = safe_path_part(name.stem if name.suffix else last, max_bytes=100)
    return stem or f"{index:08d}", name.suffix


def _write(rows, tmp: Path, final: Path, builder: CaptionBuilder, report: ExportReport, repeats: int | None) -> None:
    from .provenance import file_sha256, record_written

    fmt = report.format
    options = builder.options
    used: dict[str, set[str]] = {}
    subsets: dict[str, tuple[int, str]] = {}
    entries: dict[str, dict] = {}
    metadata = None if fmt == "kohya" else open(tmp / "metadata.jsonl", "w", encoding="utf-8", newline="\n")
    try:
        for index, row in enumerate(rows):
            report.rows += 1
            if row.get("error"):
                report.left_out["error"] += 1
                continue
            data = _row_bytes(row)
            stem, suffix = _stem(row.get("id"), index)
            image = image_file(data, suffix) if data is not None else None
            if image is None:
                report.left_out["no image" if data is None else "unreadable image"] += 1
                continue
            data, suffix, converted = image
            caption = builder.caption(row)
            if fmt == "kohya":
                trigger, klass = builder.trigger(row), builder.class_token(row)
                n = repeats or (row.get("repeats") if isinstance(row.get("repeats"), int) else None) or 1
                folder = folder_name(max(1, n), trigger, klass)
                subsets.setdefault(folder, (max(1, n), " ".join(w for w in (trigger, klass) if w)))
            else:
                folder = ""
            taken = used.setdefault(folder.casefold(), set())
            unique, k = stem, 1
            while unique.casefold() in taken:
                k += 1
                unique = f"{stem}-{k}"
            taken.add(unique.casefold())
            where = tmp / folder if folder else tmp
            where.mkdir(exist_ok=True)
            (where / f"{unique}{suffix}").write_bytes(data)
            if fmt == "kohya":
                text = caption.encode("utf-8")
                (where / f"{unique}{options.caption_extension}").write_bytes(text)
                entries.setdefault(folder, {})[f"{unique}{options.caption_extension}"] = {
                    "sha256": file_sha256(text), "person": builder.person_text(row)}
            else:
                metadata.write(json.dumps({"file_name": f"{unique}{suffix}", "text": caption, "id": row.get("id")},
                                          ensure_ascii=False) + "\n")
            report.exported += 1
            report.converted += converted
            report.folders[folder or "."] = report.folders.get(folder or ".", 0) + 1
    finally:
        if metadata is not None:
            metadata.close()
    if fmt == "kohya":
        for folder, written in entries.items():
            record_written(tmp / folder, written)
        (tmp / "dataset.toml").write_text(_dataset_toml(final, subsets, options), encoding="utf-8")
    else:
        record_written(tmp, {"metadata.jsonl": {"sha256": file_sha256((tmp / "metadata.jsonl").read_bytes()),
                                                "person": None}})


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL must be escaped in TOML too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _dataset_toml(final: Path, subsets: dict[str, tuple[int, str]], options: CaptionOptions) -> str:
    """sd-scripts' dataset config (``--dataset_config``) for the folders written: one subset per folder."""
    lines = [
        "# sd-scripts dataset config written by charattr-hf (recipes/export.py):",
        "#   accelerate launch train_network.py --dataset_config dataset.toml --resolution 512 ...",
        "[general]",
        f"caption_extension = {_toml_str(options.caption_extension)}",
        f"shuffle_caption = {'true' if options.keep_tokens else 'false'}",
        f"keep_tokens = {int(options.keep_tokens)}",
        "",
        "[[datasets]]",
    ]
    for folder, (repeats, tokens) in sorted(subsets.items()):
        lines += ["", "  [[datasets.subsets]]", f"  image_dir = {_toml_str(str(final / folder))}",
                  f"  num_repeats = {repeats}"]
        if tokens:
            lines.append(f"  class_tokens = {_toml_str(tokens)}")
    return "\n".join(lines) + "\n"
