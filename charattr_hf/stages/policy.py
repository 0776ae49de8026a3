"""The learned fusion policy as the pipeline's fusion stage.

``PolicyFusion(schema, sources, "org/charattr-fusion", revision="<commit>")`` reads the ``probs_<source>``
columns and the context columns (``quality``, ``flags``, and ``embedding`` when the policy uses it), runs the
policy, and writes ``<attr>`` / ``<attr>_confidence`` through :meth:`FusionStage.process` (``decide``), exactly
like the fixed rules, so the two are interchangeable in a run.

Loading: the policy's files are found by :func:`charattr_hf.loading.resolve_model` (a folder, or a Hub repository at
the commit its revision points to, pinned when the stage is built); only the small ``config.json`` is read when the
stage is built (it defines the output columns); the weights are loaded lazily by :meth:`setup`, once per process
(a module-level cache shared by every copy of the stage in that process). A pickled stage never carries weights loaded from a path or hub id, so ``datasets``
hashing and worker start-up stay cheap.

Attributes of the schema the policy does not know are fused with the ``confidence`` rule (logged once), so a
schema can grow before the policy is retrained. An attribute the policy knows with different labels is an
error: its probabilities would be misread.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..loading import ModelRef, ResolvedModel, resolve_model
from ..schema import Schema, load_schema, probs_column
from .fusion import FusionStage, SimpleFusion

logger = logging.getLogger(__name__)

__all__ = ["PolicyFusion", "load_policy_config", "policy_uses_embedding", "resolve_policy", "DEMO_POLICY"]

#: The name of the shipped demo policy (``charattr_hf/assets/demo-fusion``): the demo CLIP and the tag parser
#: fused for the ``synthetic`` schema; for real data, train one on your own sources.
DEMO_POLICY = "demo"

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


def resolve_policy(model: "str | os.PathLike") -> str:
    """``"demo"`` -> the shipped demo policy folder; anything else (a folder or a Hub id) as given."""
    if str(model) != DEMO_POLICY:
        return str(model)
    from importlib import resources

    folder = Path(str(resources.files("charattr_hf") / "assets" / "demo-fusion"))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"this install has no demo fusion policy ({folder} is missing)")
    return str(folder)


def resolved_policy(model: "str | os.PathLike", revision: str | None = None) -> ResolvedModel:
    """The files of a saved policy: a folder, ``"demo"``, or a Hub id at the commit ``revision`` points to (cached
    per process: every stage built in it loads the same commit)."""
    name = str(model)
    if name == DEMO_POLICY:
        ref = ModelRef.local(resolve_policy(name), what="fusion policy", name=DEMO_POLICY)
    else:
        ref = ModelRef.parse(name, revision, what="fusion policy", flag="--fusion")
    return resolve_model(ref, required=("config.json", "model.safetensors"), optional=("*.json",))


def load_policy_config(model: "str | os.PathLike", revision: str | None = None):
    """The policy's config only (``config.json``: small, no weights), from a folder, a Hub id or ``"demo"``."""
    from ..models.fusion import CharattrFusionConfig

    return CharattrFusionConfig.from_pretrained(str(resolved_policy(model, revision).folder))


def policy_uses_embedding(model: "str | os.PathLike", revision: str | None = None) -> bool:
    """Whether the policy reads the ``embedding`` column (the pipeline must then keep it for fusion)."""
    return load_policy_config(model, revision).embedding_dim > 0


