"""Turning a failed model load into one line that says what to do.

Model stages load their weights once per process, before the first chunk (see :meth:`Pipeline.load
<charattr_hf.pipeline.Pipeline.load>`). A load that fails there is a :class:`~charattr_hf.errors.ModelLoadError`:
the run stops at once instead of retrying the download for every chunk, and the message names the model and the
likely fix (the network, ``HF_HUB_OFFLINE=1``, the name, ``hf auth login``).
"""

from __future__ import annotations

import os
from typing import Iterator

from .errors import ModelLoadError

__all__ = ["model_load_error", "offline"]

_LOGIN = "if it is gated or private, accept its terms on huggingface.co and log in with `hf auth login`"


def offline() -> bool:
    """Whether the Hub is switched off (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "on", "yes", "true")


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
    """A one-line :class:`ModelLoadError` for ``exc``, raised while loading ``what`` ``name`` ("CLIP model", "ViT-B-32")."""
    if isinstance(exc, ModelLoadError):
        return exc
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
    if has(hub.LocalEntryNotFoundError) or "local cache" in text or "offline" in text:
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
    if has(hub.HfHubHTTPError, ConnectionError, TimeoutError):
        return ModelLoadError(
            f"{prefix}: the Hub refused or did not answer ({_first_line(exc)}); check the network and the name, "
            f"{_LOGIN}; set HF_HUB_OFFLINE=1 on machines without network"
        )
    return ModelLoadError(f"{prefix}: {_first_line(exc)}")
