"""Row identity: a stable ``id`` and the source ``path`` for every row, errors included."""

from __future__ import annotations

import os

from datasets import Value

from .base import Stage


class Identify(Stage):
    """``id`` = the source's id column when it has one, else the image path, else the row index.

    ``root``: the local folder the images were read from. A path under it becomes an id relative to it
    (``cats/001.png``), the same on every machine and mount point; ``path`` keeps the full path.
    """

    name = "identify"
    cpu_bound = True

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = os.path.abspath(os.fspath(root)) if root is not None else None

    def params(self) -> dict:
        # whether ids are made relative, not where the folder is (which is not what the ids depend on)
        return {"relative_ids": True} if self.root is not None else {}

    def _id_of(self, path: str) -> str:
        if self.root is None or not os.path.isabs(path):
            return path  # only real file paths under the folder; stored relative strings stay as they are
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:  # another drive (Windows)
            return path
        outside = rel == os.curdir or rel == os.pardir or rel.startswith(os.pardir + os.sep)
        return path if outside else rel.replace(os.sep, "/")

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
            ids.append(str(sid) if sid is not None else (self._id_of(path) if path else str(index)))
        return {"id": ids, "path": paths}
