"""One image (or a few) through the annotation pipeline, in memory.

The pipeline is built once (models loaded at start-up, warmed up by one image); each request runs the same
stages the batch runner maps over a chunk (identify, decode, tags, models, fusion), called directly on a dict
batch: no ``datasets.map``, no Arrow files, no chunk folders. The fused probability vectors are kept (the runner
keeps only the chosen label and its confidence), so the app can show every label's probability and the review
queue can measure how unsure the policy is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np

from ..pipeline import Pipeline, PipelineOptions, build_pipeline
from ..schema import Schema, probs_column
from ..stages.fusion import FusionStage, decide

logger = logging.getLogger(__name__)

__all__ = ["Annotator", "AnnotatedImage", "fused_vectors", "row_result"]


@dataclass
class AnnotatedImage:
    """One annotated image: the pipeline's output columns for its row, plus the fused probability vectors."""

    row: dict[str, Any]
    fused: dict[str, np.ndarray | None] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.row["id"]


def fused_vectors(fusion: FusionStage, columns: dict[str, list]) -> dict[str, list[np.ndarray | None]]:
    """The fusion stage's probability vectors per attribute and row (None where no source has evidence or the
    image could not be used), for a dict of pipeline columns."""
    fused = fusion.fuse(columns)
    errors = columns.get("error") or []
    out = {}
    for name, vectors in fused.items():
        out[name] = [None if (i < len(errors) and errors[i]) or v is None else np.asarray(v, dtype=np.float64)
                     for i, v in enumerate(vectors)]
    return out


def row_result(schema: Schema, sources: Sequence[str], row: dict, fused: dict[str, np.ndarray | None]) -> dict:
    """The ``/annotate`` answer for one row: per attribute, the label(s), confidence(s), every label's fused
    probability and each source's probabilities (``null`` where a source had no evidence)."""
    out: dict[str, Any] = {}
    for attr in schema:
        vec = fused.get(attr.name)
        label, conf = decide(attr, vec)
        entry: dict[str, Any] = {
            "label": ([attr.labels[i].name for i in label] if attr.multi_label else attr.labels[label].name)
            if label is not None else None,
            "confidence": conf,
            "multi_label": attr.multi_label,
            "probabilities": None if vec is None else {n: round(float(p), 6) for n, p in zip(attr.label_names, vec)},
            "sources": {},
        }
        for source in sources:
            cell = row.get(probs_column(source)) or {}
            svec = cell.get(attr.name)
            entry["sources"][source] = (
                None if svec is None else {n: round(float(p), 6) for n, p in zip(attr.label_names, svec)}
            )
        out[attr.name] = entry
    return out


class Annotator:
    """The pipeline of ``options``, built once, run on images in memory (thread-safe; one request at a time)."""

    def __init__(self, options: PipelineOptions | None = None, warm_up: bool = True):
        options = replace(options) if options is not None else PipelineOptions()
        self.options = options
        self.pipeline: Pipeline = build_pipeline(options, input_columns=["image", "tags", "caption"])
        for message in self.pipeline.messages:
            logger.warning(message)
        self._lock = threading.Lock()
        if warm_up:
            self.warm_up()

    @property
    def schema(self) -> Schema:
        return self.pipeline.schema

    @property
    def fusion(self) -> FusionStage:
        return self.pipeline.fusion

    @property
    def sources(self) -> list[str]:
        """Sources that produce a column for an uploaded image (the tag source only reads given tags)."""
        return list(self.pipeline.sources)

    def set_fusion(self, fusion: FusionStage) -> None:
        """Swap the fusion stage (a retrained policy); the next request uses it."""
        with self._lock:
            self.pipeline.fusion = fusion

    def warm_up(self) -> None:
        from PIL import Image

        img = Image.new("RGB", (64, 64), (200, 180, 160))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        self.annotate([buf.getvalue()])

    def annotate(self, images: Sequence[bytes], tags: Sequence[str | None] | None = None,
                 names: Sequence[str | None] | None = None) -> list[AnnotatedImage]:
        """Annotate raw image files (bytes); ``tags``: danbooru tags or a caption per image (optional);
        ``names``: file names, used for the ids (default: ``upload-<sha256 prefix>``)."""
        n = len(images)
        tags = list(tags) if tags is not None else [None] * n
        names = list(names) if names is not None else [None] * n
        ids = [f"upload-{hashlib.sha256(b).hexdigest()[:16]}" for b in images]
        batch: dict[str, list] = {
            "image": [{"bytes": b, "path": nm} for b, nm in zip(images, names)],
            "tags": [t or None for t in tags],
            "caption": [None] * n,
            "index": list(range(n)),
            "_source_id": ids,
        }
        with self._lock:
            for stage in [*self.pipeline.cpu, *self.pipeline.device]:
                batch.update(stage(batch))
            fused = fused_vectors(self.pipeline.fusion, batch)
            batch.update(self.pipeline.fusion.process(batch))
        keep = [c for c in batch if not c.startswith("_") and c not in ("image", "caption")]
        out = []
        for i in range(n):
            row = {c: batch[c][i] for c in keep}
            out.append(AnnotatedImage(row, {a: fused[a][i] for a in fused}))
        return out

    def result(self, item: AnnotatedImage) -> dict:
        return row_result(self.schema, self.sources, item.row, item.fused)
