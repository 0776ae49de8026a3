"""Opening the images to annotate: an image folder, Parquet/Arrow files, a saved dataset, a Hub dataset id,
or the embedded synthetic sample; streaming or not.

Whatever the source, :func:`open_dataset` returns rows with canonical columns:
``image`` ({"bytes", "path"}, never decoded here), ``tags`` and ``caption`` (str or None, when the source has
them), ``id`` (str) and any pass-through columns asked for (``truth`` and ``style`` are kept by default when
present). The row position becomes ``index`` later, when the runner cuts the input into chunks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence, Union

from datasets import Dataset, Image, IterableDataset, Value

from .errors import UserError
from .image_access import ANY, NOTHING, ImageAccess
from .options import InputSpec
from .reader import hub_repo_of, read_dataset

logger = logging.getLogger(__name__)


class InputError(UserError, ValueError):
    """The input's columns or the options that name them do not fit (an image column that is not there, ...)."""

__all__ = ["InputSpec", "open_dataset", "image_access", "AnyDataset"]

AnyDataset = Union[Dataset, IterableDataset]

_TAG_NAMES = ("tags", "tag_string", "tag_string_general", "general_tags", "danbooru_tags")
_CAPTION_NAMES = ("caption", "text", "prompt", "description")
_ID_NAMES = ("id", "image_id", "post_id", "uid", "key", "__key__")
_KEEP_DEFAULT = ("truth", "style")


def open_dataset(spec: InputSpec) -> AnyDataset:
    """Open ``spec.dataset`` and normalise its columns (see the module docstring)."""
    ds = _load(spec)
    ds = _normalise(ds, spec)
    if spec.limit is not None:
        if spec.limit < 0:
            raise InputError("--limit must be >= 0")
        ds = ds.take(spec.limit) if isinstance(ds, IterableDataset) else ds.select(range(min(spec.limit, len(ds))))
    return ds


def image_access(spec: InputSpec) -> ImageAccess:
    """Where the image files that the rows of ``spec``'s input name by path may be read from (#17): the input's
    own folder (an image folder; the folder of Parquet/Arrow/CSV/JSON files; a ``save_to_disk`` folder), a Hub
    dataset's own files (its folder of the local Hub cache, the ``datasets`` download cache, and
    ``hf://datasets/<id>`` when streamed), nothing for the synthetic sample; plus ``--image_root``. See
    :mod:`charattr_hf.image_access`."""
    extra = [spec.image_root] if isinstance(spec.image_root, str) else list(spec.image_root or ())
    if not spec.dataset:
        return NOTHING.plus(extra)
    name = os.path.expanduser(str(spec.dataset))
    path = Path(name)
    if path.is_dir():
        return ImageAccess.within([str(path), *hub_repo_of(path)]).plus(extra)
    if path.is_file():
        return ImageAccess.within([str(path.parent), *hub_repo_of(path.parent)]).plus(extra)
    if any(ch in name for ch in "*?["):  # a glob of table files: the folder above its first wildcard
        parts = Path(name).parts
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
        return ImageAccess.within([str(Path(*parts[:fixed]) if fixed else Path("."))]).plus(extra)
    import datasets
    from huggingface_hub import constants

    repo = str(spec.dataset).strip("/")
    own_cache = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}"
    return ImageAccess.within([str(own_cache), str(datasets.config.DOWNLOADED_DATASETS_PATH)],
                              [f"hf://datasets/{repo}"]).plus(extra)


def image_folder_root(spec: InputSpec, ds: AnyDataset) -> str | None:
    """The resolved input folder when ``ds`` was read from a local folder of image files (the ``imagefolder``
    builder), else None: the root that image-path ids are made relative to. Image paths stored in tables are
    strings, not files under the folder, so they are left as they are."""
    if not spec.dataset or getattr(ds.info, "builder_name", None) != "imagefolder":
        return None
    path = Path(spec.dataset).expanduser()
    return str(path.resolve()) if path.is_dir() else None


