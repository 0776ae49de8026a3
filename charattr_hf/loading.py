"""Finding a model's files, for every model kind, and turning a failed load into one line that says what to do.

Every model of a run (the CLIP model, the WD tagger, BLIP-2, the fusion policy) is named the same ways
(:class:`ModelRef`): ``local-dir:/path`` or an existing folder, or a Hub id (``org/repo``, ``hf-hub:org/repo``) with a
revision. :func:`resolve_model` turns the name into the folder its files are loaded from and a fingerprint of
them:

- a folder as it is; the fingerprint is a digest of the files the model reads (``dir-<16 hex>``);
- a Hub id: the commit the revision points to, asked of the Hub API once (with a short timeout, no retries), or
  read from the local cache when the Hub is off (``HF_HUB_OFFLINE=1``) or does not answer; then only the files
  the model needs, at that commit (``.../snapshots/<commit>``: every process loads the same weights even if the
  branch moves mid-run); the fingerprint is ``hub-<repo>@<commit>``. Weights are safetensors only: a repository
  that offers only pickled weights is refused, never downloaded.

Whatever fails (no network, ``HF_HUB_OFFLINE=1`` and nothing cached, no such repository or revision, a gated
repository, missing files) is a :class:`~charattr_hf.errors.ModelLoadError` of one line, raised before the first
chunk (see :meth:`Pipeline.load <charattr_hf.pipeline.Pipeline.load>`): the run stops at once instead of
retrying for every chunk. :func:`model_load_error` makes that line from any exception a loader raises.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

from .errors import ModelLoadError, UserError

__all__ = ["ModelRef", "ResolvedModel", "resolve_model", "model_load_error", "offline", "file_digest",
           "HUB_TIMEOUT_S"]

LOCAL = "local-dir:"
HUB = "hf-hub:"
#: Seconds the Hub API may take to say which commit a revision is, once per model and process.
HUB_TIMEOUT_S = 10.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LOGIN = "if it is gated or private, accept its terms on huggingface.co and log in with `hf auth login`"
#: Pickled weights: never downloaded, never loaded (they can run code).
_PICKLES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")


def offline(datasets: bool = False) -> bool:
    """Whether the Hub is switched off: ``HF_HUB_OFFLINE=1`` (or, with ``datasets``, ``HF_DATASETS_OFFLINE=1``)."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if datasets else ("HF_HUB_OFFLINE",)
    return any(os.environ.get(n, "").strip().lower() in ("1", "on", "yes", "true") for n in names)


@dataclass(frozen=True)
class ModelRef:
    """What a model option names, before anything is read: a local folder, or a Hub repository at a revision."""

    what: str  # how messages name the kind: "CLIP model", "tagger", "BLIP-2 model", "fusion policy"
    name: str  # as the user wrote it
    repo_id: str | None = None
    revision: str | None = None
    folder: Path | None = None

    @classmethod
    def parse(cls, value: "str | os.PathLike", revision: str | None = None, *, what: str, flag: str) -> "ModelRef":
        """``local-dir:/path``, an existing folder, ``hf-hub:org/repo`` or ``org/repo``; a name that is none of them
        (or a revision given for a folder) is a :class:`UserError` naming ``flag``."""
        text = str(value).strip()
        if text.startswith(LOCAL) or (not text.startswith(HUB) and Path(text).expanduser().is_dir()):
            if revision:
                raise UserError(f"{flag}_revision applies to Hub models only, not to a local folder ({text})")
            folder = Path(text[len(LOCAL):] if text.startswith(LOCAL) else text).expanduser()
            if not folder.is_dir():
                raise UserError(f"{flag} {text}: no such folder {str(folder)!r}; check the path after 'local-dir:'")
            return cls(what, text, folder=folder.resolve())
        repo = text[len(HUB):] if text.startswith(HUB) else text
        if not _REPO_ID.match(repo):
            raise UserError(f"{flag} {text!r}: not a folder and not a Hub id; give 'org/repo', 'hf-hub:org/repo' or "
                            "'local-dir:/path'")
        return cls(what, text, repo_id=repo, revision=revision or None)

    @classmethod
    def local(cls, folder: "str | os.PathLike", *, what: str, name: str | None = None) -> "ModelRef":
        """A folder known to exist (a shipped model)."""
        folder = Path(folder).resolve()
        return cls(what, name or f"{LOCAL}{folder}", folder=folder)

    @property
    def is_local(self) -> bool:
        return self.folder is not None

    def describe(self) -> str:
        """As the user wrote it, with the revision asked for."""
        return self.name + (f"@{self.revision}" if self.revision and not self.is_local else "")


