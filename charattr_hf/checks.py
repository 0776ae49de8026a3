"""Checks of what was asked, made before any work starts (and before anything heavy is imported where possible).

Each check raises :class:`~charattr_hf.errors.UserError` with what is wrong and what to do. They look at the
arguments only (paths, names, ranges); what can only be known by loading (a model's weights, a dataset's
columns) is checked where it is loaded.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .constants import IMAGE_SUFFIXES as _IMAGE_EXT
from .errors import UserError
from .loading import offline
from .options import InputSpec, PipelineOptions, RunOptions
from .sources import Selection

__all__ = ["check_input", "check_schema", "check_models", "check_fusion", "check_writable", "check_run"]

_TABLE_EXT = {".parquet", ".arrow", ".csv", ".json", ".jsonl"}


def _could_be_hub_id(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) <= 2
        and all(parts)
        and not name.startswith((".", "/", "~"))
        and Path(name).suffix.lower() not in _IMAGE_EXT | _TABLE_EXT
        and all(ch.isalnum() or ch in "-_." for p in parts for ch in p)
    )


def _hub_dataset_cached(name: str) -> bool:
    """Whether a Hub dataset was downloaded before (so ``datasets`` can open it offline)."""
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub").expanduser()
    data = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets").expanduser()
    return (hub / f"datasets--{name.replace('/', '--')}").is_dir() or (data / name.replace("/", "___")).is_dir()


def check_input(spec: InputSpec) -> None:
    """The input exists: a local path that exists and holds something to read, or a Hub dataset id; every local
    ``--image_root`` is a folder."""
    roots = [spec.image_root] if isinstance(spec.image_root, str) else list(spec.image_root or ())
    for root in roots:
        if root and "://" not in root and not Path(root).expanduser().is_dir():
            raise UserError(f"--image_root {root}: no such folder; give the folder the image paths of the rows lie in "
                            "(or a URL prefix such as https://example.org/images/)")
    if not spec.dataset:
        return
    name = spec.dataset
    path = Path(name).expanduser()
    if path.is_dir():
        files = (p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
        usable = False
        for p in files:
            if p.suffix.lower() in _IMAGE_EXT | _TABLE_EXT or p.name in ("state.json", "dataset_dict.json"):
                usable = True
                break
        if not usable:
            raise UserError(
                f"--dataset {name}: the folder holds no images or tables (looked for {', '.join(sorted(_IMAGE_EXT))}, "
                "Parquet, Arrow, CSV, JSON); point --dataset at the folder that holds your images"
            )
        return
    if path.is_file():
        if path.suffix.lower() not in _TABLE_EXT:
            raise UserError(
                f"--dataset {name}: unsupported file type {path.suffix or '(none)'!r}; give a Parquet, Arrow, CSV or "
                "JSON file, or the folder that holds the images"
            )
        return
    if any(ch in name for ch in "*?["):
        import glob

        if not glob.glob(os.path.expanduser(name), recursive=True):
            raise UserError(f"--dataset {name}: the pattern matches no file; check the path (relative to {os.getcwd()})")
        return
    if not _could_be_hub_id(name):
        raise UserError(f"--dataset {name}: no such file or folder (relative to {os.getcwd()}); check the path")
    # a bare name: a local folder that is not there, or a Hub dataset id
    local = f"there is no folder or file {name!r} in {os.getcwd()}"
    if offline(datasets=True):
        if _hub_dataset_cached(name):
            return
        raise UserError(
            f"--dataset {name}: {local}, and as a Hub dataset id it cannot be reached: the Hub is off "
            "(HF_HUB_OFFLINE=1) and it was never downloaded here.\n"
            "  Give the path of your images (e.g. ./my_images), or unset HF_HUB_OFFLINE on a machine with network "
            "to download it."
        )
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency of datasets
        return
    try:
        HfApi().dataset_info(name, revision=spec.revision, timeout=10)
    except GatedRepoError:
        return  # it exists; loading will say what access it needs
    except RevisionNotFoundError:
        raise UserError(f"--dataset {name}: the Hub dataset has no revision {spec.revision!r}; check --dataset_revision") from None
    except RepositoryNotFoundError:
        raise UserError(
            f"--dataset {name}: {local}, and the Hub has no dataset {name!r} (or it is private: log in with "
            "`hf auth login`).\n  Check the spelling, or give the path of your images."
        ) from None
    except Exception as exc:  # noqa: BLE001 - no network, a proxy, a timeout
        if _hub_dataset_cached(name):
            return
        raise UserError(
            f"--dataset {name}: {local}, and the Hub cannot be reached to look it up as a dataset id "
            f"({type(exc).__name__}).\n  Give the path of your images; on a machine without network set "
            "HF_HUB_OFFLINE=1 so nothing waits for the Hub."
        ) from None


def check_schema(schema: str | None) -> None:
    """A schema given by name or path exists and parses (checked now, not after the input is read)."""
    if not schema:
        return
    from .schema import SchemaError, load_schema

    try:
        load_schema(schema)
    except FileNotFoundError as exc:
        raise UserError(f"--schema {schema}: {exc}; give a shipped name (default, synthetic) or a YAML file") from None
    except SchemaError as exc:
        cause = exc.__cause__
        mark = getattr(cause, "problem_mark", None)
        if mark is not None:  # a YAML syntax error: where, and what
            reason = f"not valid YAML (line {mark.line + 1}, column {mark.column + 1}: {getattr(cause, 'problem', '')})"
        else:
            reason = " ".join(str(exc).split())
            for prefix in (f"{schema}: ", f"{Path(schema).expanduser()}: "):
                reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        raise UserError(
            f"--schema {schema}: {reason}\n  fix the file (charattr_hf/schemas/default.yaml shows the format)"
        ) from None


def check_models(options: PipelineOptions) -> None:
    """Local model folders named with ``local-dir:`` (or given as paths) exist: CLIP's and the fusion policy's."""
    from .sources import clip

    clip.check(options)  # the CLIP source's own check (its options are those of the run)
    check_fusion(options)


def check_fusion(options: PipelineOptions) -> None:
    """A fusion policy given as a path is a folder."""
    fusion = options.fusion or ""
    if fusion and fusion != "demo" and fusion.startswith((".", "/", "~")) and not Path(fusion).expanduser().is_dir():
        raise UserError(f"--fusion {fusion}: no such folder; give a folder saved with save_pretrained or a Hub id")


def check_writable(folder: str | os.PathLike, option: str) -> None:
    """``folder`` is, or can be made, a folder this process can write in: a probe file is written (and removed)
    in it or in its nearest existing parent; nothing is created when the check fails or passes."""
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            where = "is a file" if existing == path else f"{existing} is a file, not a folder"
            raise NotADirectoryError(0, where)
        probe = existing / f".charattr-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{option} {folder}: cannot write there ({reason}); choose a folder you can write to") from None


def check_run(spec: InputSpec, options: PipelineOptions, run: RunOptions) -> Selection:
    """Every check of an annotation run, cheapest first: the sources' (``--sources``, ``--plugins`` and each chosen
    source's own checks, see :mod:`charattr_hf.sources`), the input, the schema, the folders. Returns the sources
    chosen, for the pipeline to build."""
    from .sources import check_sources

    selection = check_sources(options)
    check_fusion(options)
    check_input(spec)
    check_schema(options.schema)
    check_writable(run.output_dir, "--output_dir")
    if options.use_cache and options.cache_dir:
        check_writable(options.cache_dir, "--cache_dir")
    if options.use_cache and options.cache_url:
        from .cache_redis import check_cache_url  # imports redis only when a URL is given

        check_cache_url(options.cache_url)
    return selection
