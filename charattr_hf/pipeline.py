"""Composing the stages: which sources run, in which order, and how one chunk of rows goes through them.

A chunk is a plain ``datasets.Dataset``; every stage is one batched ``map`` over it:

    identify + decode + the sources' CPU stages   (one map; with num_proc, in forkserver workers that never see torch)
    -> the sources' model stages (clip, tagger, blip2, ...)   (accelerator, main process, models loaded once)
    -> fusion                   (simple rules, or the learned policy)

The sources are plugins (:mod:`charattr_hf.sources`): :func:`build_pipeline` asks each chosen one to add its
stages to a :class:`~charattr_hf.sources.BuildContext`, then makes the one decode stage that reads and decodes each
image once for all of them (a pixel column per distinct :class:`~charattr_hf.stages.pixels.PixelSpec` they asked
for).

Each map gets ``new_fingerprint`` = hash(chunk scratch folder, step, stage fingerprint), so ``datasets`` never
hashes a model, and writes its Arrow cache into that scratch folder, which the runner deletes after the chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from datasets import Dataset, Features, Image, Value

from .errors import UserError
from .image_access import ANY, ImageAccess
from .schema import Schema, load_schema, probs_column, probs_sources
from .sources import BuildContext, PipelineOptions, Selection, SkipSource, source_options
from .stages.base import ERROR, TEMP_PREFIX, Compose, Stage, WithoutColumns, stable_hash
from .stages.decode import DecodeStage
from .stages.fusion import FusionStage, SimpleFusion
from .stages.identity import Identify

logger = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineOptions", "build_pipeline"]


@dataclass
class Pipeline:
    schema: Schema
    cpu: list[Stage]
    device: list[Stage]
    fusion: FusionStage
    keep_columns: Sequence[str] = ()
    keep_embedding: bool = False
    keep_images: bool = False
    description: dict = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    #: output columns of the sources besides their probs_<source> (tagger_tags, ...)
    columns: dict = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        # every source that ran, also those a learned policy ignores (their probs_<source> are kept)
        return list(getattr(self.fusion, "run_sources", self.fusion.sources))

    def load(self) -> None:
        """Load every model of the run in this process, before the first chunk: a model that cannot be loaded
        raises :class:`~charattr_hf.errors.ModelLoadError` once, here, instead of failing every chunk."""
        for stage in [*self.device, self.fusion]:
            stage.load()

    def fingerprint(self) -> str:
        return stable_hash(
            [s.fingerprint() for s in self.cpu],
            [s.fingerprint() for s in self.device],
            self.fusion.fingerprint(),
            sorted(self.keep_columns),
            self.keep_embedding,
            self.keep_images,
        )

    def output_features(self, input_features: Features) -> Features:
        emb = None
        if self.keep_embedding:
            emb_feat = next((s.features()["embedding"] for s in self.device if "embedding" in s.features()), None)
            emb = emb_feat.length if emb_feat is not None else None
        feats = dict(self.schema.output_features(self.sources, embedding_dim=emb))
        feats.update(self.columns)
        for name in self.description.get("given_sources", ()):
            column, want = probs_column(name), self.schema.probs_feature()
            have = input_features.get(column)
            if not isinstance(have, dict) or set(have) != set(want) or any(
                type(have[a]).__name__ not in ("List", "LargeList", "Sequence")
                or getattr(have[a], "length", -1) not in (-1, want[a].length) for a in want
            ):
                raise UserError(
                    f"the input column {column} is taken as a source's probabilities, but it does not have the shape "
                    f"of schema {self.schema.name!r} (a struct of one probability list per attribute: "
                    f"{', '.join(f'{a}[{want[a].length}]' for a in want)}); rename or drop the column, or name the "
                    "sources to use with --sources"
                )
        clash = sorted(c for c in self.keep_columns if c in feats or c == "image")
        if clash:
            raise ValueError(f"input column(s) {clash} would overwrite output columns of the same name; rename them")
        if self.keep_images:
            feats["image"] = Image()
        for col in self.keep_columns:
            if col in input_features:
                feats[col] = input_features[col]
        return Features(feats)

    # -- one chunk ------------------------------------------------------------------------------
    def _steps(self, rows: int, num_proc: int | None) -> list[tuple[Stage, int, int | None]]:
        cpu = Compose(self.cpu)
        parallel = cpu.cpu_bound and num_proc and num_proc > 1 and rows >= 64 * num_proc
        steps: list[tuple[Stage, int, int | None]] = [(cpu, 64, num_proc if parallel else None)]
        steps += [(stage, getattr(stage, "batch_size", 32) * 4, None) for stage in self.device]
        steps.append((self.fusion, 1024, None))
        return steps

    def _run_steps(self, chunk: Dataset, scratch: Path, steps, first: int, last: int, output_features,
                   workers=None) -> Dataset:
        scratch.mkdir(parents=True, exist_ok=True)
        for i in range(first, last):
            stage, batch_size, procs = steps[i]
            # working columns (and the image bytes) are dropped by the last stage that reads them, so they are
            # not copied into every later stage's Arrow file
            later = {c for s, _, _ in steps[i + 1 :] for c in s.input_columns()} | set(output_features)
            present = set(chunk.column_names) | set(stage.features())
            drop = sorted(c for c in present if (c.startswith(TEMP_PREFIX) or c == "image") and c not in later)
            chunk = self._map(chunk, stage, scratch, step=i, batch_size=batch_size, num_proc=procs, remove=drop,
                              workers=workers)
        return chunk

    def cpu_part(self, chunk: Dataset, scratch: Path, num_proc: int | None = None, workers=None,
                 output_features: Features | None = None) -> Dataset:
        """The CPU stages (decode, tags) over ``chunk``; may run ahead of the device part of another chunk.

        With ``num_proc`` > 1 the rows are shared out over worker processes started by a forkserver (never
        forked from this process, so safe while a model runs in another thread): ``workers``, a
        :class:`~charattr_hf.workers.CpuWorkers` kept for the whole run, or a pool made for this call.
        ``output_features``: :meth:`output_features` of the input, when the caller has them (once per run)."""
        steps = self._steps(len(chunk), num_proc)
        if output_features is None:
            output_features = self.output_features(chunk.features)
        return self._run_steps(chunk, scratch, steps, 0, 1, output_features, workers=workers)

    def device_part(self, chunk: Dataset, scratch: Path, output_features: Features) -> Dataset:
        """The model stages and fusion over the output of :meth:`cpu_part`, then the output columns."""
        steps = self._steps(len(chunk), None)
        chunk = self._run_steps(chunk, scratch, steps, 1, len(steps), output_features)
        missing = {c: f for c, f in output_features.items() if c not in chunk.column_names}
        for col, feat in missing.items():
            chunk = chunk.add_column(col, [None] * len(chunk), feature=feat)
        # with keep_images, the image column is the decode stage's: the bytes it read (never a file the row had no
        # right to name) and decoded (null for a row it could not decode), so the output stands on its own and
        # every reader can decode every image in it
        chunk = chunk.select_columns(list(output_features))
        if chunk.features != output_features:
            chunk = chunk.cast(output_features)
        return chunk

    def _map(self, ds: Dataset, stage: Stage, scratch: Path, *, step: int, batch_size: int, num_proc=None,
             remove=(), workers=None) -> Dataset:
        feats = {c: f for c, f in ds.features.items()}
        feats.update(stage.features())
        feats = {c: f for c, f in feats.items() if c not in remove}
        feats[ERROR] = Value("string")
        # the Arrow file lives in this chunk's scratch folder, which is never read back (load_from_cache_file is
        # off) and is deleted after the chunk: the fingerprint only has to name this step of this chunk
        fp = stable_hash(str(scratch), step, stage.fingerprint(), sorted(remove))
        own = set(remove) & set(stage.features())  # written and read within this step, needed by no later one
        if own:
            stage = WithoutColumns(stage, own)
        if num_proc and num_proc > 1:
            from .workers import CpuWorkers

            own = workers is None
            workers = workers if workers is not None else CpuWorkers(num_proc)
            try:
                return workers.map(ds, stage, features=Features(feats), batch_size=batch_size, remove=list(remove),
                                   scratch=scratch, fingerprint=fp)
            finally:
                if own:
                    workers.close()
        return ds.map(
            stage,
            batched=True,
            batch_size=batch_size,
            features=Features(feats),
            remove_columns=[c for c in remove if c in ds.column_names] or None,
            new_fingerprint=fp,
            cache_file_name=str(scratch / f"{stage.name}-{fp}.arrow"),
            load_from_cache_file=False,
            desc=stage.name,
        )


def build_pipeline(
    options: PipelineOptions,
    input_columns: Sequence[str],
    keep_columns: Sequence[str] = (),
    writer: str = "main",
    id_root: str | None = None,
    image_access: "ImageAccess | None" = None,
    selection: Selection | None = None,
) -> Pipeline:
    """Choose and configure the stages for ``options``: each registered source (:mod:`charattr_hf.sources`) that
    ``--sources`` names, or, without it, that the options and ``input_columns`` make available, adds its stages;
    a source that cannot run is skipped with a message (a :class:`UserError` when ``--sources`` names it). One
    decode stage reads and decodes each image for all of them.

    ``id_root``: the local folder the input was read from; image paths under it give relative ids.
    ``image_access``: where the image files that rows name by path may be read from
    (:func:`charattr_hf.inputs.image_access`); default: anywhere (a ``datasets`` object of the caller's).
    ``selection``: the sources chosen when the options were checked (:func:`charattr_hf.sources.check_sources`);
    default: chosen now."""
    from .sources import check_precision, load_plugins, select_sources

    check_precision(options.precision, options.device)
    load_plugins(options.plugins)
    if selection is None:
        selection = select_sources(options)
    schema = load_schema(options.schema or _shipped_schema(selection, options) or "default")
    ctx = BuildContext(options, schema, list(input_columns), writer=writer,
                       embedding=options.keep_embedding or _fusion_wants_embedding(options))
    sources = _build_sources(ctx, selection)
    given = [] if selection.named else _given_sources(input_columns, [*sources, *probs_sources(keep_columns)])
    if given:
        ctx.messages.append(f"the input's own {', '.join('probs_' + g for g in given)} column(s) are fused as "
                            "source(s) (name the sources with --sources to leave them out)")
        sources += given
    if not sources:
        ctx.messages.append("no source can run: rows get decode results and quality flags only.")
    fusion = _fusion_stage(options, schema, sources, ctx.device)
    description = {
        "schema": schema.name,
        "schema_fingerprint": schema.fingerprint(),
        "model": None,
        "sources": sources,
        "fusion": options.fusion or f"simple ({options.fusion_method})",
        **ctx.description,
    }
    if given:
        description["given_sources"] = given
    decode = DecodeStage(ctx.pixel_specs, access=image_access or ANY, keep_image=options.keep_images,
                         prompts=ctx.embedded_prompts)
    return Pipeline(
        schema=schema,
        cpu=[Identify(root=id_root), decode, *ctx.cpu],
        device=ctx.device,
        fusion=fusion,
        keep_columns=list(keep_columns),
        keep_embedding=options.keep_embedding,
        keep_images=options.keep_images,
        description=description,
        messages=ctx.messages,
        columns=ctx.columns,
    )


def _build_sources(ctx: BuildContext, selection: Selection) -> list[str]:
    """Each chosen source adds its stages to ``ctx``; the names of those that did. A source that cannot run on the
    input leaves nothing behind."""
    built: list[str] = []
    for source in selection.sources:
        before = (len(ctx.cpu), len(ctx.device), dict(ctx.columns), dict(ctx.description), dict(ctx.pixel_specs),
                  ctx.embedded_prompts)
        try:
            source.build(ctx, source_options(source, ctx.options))
        except SkipSource as skip:
            if selection.named:
                raise UserError(f"--sources {source.name}: it cannot run: {skip}; leave it out of --sources") from None
            del ctx.cpu[before[0]:], ctx.device[before[1]:]
            ctx.columns, ctx.description, ctx.pixel_specs, ctx.embedded_prompts = before[2:]
            ctx.messages.append(f"{source.title or source.name} source skipped: {skip}.")
            continue
        built.append(source.name)
    return built


def _fusion_stage(options: PipelineOptions, schema: Schema, sources: list[str], device: list[Stage]) -> FusionStage:
    """The learned policy of ``--fusion`` (checked against the run's embedding size), else the ``--fusion_method``
    rule."""
    if not options.fusion:
        return SimpleFusion(schema, sources, method=options.fusion_method)
    from .loading import model_load_error
    from .stages.policy import PolicyFusion

    try:
        fusion = PolicyFusion(schema, sources, options.fusion, revision=options.fusion_revision)
    except ValueError:
        raise  # the policy does not fit the run's schema: its own message says how
    except Exception as exc:  # noqa: BLE001 - a policy that cannot be found, resolved or read
        raise model_load_error("fusion policy", options.fusion, exc) from exc
    dim = fusion.config.embedding_dim
    have = next((s.features()["embedding"].length for s in device if "embedding" in s.features()), None)
    if dim and have is not None and dim != have:
        raise UserError(
            f"the fusion policy {options.fusion} reads {dim}-dim image embeddings (those of the CLIP model it was "
            f"trained with), but --model {options.model} gives {have}: annotate with that model, or "
            "train a policy on this one"
        )
    return fusion


def _given_sources(input_columns: Sequence[str], running: Sequence[str]) -> list[str]:
    """Sources the input brings: its ``probs_<name>`` columns (a model of the user's, run beforehand) for names no
    running source writes (``running``; a column kept as it is with ``--keep_columns`` counts as such). Their
    shape is checked against the schema in :meth:`Pipeline.output_features`."""
    return [n for n in probs_sources(input_columns) if n.isidentifier() and n not in running]


def _shipped_schema(selection: Selection, options: PipelineOptions) -> str | None:
    """The schema the first chosen source's model ships (a CLIP folder's ``charattr_schema.yaml``), if any."""
    for source in selection.sources:
        found = source.shipped_schema(source_options(source, options)) if source.shipped_schema else None
        if found:
            return found
    return None


def _fusion_wants_embedding(options: PipelineOptions) -> bool:
    if not options.fusion:
        return False
    from .loading import model_load_error
    from .stages.policy import policy_uses_embedding

    try:
        return policy_uses_embedding(options.fusion, options.fusion_revision)
    except Exception as exc:  # noqa: BLE001 - not found, not reachable, no access, unreadable
        raise model_load_error("fusion policy", options.fusion, exc) from exc