@dataclass(frozen=True)
class ResolvedModel:
    """A model's files on this machine: ``folder`` holds them; ``files`` are those the model reads."""

    ref: ModelRef
    folder: Path
    files: tuple[str, ...]
    commit: str | None = None  # the Hub commit; None for a local folder

    @property
    def fingerprint(self) -> str:
        """``hub-<repo>@<commit>``, or ``dir-<digest>`` of the files a folder holds (a copy elsewhere is the same)."""
        if self.commit is not None:
            return f"hub-{self.ref.repo_id}@{self.commit}"
        return "dir-" + _files_digest(str(self.folder), self.files)


def resolve_model(ref: ModelRef, required: Sequence["str | tuple[str, ...]"] = (),
                  optional: Sequence[str] = ()) -> ResolvedModel:
    """The files of ``ref`` on this machine (see the module docstring); raises :class:`ModelLoadError`.

    ``required``: file names the model cannot do without; a tuple names alternatives, the first present is used
    (``("open_clip_model.safetensors", "model.safetensors")``). ``optional``: glob patterns of the other files it
    reads when present (configs, tokenizers). A Hub model is resolved once per process; a local folder every time
    (it is cheap, and a model retrained into the same folder must not keep the earlier files' fingerprint)."""
    if ref.is_local:
        names = sorted(p.name for p in ref.folder.iterdir() if p.is_file())  # type: ignore[union-attr]
        files = _choose(ref, names, tuple(required), tuple(optional))
        return ResolvedModel(ref, ref.folder, files)  # type: ignore[arg-type]
    return _resolve(ref, tuple(required), tuple(optional))


@lru_cache(maxsize=None)
def _resolve(ref: ModelRef, required: tuple, optional: tuple) -> ResolvedModel:
    from huggingface_hub import HfApi

    api = HfApi()
    commit, names = _hub_listing(ref, api)
    files = _choose(ref, names, required, optional)
    if commit is None:  # read from the local cache: the files are there (or _choose said which are not)
        folder = _cached_snapshot(ref)
        return ResolvedModel(ref, folder, files, folder.name)
    try:
        paths = [Path(api.hf_hub_download(ref.repo_id, name, revision=commit)) for name in files]
    except Exception as exc:  # noqa: BLE001 - the network went away half-way, a file that will not download
        raise model_load_error(ref.what, ref.describe(), exc) from exc
    # the snapshot folder of this commit: a downloaded file's path less its name in the repository
    folder = paths[0].parents[len(Path(files[0]).parts) - 1] if paths else _cached_snapshot(ref)
    return ResolvedModel(ref, folder, files, commit)


def _hub_listing(ref: ModelRef, api) -> tuple[str | None, list[str]]:
    """(the commit the revision points to, the repository's files) from the Hub API; (None, the cached snapshot's
    files) when the Hub is off or cannot be reached and a snapshot of that revision is cached."""
    error: BaseException | None = None
    if not offline():
        try:
            info = api.model_info(ref.repo_id, revision=ref.revision, timeout=HUB_TIMEOUT_S)
            return info.sha, [s.rfilename for s in info.siblings or ()]
        except Exception as exc:  # noqa: BLE001 - sorted out below: the cache may have it
            if not _unreachable(exc):
                raise model_load_error(ref.what, ref.describe(), exc) from exc
            error = exc
    try:
        folder = _cached_snapshot(ref)
    except ModelLoadError:
        if error is not None:
            raise _not_reachable(ref) from error
        raise
    return None, sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _cached_snapshot(ref: ModelRef) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref.repo_id, revision=ref.revision, local_files_only=True, allow_patterns=[]))
    except Exception as exc:  # noqa: BLE001 - nothing of this revision in the cache
        if offline():
            raise ModelLoadError(
                f"cannot load the {ref.what} {ref.describe()}: it is not in the local cache and HF_HUB_OFFLINE=1; "
                "download it once on a machine with network (the same HF_HOME), or give a local folder instead"
            ) from exc
        raise _not_reachable(ref) from exc


