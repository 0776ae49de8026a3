"""What the app holds while it runs, apart from the web page: the pipeline, the annotated output, the review queue,
the feedback log and the current policy. Every user action is a method here, so the API, the page and the
command line share one implementation (and tests can call it without a browser)."""

from __future__ import annotations

import collections
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UserError
from ..options import demo_warnings
from ..pipeline import PipelineOptions
from ..schema import probs_column
from .annotator import AnnotatedImage, Annotator, fused_vectors
from .data import AnnotatedStore, rows_with_ids
from .feedback import MODEL_INPUT_COLUMNS, FeedbackLog, continue_policy, decision_events
from .review import ReviewItem, ReviewQueue

logger = logging.getLogger(__name__)

__all__ = ["AppConfig", "AppState"]


@dataclass
class AppConfig:
    """Library-level options of the review app (the recipe maps its command line onto these)."""

    dataset: str | None = None
    split: str = "train"
    feedback_log: str = "outputs/feedback.parquet"
    policy_dir: str | None = None
    epsilon: float = 0.1
    pool_size: int = 10000
    page_size: int = 24
    reviewer: str = "app"
    train_epochs: int | None = None  # None: the library's default (FusionTrainingConfig), as benchmarked
    train_patience: int | None = None
    seed: int = 0
    pipeline: PipelineOptions = field(default_factory=PipelineOptions)