def _load(spec: InputSpec) -> AnyDataset:
    if not spec.dataset:
        from .synthetic import sample_dataset

        n = spec.sample_size if spec.limit is None else min(spec.sample_size, spec.limit)  # draw only what is used
        ds = sample_dataset(n=n, size=spec.sample_image_size)
        return ds.to_iterable_dataset() if spec.streaming else ds
    # the one dataset loader, shared with the evaluation and fusion training
    return read_dataset(spec.dataset, spec.split, config=spec.config, revision=spec.revision, streaming=spec.streaming)


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str], what: str) -> str | None:
    if given:
        if given not in columns:
            raise InputError(f"--{what}_column {given!r} is not a column; columns: {list(columns)}")
        return given
    for name in candidates:
        if name in columns:
            logger.info("using column %r as %s", name, what)
            return name
    return None


def kept_column_names(spec: InputSpec) -> list[str]:
    """``--keep_columns`` as a list (one name may be given as a string)."""
    return [spec.keep_columns] if isinstance(spec.keep_columns, str) else [c for c in spec.keep_columns if c]


def _normalise(ds: AnyDataset, spec: InputSpec) -> AnyDataset:
    features = ds.features
    if features is None:  # some streaming sources: learn the columns from the first rows
        # datasets has no public method for this (IterableDataset._resolve_features infers them as its own map
        # and iteration do); rebuilding it from take() and Features inference would lose image/list types
        ds = ds._resolve_features()
        features = ds.features
    columns = list(features)
    if spec.image_column not in columns:
        raise InputError(f"image column {spec.image_column!r} not found; columns: {columns} (use --image_column)")
    tags = _pick(columns, spec.tags_column, _TAG_NAMES, "tags")
    # the `text` of a metadata.jsonl that an export wrote is the toolkit's caption, not a person's (#17)
    toolkit_text = not spec.caption_column and _is_image_folder(ds, spec) and _exported_metadata(spec)
    caption = _pick([c for c in columns if not (toolkit_text and c == "text")], spec.caption_column, _CAPTION_NAMES,
                    "caption")
    id_col = _pick(columns, spec.id_column, _ID_NAMES, "id")
    keep = kept_column_names(spec)
    missing = [c for c in keep if c not in columns]
    if missing:
        raise InputError(f"--keep_columns {missing} not found; columns: {columns}")
    keep += [c for c in _KEEP_DEFAULT if c in columns and c not in keep]
    # a source's probabilities computed beforehand (probs_<name>): the pipeline fuses them (see build_pipeline)
    keep += [c for c in columns if c.startswith("probs_") and c not in keep]
    # an image folder prepared for LoRA training carries its tags beside the images (foo.png + foo.txt, kohya
    # style); a metadata.jsonl/csv tags column is already a column here and wins, as --tags_column does
    sidecars = _sidecar_files(spec) if tags is None and _is_image_folder(ds, spec) else []

    image_feature = features[spec.image_column]
    if isinstance(image_feature, Image):
        ds = ds.cast_column(spec.image_column, Image(decode=False))
    elif isinstance(image_feature, dict) and {"bytes", "path"} & set(image_feature):
        # what plain pyarrow (or pandas) writes for images: a struct {bytes, path} with no datasets metadata
        ds = ds.cast_column(spec.image_column, Image(decode=False))
    elif not (isinstance(image_feature, Value) and image_feature.dtype in ("string", "large_string", "binary")):
        raise InputError(
            f"column {spec.image_column!r} holds {image_feature}; expected images, file paths or image bytes"
        )

    renames = {spec.image_column: "image"}
    if tags:
        renames[tags] = "tags"
    if caption:
        renames[caption] = "caption"
    if id_col:
        renames[id_col] = "_source_id"
    selected = list(renames) + [c for c in keep if c not in renames]
    ds = ds.select_columns(selected)
    ds = ds.rename_columns({k: v for k, v in renames.items() if k != v})
    if sidecars:
        ds = _add_sidecar_tags(ds, sidecars, spec.read_written_captions, image_access(spec))
    if _is_image_folder(ds, spec) and _has_kohya_folders(Path(spec.dataset).expanduser()):
        ds = _add_kohya_columns(ds)
    return ds