def _not_reachable(ref: ModelRef) -> ModelLoadError:
    return ModelLoadError(
        f"cannot load the {ref.what} {ref.describe()}: the Hugging Face Hub cannot be reached and it is not in the "
        "local cache; check the network (set HF_HUB_OFFLINE=1 on machines without network to fail at once), or "
        "check the name"
    )


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the Hub did not answer (rather than answered no)."""
    from huggingface_hub import errors as hub

    for e in _chain(exc):
        if isinstance(e, hub.HfHubHTTPError):
            status = getattr(getattr(e, "response", None), "status_code", None)
            return status is None or status >= 500
        if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)) or type(e).__name__ in (
                "ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "NetworkError", "ProxyError"):
            return True
    return False


def _choose(ref: ModelRef, names: Sequence[str], required: tuple, optional: tuple) -> tuple[str, ...]:
    """The files of ``names`` the model reads: one per ``required`` entry, then every match of ``optional``."""
    present = set(names)
    chosen: list[str] = []
    missing: list[tuple[str, ...]] = []
    for entry in required:
        options = (entry,) if isinstance(entry, str) else tuple(entry)
        found = next((n for n in options if n in present), None)
        if found is None:
            missing.append(options)
        else:
            chosen.append(found)
    if missing:
        raise ModelLoadError(f"cannot load the {ref.what} {ref.describe()}: {_missing(ref, missing, names)}")
    for name in names:
        if name not in chosen and any(fnmatch.fnmatch(name, p) for p in optional) and not _is_pickle(name):
            chosen.append(name)
    return tuple(chosen)


def _missing(ref: ModelRef, missing: list[tuple[str, ...]], names: Sequence[str]) -> str:
    where = "the folder" if ref.is_local else "the repository"
    wanted = ", ".join(o[0] if len(o) == 1 else "one of " + " / ".join(o) for o in missing)
    text = f"{where} lacks {wanted}"
    if any(n.endswith(".safetensors") for o in missing for n in o) and any(_is_pickle(n) for n in names):
        text += " (it has only pickled weights, which are never loaded: they can run code; use safetensors weights)"
    return text + ("; check the path" if ref.is_local else "; check the name")


def _is_pickle(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in _PICKLES)


def _files_digest(folder: str, files: tuple[str, ...]) -> str:
    """Digest of ``files`` of ``folder`` (names and contents), in name order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(file_digest(os.path.join(folder, name)).encode())
    return digest.hexdigest()[:16]


def file_digest(path: str) -> str:
    """Hex SHA-256 of a file's contents (cached per process while the file's size and modification time stay)."""
    info = os.stat(path)
    return _file_digest(os.path.realpath(path), info.st_size, info.st_mtime_ns, info.st_ino)


@lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- load errors
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def model_load_error(what: str, name: str, exc: BaseException) -> ModelLoadError:
    """A one-line :class:`ModelLoadError` for ``exc``, raised while loading ``what`` ``name`` ("CLIP model",
    "ViT-B-32")."""
    if isinstance(exc, ModelLoadError):
        return exc
    if isinstance(exc, UserError):
        return ModelLoadError(str(exc))
    from huggingface_hub import errors as hub

    chain = list(_chain(exc))
    kinds = {type(e) for e in chain}

    def has(*types) -> bool:
        return any(issubclass(k, types) for k in kinds)

    text = " ".join(str(e) for e in chain).lower()
    prefix = f"cannot load the {what} {name}"
    if has(hub.GatedRepoError):
        return ModelLoadError(f"{prefix}: it is gated; {_LOGIN}")
    if has(hub.RevisionNotFoundError):
        return ModelLoadError(f"{prefix}: no such revision; check the revision you gave")
    if has(hub.RepositoryNotFoundError):
        return ModelLoadError(f"{prefix}: no such repository on the Hub; check the name, and {_LOGIN}")
    if has(hub.LocalEntryNotFoundError) or "local cache" in text or "offline" in text or _unreachable(exc):
        if offline():
            return ModelLoadError(
                f"{prefix}: it is not in the local cache and HF_HUB_OFFLINE=1; download it once on a machine with "
                "network (the same HF_HOME), or give a local folder instead"
            )
        return ModelLoadError(
            f"{prefix}: the Hugging Face Hub cannot be reached and it is not in the local cache; check the network "
            "(set HF_HUB_OFFLINE=1 on machines without network to fail at once), or check the name"
        )
    if has(hub.EntryNotFoundError) or "does not appear to have a file" in text:
        return ModelLoadError(f"{prefix}: the repository lacks the model's files; check the name ({_first_line(exc)})")
    if has(FileNotFoundError):
        return ModelLoadError(f"{prefix}: {_first_line(exc)}; check the path")
    if has(hub.HfHubHTTPError):
        return ModelLoadError(
            f"{prefix}: the Hub refused or did not answer ({_first_line(exc)}); check the network and the name, "
            f"{_LOGIN}; set HF_HUB_OFFLINE=1 on machines without network"
        )
    return ModelLoadError(f"{prefix}: {_first_line(exc)}")
