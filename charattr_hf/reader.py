"""Opening a dataset from wherever it lives: the one loader behind the annotation input
(:func:`charattr_hf.inputs.open_dataset`), the evaluation (:func:`charattr_hf.evaluation.load_annotations`) and
fusion training (:func:`charattr_hf.fusion_training.load_table`).

:func:`read_dataset` accepts an opened ``Dataset`` / ``DatasetDict`` (takes ``split``), a ``save_to_disk`` folder,
a folder of tables (an annotation output folder or any Hub-style repository layout: its README configs and
split names are honoured), a folder of images (``imagefolder``), a Parquet / Arrow / CSV / JSON (Lines) file or
glob (suffixes in any case), or a Hub dataset id (with ``config`` and ``revision``); streaming or not.
Errors the user can fix are :class:`~charattr_hf.errors.UserError` s that are also the built-in error they
always were (a missing path is a ``FileNotFoundError``, a missing split a ``ValueError``).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Union

import datasets
from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict

from .constants import IMAGE_SUFFIXES  # the suffixes of the image files an image folder holds
from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "read_dataset",
    "is_saved_dataset",
    "TABLE_BUILDERS",
    "IMAGE_SUFFIXES",
    "DatasetNotFoundError",
    "SplitNotFoundError",
    "UnsupportedFileError",
    "LinkOutsideError",
]

AnyDataset = Union[Dataset, IterableDataset]

#: Table file suffix (lower case) -> the ``datasets`` builder that reads it.
TABLE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A local dataset path that does not exist."""


class SplitNotFoundError(UserError, ValueError):
    """The dataset has no split of the name asked for (the message lists the splits it has, where known)."""


class UnsupportedFileError(UserError, ValueError):
    """A file that is not a table ``datasets`` can read."""


class LinkOutsideError(UserError, ValueError):
    """A folder whose tables or metadata files are links to files outside it."""


def hub_repo_of(folder: "str | os.PathLike") -> list[str]:
    """The Hub cache repository folder (``datasets--org--name``) of a folder inside one of its snapshots, whose files
    are links into the repository's ``blobs/``; else nothing."""
    parts = Path(os.path.realpath(folder)).parts
    if "snapshots" in parts:
        repo = Path(*parts[: parts.index("snapshots")])
        if repo.name.startswith(("datasets--", "models--")):
            return [str(repo)]
    return []


def _tables_linked_outside(root: Path, images_only: bool = False) -> list[str]:
    """The table and metadata files ``datasets`` would read from the folder ``root`` (it follows links, to files and
    to folders) that are links, or lie in linked folders, resolving outside ``root``: their rows would come from
    elsewhere. Images in such places are refused row by row (:mod:`charattr_hf.image_access`)."""
    real_root = os.path.realpath(root)
    roots = [real_root, *hub_repo_of(root)]  # a snapshot's files are links into its repository's blobs/

    def outside(p: str) -> bool:
        real = os.path.realpath(p)
        return all(os.path.commonpath([real, r]) != r for r in roots)

    def read_as_table(name: str) -> bool:
        suffix = Path(name).suffix.lower()
        # an image folder reads only its metadata files; any other table among the images is not a row
        return suffix in TABLE_BUILDERS and (not images_only or Path(name).stem == "metadata")

    found: list[str] = []
    for folder, dirs, names in os.walk(root):  # links to folders are listed, not entered
        for name in dirs:
            link = os.path.join(folder, name)
            if os.path.islink(link) and outside(link):
                for inner, _, inner_names in os.walk(os.path.realpath(link)):
                    found += [os.path.join(link, os.path.relpath(os.path.join(inner, n), os.path.realpath(link)))
                              for n in inner_names if read_as_table(n)]
        found += [os.path.join(folder, n) for n in names if read_as_table(n)
                  and os.path.islink(os.path.join(folder, n)) and outside(os.path.join(folder, n))]
    return sorted(found)


