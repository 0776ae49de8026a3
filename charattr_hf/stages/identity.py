"""Row identity: a stable ``id`` and the source ``path`` for every row, errors included."""

from __future__ import annotations

from datasets import Value

from .base import Stage


class Identify(Stage):
    """``id`` = the source's id column when it has one, else the image path, else the row index."""

    name = "identify"
    cpu_bound = True

    def features(self) -> dict:
        return {"id": Value("string"), "path": Value("string")}

    def input_columns(self) -> list[str]:
        return ["image", "index", "_source_id"]

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        images = batch.get("image") or []
        indices = batch["index"]
        source_ids = batch.get("_source_id")
        ids, paths = [], []
        for i, index in enumerate(indices):
            cell = images[i] if i < len(images) else None
            path = cell.get("path") if isinstance(cell, dict) else (cell if isinstance(cell, str) else None)
            paths.append(path or None)
            sid = source_ids[i] if source_ids is not None else None
            ids.append(str(sid) if sid is not None else (path or str(index)))
        return {"id": ids, "path": paths}
