"""Configuration of the learned fusion policy (:class:`CharattrFusionConfig`).

The config is the policy's whole input/output contract: which attributes it fuses (label names, single- or
multi-label, decision threshold), which sources it weighs, which context it sees (quality measurements, a
flag vocabulary, optionally the CLIP image embedding) and how big it is. Everything needed to turn pipeline
columns into model inputs is stored here, so a checkpoint on the Hub is usable without the YAML schema that
trained it.

It also carries provenance for the model card: ``training_info`` (what it was trained on, one entry per
training round, so continued training keeps its history) and ``eval_results`` (measured metrics records,
rendered as the card's metrics table).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from transformers import PretrainedConfig

#: The sources of a config made without naming any (transformers makes one to find which values differ from the
#: defaults). Frozen: a saved config whose sources equal it leaves them out of config.json, and loads them from here.
DEFAULT_SOURCES = ("clip", "tagger", "tags", "blip2")

__all__ = ["CharattrFusionConfig", "DEFAULT_SOURCES", "DEFAULT_QUALITY_FIELDS"]

#: Kept in sync with ``charattr_hf.schema.QUALITY_FIELDS`` (not imported: the schema module imports datasets).
DEFAULT_QUALITY_FIELDS = ("brightness", "contrast", "saturation", "colorfulness", "sharpness")


class CharattrFusionConfig(PretrainedConfig):
    r"""Configuration of :class:`~charattr_hf.models.fusion.CharattrFusionModel`.

    Args:
        attributes (`list[dict]`):
            One entry per fused attribute: ``{"name": str, "labels": [str, ...], "multi_label": bool,
            "threshold": float}``. Usually built with :meth:`from_schema`.
        sources (`list[str]`):
            Source names, in order; the model reads ``probs_<source>`` for each.
        quality_fields (`list[str]`):
            Fields of the ``quality`` struct used as context.
        flag_vocab (`list[str]`):
            Flags (from the ``flags`` column) encoded as a multi-hot vector; flags outside the vocabulary share
            one extra "other" slot.
        embedding_dim (`int`, defaults to 0):
            Size of the ``embedding`` column (CLIP image embedding) fed to the context encoder through a linear
            projection; 0 means the embedding is not used.
        embedding_proj_dim (`int`, defaults to 16):
            Size of that projection.
        hidden_size (`int`, defaults to 64):
            Width of the context encoder.
        num_hidden_layers (`int`, defaults to 2):
            Number of linear layers of the context encoder (each followed by GELU).
        hidden_dropout_prob (`float`, defaults to 0.1):
            Dropout in the context encoder.
        use_source_probs_in_context (`bool`, defaults to True):
            Feed every source's probability vectors (and the availability mask) to the context encoder. They
            are the strongest hint of "which kind of image" this is (e.g. the sources' art-style distributions).
        use_correction (`bool`, defaults to True):
            Learn a per-attribute label-by-label correction of the pooled log-probabilities (fixes systematic
            confusions such as orange read as red).
        use_linear_pool (`bool`, defaults to True):
            Add a learned multiple of the log of the gated *linear* mixture of the sources to the logits, next to
            the log-linear pool. The log-linear pool is right for agreeing, calibrated evidence; the linear one
            is robust where the sources' vectors carry noise off their top label (it cannot let one source's
            noise dominate a label). Starts at 0.
        prob_floor (`float`, defaults to 1e-4):
            Source probabilities are clipped to ``[prob_floor, 1 - prob_floor]`` before taking logs, so one
            source's hard zero cannot veto a label on its own.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the context encoder's initial weights.
        schema_name, schema_fingerprint (`str`, *optional*):
            The attribute schema the policy was built from (provenance, shown on the model card).
        policy_version (`str`, *optional*):
            Free-form version of this policy; feedback logs record it so that each event can be traced to the
            policy that produced it.
        training_info (`list[dict]`, *optional*):
            One entry per training round (kind, rows, events, seed, ...). Continued training appends.
        eval_results (`list[dict]`, *optional*):
            Measured metrics records ``{"attribute", "method", "accuracy", "ece", "n", ...}`` rendered on the
            model card.
    """

    model_type = "charattr_fusion"

    def __init__(
        self,
        attributes: Sequence[Mapping[str, Any]] | None = None,
        sources: Sequence[str] = DEFAULT_SOURCES,
        quality_fields: Sequence[str] = DEFAULT_QUALITY_FIELDS,
        flag_vocab: Sequence[str] = (),
        embedding_dim: int = 0,
        embedding_proj_dim: int = 16,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        hidden_dropout_prob: float = 0.1,
        use_source_probs_in_context: bool = True,
        use_correction: bool = True,
        use_linear_pool: bool = True,
        prob_floor: float = 1e-4,
        initializer_range: float = 0.02,
        schema_name: str | None = None,
        schema_fingerprint: str | None = None,
        policy_version: str | None = None,
        training_info: list[dict] | None = None,
        eval_results: list[dict] | None = None,
        **kwargs: Any,
    ):
        self.attributes = [_normalise_attribute(a) for a in (attributes or [])]
        names = [a["name"] for a in self.attributes]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate attribute names in fusion config: {names}")
        self.sources = [str(s) for s in sources]
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources must be a non-empty list of distinct names, got {self.sources}")
        self.quality_fields = [str(q) for q in quality_fields]
        self.flag_vocab = [str(f) for f in flag_vocab]
        if int(embedding_dim) < 0 or int(hidden_size) < 1 or int(num_hidden_layers) < 1:
            raise ValueError("embedding_dim must be >= 0, hidden_size and num_hidden_layers >= 1")
        self.embedding_dim = int(embedding_dim)
        self.embedding_proj_dim = int(embedding_proj_dim)
        self.hidden_size = int(hidden_size)
        self.num_hidden_layers = int(num_hidden_layers)
        self.hidden_dropout_prob = float(hidden_dropout_prob)
        self.use_source_probs_in_context = bool(use_source_probs_in_context)
        self.use_correction = bool(use_correction)
        self.use_linear_pool = bool(use_linear_pool)
        if not 0.0 < float(prob_floor) < 0.5:
            raise ValueError(f"prob_floor must be in (0, 0.5), got {prob_floor}")
        self.prob_floor = float(prob_floor)
        self.initializer_range = float(initializer_range)
        self.schema_name = schema_name
        self.schema_fingerprint = schema_fingerprint
        self.policy_version = policy_version
        self.training_info = list(training_info or [])
        self.eval_results = list(eval_results or [])
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ derived sizes
    @property
    def attribute_names(self) -> list[str]:
        return [a["name"] for a in self.attributes]

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def num_sources(self) -> int:
        return len(self.sources)

    @property
    def max_labels(self) -> int:
        """Label axis length of the padded ``(batch, attribute, label)`` tensors."""
        return max((len(a["labels"]) for a in self.attributes), default=1)

    @property
    def num_flags(self) -> int:
        """Multi-hot flag width: the vocabulary plus one "other flag" slot."""
        return len(self.flag_vocab) + 1

    def attribute_index(self, name: str) -> int:
        for i, a in enumerate(self.attributes):
            if a["name"] == name:
                return i
        raise KeyError(f"the fusion policy has no attribute {name!r}; attributes: {self.attribute_names}")

    def label_names(self, name: str) -> list[str]:
        return list(self.attributes[self.attribute_index(name)]["labels"])

    # ------------------------------------------------------------------ schema bridge
    @classmethod
    def from_schema(
        cls,
        schema: Any,
        sources: Iterable[str] = DEFAULT_SOURCES,
        **kwargs: Any,
    ) -> "CharattrFusionConfig":
        """A config for every attribute of a :class:`charattr_hf.schema.Schema` (or a schema name/path)."""
        if isinstance(schema, (str, bytes)) or schema is None or hasattr(schema, "__fspath__"):
            from ...schema import load_schema  # local import: keeps this file free of pipeline imports

            schema = load_schema(schema)
        attributes = [
            {
                "name": attr.name,
                "labels": attr.label_names,
                "multi_label": attr.multi_label,
                "threshold": attr.threshold,
            }
            for attr in schema
        ]
        kwargs.setdefault("schema_name", schema.name)
        kwargs.setdefault("schema_fingerprint", schema.fingerprint())
        return cls(attributes=attributes, sources=list(sources), **kwargs)

    def to_schema(self):
        """The :class:`~charattr_hf.schema.Schema` the policy's outputs are typed by (labels only, no prompts)."""
        from ...schema import Attribute, Label, Schema

        attrs = tuple(
            Attribute(
                a["name"],
                tuple(Label(n, n.replace("_", " ")) for n in a["labels"]),
                bool(a["multi_label"]),
                threshold=float(a["threshold"]),
            )
            for a in self.attributes
        )
        return Schema(self.schema_name or "fusion-policy", attrs)

    def check_schema(self, schema: Any) -> None:
        """Raise if an attribute present in both ``schema`` and the policy has different labels or kind."""
        for attr in schema:
            if attr.name not in self.attribute_names:
                continue
            mine = self.attributes[self.attribute_index(attr.name)]
            if list(mine["labels"]) != attr.label_names or bool(mine["multi_label"]) != attr.multi_label:
                raise ValueError(
                    f"attribute {attr.name!r}: the fusion policy was trained with labels {mine['labels']} "
                    f"(multi_label={mine['multi_label']}), the schema has {attr.label_names} "
                    f"(multi_label={attr.multi_label}); retrain the policy for this schema"
                )


def _normalise_attribute(spec: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or "name" not in spec or "labels" not in spec:
        raise ValueError(f"each fusion attribute needs 'name' and 'labels', got {spec!r}")
    labels = [str(n) for n in spec["labels"]]
    multi = bool(spec.get("multi_label", False))
    if len(labels) < (1 if multi else 2):
        raise ValueError(f"attribute {spec['name']!r}: needs at least {1 if multi else 2} labels")
    threshold = float(spec.get("threshold", 0.5))
    return {"name": str(spec["name"]), "labels": labels, "multi_label": multi, "threshold": threshold}