class PolicyFusion(FusionStage):
    """Fusion by a learned :class:`~charattr_hf.models.fusion.CharattrFusionModel`.

    Args:
        schema: the run's attribute schema; default: the policy's own attributes.
        sources: the sources this run produces; default: the policy's. Policy sources the run lacks are simply
            absent (masked, weight 0); run sources the policy was not trained with are ignored by it (and
            used by the fallback rule only).
        model: a local directory or Hub id of a saved policy, ``"demo"`` (the shipped demo policy, for the demo
            CLIP and the tags on the ``synthetic`` schema), or a model instance (kept as is).
        revision: Hub revision (branch, tag or commit); pin a commit for reproducible runs and stable caching.
        device: ``"cpu"`` (default: the policy is tiny and CPU avoids transfers), ``"cuda"``, or ``"auto"``.
        batch_size: rows per forward pass inside one ``map`` batch.
        fallback_method: fixed rule for schema attributes the policy does not fuse.
    """

    name = "policy_fusion"

    def __init__(
        self,
        schema: "Schema | str | None" = None,
        sources: Sequence[str] | None = None,
        model: "str | os.PathLike | Any" = None,
        revision: str | None = None,
        device: str = "cpu",
        batch_size: int = 8192,
        fallback_method: str = "confidence",
    ):
        from ..models.fusion import CharattrFusionModel

        if model is None:
            raise ValueError("PolicyFusion needs model=: a saved policy folder, a Hub id or a CharattrFusionModel")
        if isinstance(model, CharattrFusionModel):
            self._model = model.eval()
            self.model_name = None
            self.model_ref = None
            self._weights: str | None = None  # the model's own weights fingerprint, when first asked
            config = model.config
        elif isinstance(model, (str, os.PathLike)):
            self._model = None
            self.model_name = str(model)
            # the commit is pinned now: every process loads the same weights even if the branch moves mid-run, and
            # the fingerprint names the weights that ran
            resolved = resolved_policy(model, revision)
            self.model_ref = str(resolved.folder)
            self._weights = resolved.fingerprint
            revision = resolved.commit
            config = load_policy_config(self.model_ref)
        else:
            raise TypeError(f"model must be a path, a hub id or a CharattrFusionModel, got {type(model).__name__}")
        self.revision = revision
        self.config = config
        run_schema = config.to_schema() if schema is None else load_schema(schema)
        config.check_schema(run_schema)
        run_sources = tuple(config.sources if sources is None else sources)
        ignored = [s for s in run_sources if s not in config.sources]
        if ignored:
            logger.info("the fusion policy was not trained with source(s) %s: it ignores them", ignored)
        super().__init__(run_schema, sources=[s for s in config.sources if s in run_sources])
        self.run_sources = run_sources
        self.device = device
        self.batch_size = int(batch_size)
        self.fallback_method = fallback_method
        self.fallback_attributes = [a.name for a in self.schema if a.name not in config.attribute_names]
        self._fallback = None
        if self.fallback_attributes:
            logger.info("the fusion policy does not fuse %s: the %r rule does", self.fallback_attributes,
                        fallback_method)
            keep = {a: None for a in self.fallback_attributes}
            self._fallback = SimpleFusion(self.schema.restrict(keep), run_sources, fallback_method)

    # ------------------------------------------------------------------ description
    def params(self) -> dict:
        return {
            **super().params(),
            "run_sources": list(self.run_sources),
            "model": self._model_key(),
            "revision": self.revision,
            "weights": self.weights_id(),
            "fallback": {"method": self.fallback_method, "attributes": self.fallback_attributes},
        }

    def _model_key(self) -> str:
        """The policy's name in the fingerprint: a Hub id or ``"demo"``; a local folder is named by its weights
        alone (``weights_id``), so a moved or copied folder changes nothing."""
        if self.model_ref is None:
            return "<in-memory>"
        if self.model_name != DEMO_POLICY and self.revision is None:
            return "<local folder>"
        return self.model_name

    def weights_id(self) -> str:
        """What identifies the weights in the fingerprint: a content hash for local files and in-memory models
        (``dir-...``), the resolved commit for a Hub id (``hub-<repo>@<commit>``)."""
        if self._weights is None:
            self._weights = self._model.weights_fingerprint()
        return self._weights

    def input_columns(self) -> list[str]:
        cols = [probs_column(s) for s in self.run_sources] + ["quality", "flags"]
        if self.config.embedding_dim:
            cols.append("embedding")
        return cols

    # ------------------------------------------------------------------ execution
    def _device(self) -> str:
        if self.device == "auto":
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    def load(self) -> None:
        try:
            self.setup()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the policy did not load: one clear line
            from ..loading import model_load_error

            raise model_load_error("fusion policy", self.model_name or "<in-memory>", exc) from exc

    def setup(self) -> None:
        if self._model is not None:
            return
        from ..models.fusion import CharattrFusionModel

        key = (self.model_ref, self.revision, self._device(), os.getpid())
        with _CACHE_LOCK:
            model = _CACHE.get(key)
            if model is None:
                logger.info("loading fusion policy %s (revision %s)", self.model_ref, self.revision or "default")
                model = CharattrFusionModel.from_pretrained(self.model_ref)
                model = model.to(self._device()).eval()
                _CACHE[key] = model
        if model.config.to_diff_dict().get("attributes") != self.config.to_diff_dict().get("attributes"):
            raise RuntimeError(f"the policy at {self.model_ref} changed since the stage was built; rebuild the stage")
        self._model = model

    def fuse(self, batch: dict[str, list]) -> dict[str, list[np.ndarray | None]]:
        self.setup()
        if self.config.embedding_dim:
            size = next((len(e) for e in batch.get("embedding") or () if e is not None), None)
            if size is not None and size != self.config.embedding_dim:
                raise ValueError(
                    f"the fusion policy {self.model_ref or '<in-memory>'} reads {self.config.embedding_dim}-dim image "
                    f"embeddings (those of the CLIP model it was trained with), but this run's model gives {size}: "
                    "annotate with that model, or train a policy on this one"
                )
        # only the run's sources: a stale probs_<source> column from an earlier run must not leak in
        visible = {k: v for k, v in batch.items() if not k.startswith("probs_") or k[6:] in self.sources}
        fused = self._model.fuse_columns(visible, batch_size=self.batch_size)
        out = {a.name: fused[a.name] for a in self.schema if a.name in fused}
        if self._fallback is not None:
            out.update(self._fallback.fuse(batch))
        return out

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.model_ref is not None:
            state["_model"] = None  # reloaded lazily (once per process) from the path / hub id
        return state

    def __repr__(self) -> str:
        return f"PolicyFusion(model={self.model_ref or '<in-memory>'!r}, revision={self.revision!r})"