def _is_image_folder(ds: AnyDataset, spec: InputSpec) -> bool:
    return bool(spec.dataset) and getattr(ds.info, "builder_name", None) == "imagefolder" and \
        Path(spec.dataset).expanduser().is_dir()


def _sidecar_files(spec: InputSpec) -> list[Path]:
    """The ``.txt`` files of an image folder that belong to it: a link to a file outside the folder (and outside
    ``--image_root``) is not read, as an image there would not be."""
    access = image_access(spec)
    files = sorted(p for p in Path(spec.dataset).expanduser().rglob("*.txt") if p.is_file())
    inside = [p for p in files if access.refusal(str(p)) is None]
    if len(inside) < len(files):
        logger.warning("%d .txt file(s) in %s link to files outside the input's folder: not read as tags (give "
                       "--image_root to allow their folder)", len(files) - len(inside), spec.dataset)
    return inside


def _exported_metadata(spec: InputSpec) -> bool:
    """Whether the folder's metadata.jsonl is one an export wrote (recorded in its manifest) and nobody edited."""
    from .provenance import toolkit_caption

    if spec.read_written_captions:
        return False
    metadata = Path(spec.dataset).expanduser() / "metadata.jsonl"
    if metadata.is_file() and toolkit_caption(metadata) is not None:
        logger.info("the `text` column of %s was written by charattr-hf (an export), not by a person: not read as the "
                    "caption (--read_written_captions or --caption_column text reads it)", metadata)
        return True
    return False