def is_saved_dataset(path: "str | os.PathLike") -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``)."""
    path = Path(path)
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _pick_split(dd: "DatasetDict | IterableDatasetDict", split: str, where: str) -> AnyDataset:
    if split not in dd:
        raise SplitNotFoundError(f"{where}: no split {split!r}; splits: {list(dd)} (use --split)")
    return dd[split]


def _streamed(ds: AnyDataset, streaming: bool) -> AnyDataset:
    return ds.to_iterable_dataset() if streaming and isinstance(ds, Dataset) else ds


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _looks_like_path(name: str) -> bool:
    """A name that can only be meant as a local path (a Hub id is ``name`` or ``owner/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix.lower() in TABLE_BUILDERS


def files_left_out(root: Path, files: "list[Path]") -> Counter:
    """Files of an image folder that the image-folder reader does not read as images, counted by suffix (lower
    case): an image kind it does not know (``.svg``, ``.heic``, ``.avif``), or anything else. Not counted: what
    it reads, its metadata files (``metadata.jsonl``...), hidden files and folders (``.DS_Store``, ``__MACOSX``;
    it skips them too) and files that share an image's name (``foo.txt``, ``foo.npz`` beside ``foo.png``: captions
    and caches)."""
    # the suffixes and metadata names are attributes of datasets' image-folder builder (no public accessor): the
    # files it reads are exactly those; tests/test_reader.py pins that a .svg is left out and a .png read
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    read = {s.lower() for s in ImageFolder.EXTENSIONS}
    metadata = set(ImageFolder.METADATA_FILENAMES)
    images = {p.with_suffix("") for p in files if p.suffix.lower() in read}
    left: Counter = Counter()
    for p in files:
        if any(part.startswith((".", "__")) for part in p.relative_to(root).parts):
            continue
        if p.suffix.lower() in read or p.name in metadata or p.with_suffix("") in images:
            continue
        left[p.suffix.lower() or "(no suffix)"] += 1
    return left


def log_files_left_out(root: Path, files: "list[Path]") -> None:
    """One log line counting the files of an image folder that will not be rows (see :func:`files_left_out`)."""
    left = files_left_out(root, files)
    if left:
        logger.warning("%s: %d file(s) not read as images (not a kind the image-folder reader knows): %s", root,
                       sum(left.values()), ", ".join(f"{suffix} {n}" for suffix, n in sorted(left.items())))


def read_dataset(
    source: "str | os.PathLike | Dataset | DatasetDict | IterableDataset | IterableDatasetDict",
    split: str = "train",
    *,
    config: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
) -> AnyDataset:
    """One split of a dataset, from wherever it lives (see the module docstring).

    ``split`` picks the split of a ``DatasetDict``, a saved ``DatasetDict``, a folder with named splits or a Hub
    dataset; a single table file or glob is one split whatever its name. ``config`` and ``revision`` apply to
    Hub datasets (``config`` also to local repository layouts with several configs).
    """
    if isinstance(source, (DatasetDict, IterableDatasetDict)):
        return _streamed(_pick_split(source, split, "the DatasetDict"), streaming)
    if isinstance(source, (Dataset, IterableDataset)):
        return _streamed(source, streaming)
    name = os.fspath(source)
    path = Path(name).expanduser()
    kwargs = {"split": split, "streaming": streaming}
    if is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            loaded = _pick_split(loaded, split, name)
        return _streamed(loaded, streaming)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        tables = sorted(p for p in files if p.suffix.lower() in TABLE_BUILDERS)
        # a repository layout (README configs, or split names from the file names): tables and no images, or
        # tables beside a README, as in an annotated output whose card has pictures in images/
        as_tables = bool(tables) and ((path / "README.md").is_file() or
                                      not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files))
        linked = _tables_linked_outside(path, images_only=not as_tables)
        if linked:
            more = f" (and {len(linked) - 1} more)" if len(linked) > 1 else ""
            raise LinkOutsideError(f"{linked[0]} is a link to a file outside {name}{more}: its rows would come from "
                                   "elsewhere; copy the file into the folder, or give it as --dataset itself")
        if as_tables:
            try:
                return datasets.load_dataset(str(path), config, **kwargs)
            except (ValueError, FileNotFoundError) as exc:
                if str(exc).startswith(("Unknown split", "Bad split")):  # named splits, none the one asked for
                    raise SplitNotFoundError(f"{name}: {exc} (use --split)") from exc
                builder = TABLE_BUILDERS[tables[0].suffix.lower()]
                return datasets.load_dataset(builder, data_files=[str(p) for p in tables], **kwargs)
        log_files_left_out(path, files)
        return datasets.load_dataset("imagefolder", data_dir=str(path), **kwargs)
    if path.is_file() or _is_glob(name):
        builder = TABLE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise UnsupportedFileError(
                f"{name}: unsupported file type {path.suffix or '(none)'!r} (use Parquet, Arrow, CSV or JSON Lines)"
            )
        files = str(path) if path.is_file() else os.path.expanduser(name)
        return datasets.load_dataset(builder, data_files=files, split="train", streaming=streaming)
    if _looks_like_path(name):
        raise DatasetNotFoundError(f"no such dataset folder or file: {name}")
    return datasets.load_dataset(name, config, revision=revision, **kwargs)