class AppState:
    def __init__(self, config: AppConfig, warm_up: bool = True):
        self.config = config
        self.log = FeedbackLog(config.feedback_log)  # checked first: a bad path fails before models load
        if config.dataset:
            self.store = AnnotatedStore(config.dataset, config.split)
        else:
            self.store = None
        self.annotator = Annotator(config.pipeline, warm_up=warm_up)
        self.schema = self.annotator.schema
        self._check_store_schema()
        #: what a person reading the labels must know (the demo models know only synthetic drawings)
        self.warnings = demo_warnings(config.pipeline, self.annotator.sources)
        for warning in self.warnings:
            logger.warning("DEMO MODEL: %s", warning)
        self.policy_dir = Path(config.policy_dir or self.log.path.with_name(self.log.path.stem + "-policy"))
        self.uploads: "collections.OrderedDict[str, AnnotatedImage]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._training = threading.Lock()
        self.queue = None
        if self.store is not None:
            self.queue = ReviewQueue(self.store, self.schema, self.annotator.sources, epsilon=config.epsilon,
                                     pool_size=config.pool_size)
            self.queue.rescore(self._fuse, self.policy_version)

    # ------------------------------------------------------------------ policy
    @property
    def policy(self):
        """The current ``CharattrFusionModel``, or None when fusion is a fixed rule."""
        from ..stages.policy import PolicyFusion

        fusion = self.annotator.fusion
        if isinstance(fusion, PolicyFusion):
            fusion.setup()
            return fusion._model
        return None

    @property
    def policy_version(self) -> str:
        model = self.policy
        if model is None:
            return f"simple-{getattr(self.annotator.fusion, 'method', 'confidence')}"
        return str(model.config.policy_version or "untrained")

    def _fuse(self, columns: dict[str, list]) -> dict[str, list]:
        return fused_vectors(self.annotator.fusion, columns)

    def _check_store_schema(self) -> None:
        if self.store is None:
            return
        for info in self.store.attributes:
            if info.name not in self.schema:
                continue
            mine = tuple(self.schema[info.name].label_names)
            if mine != info.labels:
                raise UserError(
                    f"{self.store.source}: attribute {info.name!r} has labels {list(info.labels)} but the app's "
                    f"schema {self.schema.name!r} has {list(mine)}: start the app with the --schema (and --model) "
                    "the dataset was annotated with"
                )
        if not any(a.name in self.schema for a in self.store.attributes):
            raise UserError(f"{self.store.source} has none of the attributes of schema {self.schema.name!r}: "
                            "pass the --schema it was annotated with")

    # ------------------------------------------------------------------ annotate
    def annotate_files(self, paths: Sequence[str], tags: str | None = None) -> list[AnnotatedImage]:
        datas, names = [], []
        for p in paths:
            path = Path(p)
            if not path.is_file():
                raise UserError(f"no such image file: {p}")
            datas.append(path.read_bytes())
            names.append(path.name)
        items = self.annotator.annotate(datas, [tags] * len(datas), names)
        with self._lock:
            for it in items:
                self.uploads[it.id] = it
                self.uploads.move_to_end(it.id)
            while len(self.uploads) > 512:
                self.uploads.popitem(last=False)
        return items

    def annotate_json(self, path: str, tags: str | None = None) -> dict:
        """The ``/annotate`` answer: ``{attribute: {label, confidence, probabilities, sources}}`` plus ``_image``
        (id, size, flags, error, predicted tags, policy version)."""
        t0 = time.perf_counter()
        item = self.annotate_files([path], tags)[0]
        out = self.annotator.result(item)
        out["_image"] = {
            "id": item.id, "width": item.row.get("width"), "height": item.row.get("height"),
            "flags": item.row.get("flags") or [], "error": item.row.get("error"),
            "predicted_tags": self.predicted_tags(item), "fusion": self.policy_version,
            "seconds": round(time.perf_counter() - t0, 4), "warnings": list(self.warnings),
        }
        return out

    def predicted_tags(self, item: AnnotatedImage) -> list[str]:
        """Tags of the image: the tagger's general tags when a tagger ran, else the schema's first tag of each
        fused label, most confident first."""
        tagged = item.row.get("tagger_tags")
        if tagged:
            return list(tagged)
        scored = []
        for attr in self.schema:
            vec = item.fused.get(attr.name)
            if vec is None:
                continue
            if attr.multi_label:
                picks = [(i, vec[i]) for i in range(attr.num_labels) if vec[i] >= attr.threshold]
            else:
                i = int(np.argmax(vec))
                picks = [(i, vec[i])]
            for i, p in picks:
                tags = attr.labels[i].tags
                if tags:
                    scored.append((float(p), tags[0]))
        return [t for _, t in sorted(scored, key=lambda x: -x[0])]

    # ------------------------------------------------------------------ feedback
    def _events(self, row_id, attribute, shown, propensity, verdict, label, policy_version) -> list[dict]:
        return decision_events(self.schema, row_id, attribute, shown, propensity, verdict, label or None,
                               policy_version=policy_version, reviewer=self.config.reviewer)

    def decide_upload(self, upload_id: str, attribute: str, verdict: str, label: "str | list[str] | None" = None
                      ) -> dict:
        """A decision on an uploaded image's fused label (shown deterministically: propensity 1)."""
        item = self.uploads.get(upload_id)
        if item is None:
            raise UserError(f"no uploaded image {upload_id!r} in this session: annotate it first")
        if attribute not in self.schema:
            raise UserError(f"unknown attribute {attribute!r}; attributes: {self.schema.attribute_names}")
        attr = self.schema[attribute]
        vec = item.fused.get(attribute)
        if vec is None:
            raise UserError(f"no source had evidence for {attribute!r} on this image: nothing to judge")
        shown = int(np.argmax(vec))  # multi-label: the most likely label's presence
        events = self._events(upload_id, attribute, shown, 1.0, verdict, label, self.policy_version)
        self.log.add_rows([item.row], self.schema, self.annotator.sources)
        total = self.log.append(events)
        return {"logged": len(events), "events": total, "id": upload_id, "attribute": attribute,
                "shown": attr.labels[shown].name, "verdict": events[0]["verdict"]}

    def next_items(self, n: int = 1, skip: Sequence[str] = ()) -> list[ReviewItem]:
        if self.queue is None:
            raise UserError("no annotated dataset: start the app with --dataset to review one")
        return self.queue.next(int(n), self.log.decided(), set(skip))

    def decide(self, token: str, verdict: str, label: "str | list[str] | None" = None) -> dict:
        """A decision on a review item handed out by :meth:`next_items` (what was shown and its propensity are
        the server's record of it, not the client's)."""
        if self.queue is None:
            raise UserError("no annotated dataset: start the app with --dataset to review one")
        stale = UserError(f"unknown or stale review item {token!r} (decided already, or the policy changed): "
                          "fetch the next item again")
        for take in (self.queue.lookup, self.queue.take):  # a mistake (a verdict, a label) leaves the item open
            item = take(token)
            if item is None:  # decided once: a second decision on it is refused
                raise stale
            events = self._events(item.id, item.attribute, item.shown, item.propensity, verdict, label,
                                  item.policy_version)
        total = self.log.append(events)
        return {"logged": len(events), "events": total, "id": item.id, "attribute": item.attribute,
                "shown": item.shown_label, "verdict": events[0]["verdict"]}

    def status(self) -> dict:
        decided = self.log.decided()
        out = {"events": len(self.log), "decisions": len(decided), "policy_version": self.policy_version,
               "feedback_log": str(self.log.path), "warnings": list(self.warnings)}
        if self.queue is not None:
            out.update(self.queue.stats())
            out["remaining"] = self.queue.remaining(decided)
        return out

    # ------------------------------------------------------------------ training
    def retrain(self, command: str | None = None) -> dict:
        """Continue the policy from the whole feedback log, save it as the next version, use it from now on, and
        re-score the review queue. One at a time: a second request while one trains (another click, another
        process on the same policy folder) is refused with a message, and a saved version is never overwritten."""
        if not self._training.acquire(blocking=False):
            raise UserError("the policy is being trained from the log already: wait for that round to finish")
        try:
            with _FolderLock(self.policy_dir, "the policy is being trained from the log by another process: wait for "
                             "it to finish"):
                return self._retrain(command)
        finally:
            self._training.release()

    def _retrain(self, command: str | None) -> dict:
        from .. import fusion_training as ft
        from ..stages.policy import PolicyFusion

        t0 = time.perf_counter()
        self.log.compact()
        sources = self.annotator.sources
        columns = list(MODEL_INPUT_COLUMNS) + [probs_column(s) for s in sources]
        ids = {i for i, _ in self.log.decided()}
        tables = []
        if self.store is not None:
            # the review pool's other rows too: continued training keeps the earlier answers on images without
            # feedback (fusion_training.feedback), and without them it would have none to keep
            pool = set(self.queue.ids) if self.queue is not None else set()
            tables.append(rows_with_ids(self.store, ids | pool, columns))
        uploads = self.log.read_rows()
        if uploads is not None:
            tables.append(uploads)
        current = self.policy
        version = _free_version(self.policy_dir, _next_version(current))
        limits = {"max_epochs": self.config.train_epochs, "patience": self.config.train_patience}
        args = ft.FusionTrainingConfig(seed=self.config.seed, **{k: v for k, v in limits.items() if v is not None})
        model, info = continue_policy(current, self.schema, self.log, tables, sources, args=args,
                                      policy_version=version, command=command)
        out_dir = self.policy_dir / version
        tmp = self.policy_dir / f".{version}.tmp-{os.getpid()}"
        try:
            model.save_pretrained(tmp, model_card_id=str(out_dir))
            os.rename(tmp, out_dir)  # whole, and never over a saved version (the lock keeps others out meanwhile)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.annotator.set_fusion(PolicyFusion(self.schema, sources, model=model))
        if self.queue is not None:
            self.queue.rescore(self._fuse, self.policy_version)
        info.update({"saved_to": str(out_dir), "seconds": round(time.perf_counter() - t0, 2)})
        return info