def _add_sidecar_tags(ds: AnyDataset, sidecars: list[Path], read_written: bool = False,
                      access: ImageAccess = ANY) -> AnyDataset:
    """A ``tags`` column from the ``.txt`` file beside each image (None where an image has none). Caption files
    charattr-hf wrote and nobody edited since are not a person's tags (:mod:`charattr_hf.provenance`) unless
    ``read_written``: they give the person's own text recorded with them, or nothing."""
    from .provenance import MANIFEST_NAME, toolkit_caption
    from .stages.base import stable_hash

    manifests: dict = {}
    folders = sorted({p.parent for p in sidecars if (p.parent / MANIFEST_NAME).is_file()})
    written = [] if read_written else [
        entry for p in sidecars if p.parent in folders for entry in [toolkit_caption(p, manifests)] if entry is not None
    ]
    own = len(sidecars) - len(written) + sum(1 for e in written if e["person"])
    if written:
        logger.info("%d of the %d .txt file(s) beside the images were written by charattr-hf (--write_captions or an "
                    "export) and not edited since: not read as a person's tags (%d of them carry the person's own "
                    "text, which is); --read_written_captions reads them whole", len(written), len(sidecars),
                    sum(1 for e in written if e["person"]))
    if not own:
        return ds
    logger.info("using the tags in %d .txt file(s) beside the images as the tag source (kohya layout; "
                "--tags_column or a metadata.jsonl/csv column takes precedence)", own)
    features = ds.features.copy()
    features["tags"] = Value("string")
    kwargs = {"read_written": read_written, "access": access}
    if isinstance(ds, IterableDataset):
        return ds.map(read_sidecar_tags, batched=True, features=features, fn_kwargs=kwargs)
    # the rows' identity (resume, caching) must change when a caption file (or what is known of its origin) does:
    # name it by their contents
    stats = [*sidecars, *(f / MANIFEST_NAME for f in folders)]
    digest = stable_hash([(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in stats], read_written,
                         access.params())
    return ds.map(read_sidecar_tags, batched=True, features=features, desc="reading caption files", fn_kwargs=kwargs,
                  new_fingerprint=stable_hash(ds._fingerprint, "sidecar-tags", digest))


def read_sidecar_tags(batch: dict, read_written: bool = False, access: ImageAccess = ANY) -> dict:
    """Batched map: the text of ``<image stem>.txt`` beside each image file, stripped, or None. A file charattr-hf
    wrote and nobody edited gives the person's text recorded with it (or None), unless ``read_written``. A file
    ``access`` refuses (a link out of the input's folder) gives None."""
    from .provenance import written_entry

    manifests: dict = {}
    out = []
    for cell in batch["image"]:
        path = (cell or {}).get("path") if isinstance(cell, dict) else None
        text = None
        if path:
            side = Path(path).with_suffix(".txt")
            if side.is_file() and access.refusal(str(side)) is None:
                data = side.read_bytes()
                entry = None if read_written else written_entry(side, data, manifests)
                text = entry["person"] if entry is not None else data.decode("utf-8", errors="replace")
                text = (text or "").strip() or None
        out.append(text)
    return {"tags": out}


def _has_kohya_folders(root: Path) -> bool:
    """Whether an image folder is in kohya's layout: a folder named ``<repeats>_<trigger>[ <class>]`` (the input
    folder itself or one below it)."""
    from .kohya import parse_folder

    if parse_folder(root.resolve().name):
        return True
    return any(parse_folder(d) for _, dirs, _ in os.walk(root) for d in dirs)


def _add_kohya_columns(ds: AnyDataset) -> AnyDataset:
    """``repeats``, ``trigger`` and ``class_token`` from the name of the folder each image is in (kohya's layout);
    None for images in other folders. They pass through to the annotated output, where the export reads them."""
    from .stages.base import stable_hash

    logger.info("kohya layout: the images' folder names give the rows' repeats, trigger and class_token")
    features = ds.features.copy()
    features.update({"repeats": Value("int32"), "trigger": Value("string"), "class_token": Value("string")})
    if isinstance(ds, IterableDataset):
        return ds.map(read_kohya_folder, batched=True, features=features)
    return ds.map(read_kohya_folder, batched=True, features=features, desc="reading kohya folder names",
                  new_fingerprint=stable_hash(ds._fingerprint, "kohya-folders-v1"))


def read_kohya_folder(batch: dict) -> dict:
    """Batched map: (repeats, trigger, class_token) from the name of the folder holding each image, or Nones."""
    from .kohya import parse_folder

    out: dict[str, list] = {"repeats": [], "trigger": [], "class_token": []}
    for cell in batch["image"]:
        path = (cell or {}).get("path") if isinstance(cell, dict) else None
        folder = parse_folder(Path(path).parent.name) if path else None
        out["repeats"].append(folder.repeats if folder else None)
        out["trigger"].append(folder.trigger if folder else None)
        out["class_token"].append(folder.class_token if folder else None)
    return out


def input_identity(spec: InputSpec) -> str:
    """What identifies a streamed input across runs (its rows cannot be fingerprinted without reading them).

    Local files: their paths, sizes and modification times. Hub datasets: the commit the revision points to
    when the Hub answers, else the revision as given. Plus everything in ``spec`` that selects rows.
    """
    from dataclasses import asdict

    from .stages.base import stable_hash

    parts: dict = {k: v for k, v in asdict(spec).items()}
    if not spec.dataset:
        return stable_hash(parts)
    path = Path(spec.dataset).expanduser()
    if path.exists():
        # where the files are, not only what they are: rows carry their path, so a copy elsewhere (or the same
        # relative name from another folder) is another input, whose chunks are never reused for this one
        parts["dataset"] = str(path.resolve())
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        parts["files"] = [(str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size,
                           p.stat().st_mtime_ns) for p in files]
    else:
        try:
            from huggingface_hub import HfApi

            parts["commit"] = HfApi().dataset_info(spec.dataset, revision=spec.revision, timeout=10).sha
        except Exception as exc:  # noqa: BLE001 - offline or private: the revision as given will do
            logger.info("could not resolve the commit of %s (%s); using the revision as given", spec.dataset, exc)
    return stable_hash(parts)