def _next_version(model) -> str:
    if model is None:
        return "app-v1"
    rounds = len(model.config.training_info or [])
    base = str(model.config.policy_version or "v")
    stem = base.rsplit("-v", 1)[0] if "-v" in base else "app"
    return f"{stem}-v{rounds + 1}"


def _free_version(folder: Path, version: str) -> str:
    """``version``, or the next ``-vN`` after it that has no folder yet (the app restarted on the same log names its
    first round as it did before)."""
    m = re.fullmatch(r"(.*-v)(\d+)", version)
    stem, n = (m.group(1), int(m.group(2))) if m else (version + "-v", 1)
    while (folder / version).exists():
        n += 1
        version = f"{stem}{n}"
    return version


class _FolderLock:
    """An exclusive lock on ``folder`` across processes (``fcntl.flock`` on ``folder/.lock``), refused at once
    with ``message`` when another holder has it; released when the holder ends, even by ``kill -9``."""

    def __init__(self, folder: Path, message: str):
        self.folder, self.message, self._fh = folder, message, None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.folder / ".lock", "a+")
        try:
            import fcntl
        except ImportError:  # not on POSIX: this process's own lock is all there is
            return self
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._fh.close()
            raise UserError(self.message) from exc
        return self

    def __exit__(self, *exc):
        self._fh.close()  # closing releases the lock
        return False
