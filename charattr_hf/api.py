"""The Python entry point: ``annotate(dataset, ...) -> Dataset``, the same pipeline the recipe runs.

:func:`annotate_to_disk` drives one run: it holds the output folder (once per launch), opens the input, builds the
pipeline, runs it (:func:`charattr_hf.runner.run`), writes the dataset card from the run's result and marks the run
complete.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from datasets import Dataset, IterableDataset

from .distributed import get_state
from .image_access import ANY
from .inputs import (InputSpec, _normalise, image_access, image_folder_root, input_identity, kept_column_names,
                     open_dataset)
from .options import RunOptions, demo_warnings
from .output import OutputHold, complete_run, hold_output
from .pipeline import Pipeline, PipelineOptions, build_pipeline
from .runner import RunResult, run
from .sources import Selection

logger = logging.getLogger(__name__)

__all__ = ["annotate", "annotate_to_disk"]


def annotate_to_disk(
    dataset: "str | Dataset | IterableDataset | None" = None,
    output_dir: str | Path = "outputs/annotated",
    *,
    input_spec: InputSpec | None = None,
    options: PipelineOptions | None = None,
    input_id: str | None = None,
    chunk_size: int = 1024,
    num_proc: int | None = None,
    max_shard_rows: int = 100_000,
    progress: bool = True,
    prefetch: bool | None = None,
    run_options: RunOptions | None = None,
    card_extra: dict | None = None,
    held: OutputHold | None = None,
    selection: Selection | None = None,
    **option_kwargs: Any,
) -> tuple[RunResult, Pipeline]:
    """Annotate into ``output_dir`` (resumable) and return the run result and the pipeline used.

    ``dataset`` is a path, a Hub id, None (the synthetic sample) or an already opened ``datasets`` object;
    ``input_spec`` carries column names, split, streaming and limit; other keyword arguments are
    :class:`PipelineOptions` fields (``model``, ``schema``, ``fusion``, ``batch_size``...). ``input_id``
    names the input for resuming; it is required for an ``IterableDataset`` object, which has no fingerprint.
    ``prefetch`` runs the CPU stages of the next chunk while the models work on the current one (default:
    on when a GPU is used). ``run_options`` (a :class:`RunOptions`) gives ``chunk_size``, ``num_proc``,
    ``max_shard_rows``, ``progress`` and ``prefetch`` at once, as the recipe parses them. ``card_extra``: more
    rows for the card's settings table; its ``command`` entry is shown as the command that reproduces the labels
    (the recipe passes its command line; by default, this call written out). ``held``: the caller holds
    ``output_dir`` already (:func:`charattr_hf.output.hold_output`; the recipe does, for its later steps too);
    otherwise it is held for the call. ``selection``: the sources chosen when the options were checked.

    The shipped demo model or demo tagger on an input without ground truth (real images, most likely) is run,
    with a warning in the log, in the pipeline description (``pipeline.description["warnings"]``) and in the
    dataset card.
    """
    if run_options is not None:
        chunk_size, num_proc, max_shard_rows = run_options.chunk_size, run_options.num_proc, run_options.max_shard_rows
        progress, prefetch = not run_options.quiet, run_options.prefetch_flag
    if options is not None and option_kwargs:
        raise TypeError(f"pass either options= or option keywords, not both (got {sorted(option_kwargs)})")
    if held is not None and not held.covers(output_dir):
        raise ValueError(f"held is the hold of {held.path}, not of {output_dir}")
    options = options or PipelineOptions(**option_kwargs)
    spec = replace(input_spec) if input_spec is not None else InputSpec()
    with contextlib.nullcontext(held) if held is not None else hold_output(output_dir):
        ds, input_id, access, id_root = _open(dataset, spec, input_id)
        pipeline = _pipeline(options, spec, ds, access, id_root, selection)
        card_extra = dict(card_extra or {})
        if "command" not in card_extra:
            card_extra["command"] = _python_call(dataset, spec, output_dir, options, input_id, chunk_size)
        result = run(ds, pipeline, output_dir, input_id=input_id, chunk_size=chunk_size, num_proc=num_proc,
                     split=spec.split, max_shard_rows=max_shard_rows, progress=progress, prefetch=prefetch,
                     # the files of an input opened here, read as they are, are independent shards
                     independent_shards=not isinstance(dataset, (Dataset, IterableDataset)) and spec.limit is None)
        if get_state().is_main_process and result.data_files:
            _card_and_completion(result, pipeline, spec.split, max_shard_rows, card_extra)
    return result, pipeline


def _open(dataset, spec: InputSpec, input_id: str | None):
    """(the rows, their identity, where the files they name may be read, the folder relative ids start from)."""
    if not isinstance(dataset, (Dataset, IterableDataset)):
        if dataset is not None:
            spec.dataset = str(dataset)
        ds = open_dataset(spec)
        if input_id is None:
            input_id = ds._fingerprint if isinstance(ds, Dataset) else input_identity(spec)
        return ds, input_id, image_access(spec), image_folder_root(spec, ds)
    # a datasets object in memory is the caller's own: the paths in it are read wherever they are, unless
    # image_root names where they may be
    access = ANY if not spec.image_root else image_access(replace(spec, dataset=None))
    ds = _normalise(dataset, spec)
    if spec.limit is not None:
        if spec.limit < 0:
            raise ValueError("limit must be >= 0")
        ds = ds.take(spec.limit) if isinstance(ds, IterableDataset) else ds.select(range(min(spec.limit, len(ds))))
    if input_id is None:
        if isinstance(ds, IterableDataset):
            raise ValueError(
                "an IterableDataset has no fingerprint: pass input_id='...' naming this stream, so that a rerun "
                "resumes the same input and never reuses chunks of another one"
            )
        input_id = ds._fingerprint  # datasets' identity of the rows (no public accessor exists)
    return ds, input_id, access, None


def _pipeline(options: PipelineOptions, spec: InputSpec, ds, access, id_root, selection) -> Pipeline:
    """The run's pipeline, its messages logged once (main process)."""
    state = get_state()
    pipeline = build_pipeline(
        options,
        input_columns=list(ds.features),
        # probs_<name> columns are fused as sources (see build_pipeline), unless --keep_columns names them; the
        # person's own tags and caption stay beside the annotations (captions and exports merge them, #20)
        keep_columns=[c for c in ds.features if c not in ("image", "_source_id")
                      and (not c.startswith("probs_") or c in kept_column_names(spec))],
        writer=f"rank-{state.process_index}",
        id_root=id_root,
        image_access=access,
        selection=selection,
    )
    warnings = demo_warnings(options, pipeline.sources) if "truth" not in ds.features else []
    if warnings:
        pipeline.description["warnings"] = warnings
    if state.is_main_process:
        for message in pipeline.messages:
            logger.warning(message)
        for warning in warnings:
            logger.warning("*" * 100)
            logger.warning("DEMO MODEL ON REAL IMAGES: %s", warning)
            logger.warning("*" * 100)
    return pipeline


def _card_and_completion(result: RunResult, pipeline: Pipeline, split: str, max_shard_rows: int,
                         card_extra: dict) -> None:
    """Main process, data files assembled: the summary and the card (kept as it is when an earlier launch completed
    the run), then the run is marked complete and its work folder removed."""
    from .hub import write_dataset_card
    from .summary import summarize

    result.summary = summarize(result.data_files)
    if result.already_complete:
        return
    write_dataset_card(result.output_dir, split, pipeline, extra=card_extra, files=result.data_files,
                       stats=result.summary)
    complete_run(result.output_dir, result.run_dir, result.fingerprint, split, max_shard_rows, result.data_files,
                 result.rows, result.chunks)


def _python_call(dataset, spec: InputSpec, output_dir, options: PipelineOptions, input_id: str, chunk_size: int) -> str:
    """This call, written out for the dataset card (as a Python comment when the input was an in-memory object)."""
    from dataclasses import fields

    defaults = PipelineOptions()
    opts = ", ".join(f"{f.name}={getattr(options, f.name)!r}" for f in fields(options)
                     if getattr(options, f.name) != getattr(defaults, f.name))
    spec_defaults = InputSpec()
    spec_args = ", ".join(f"{f.name}={getattr(spec, f.name)!r}" for f in fields(spec)
                          if f.name != "dataset" and getattr(spec, f.name) != getattr(spec_defaults, f.name))
    if isinstance(dataset, (Dataset, IterableDataset)):
        source = f"<a datasets object in memory, input id {input_id}>"
    else:
        source = repr(spec.dataset)
    call = (f"annotate_to_disk({source}, {str(output_dir)!r}, input_spec=InputSpec({spec_args}), "
            f"options=PipelineOptions({opts}), chunk_size={chunk_size})")
    return ("# Python, charattr-hf\nfrom charattr_hf.api import annotate_to_disk\n"
            "from charattr_hf.inputs import InputSpec\nfrom charattr_hf.pipeline import PipelineOptions\n" + call)


def annotate(
    dataset: "str | Dataset | IterableDataset | None" = None,
    output_dir: str | Path | None = None,
    **kwargs: Any,
) -> Dataset:
    """Annotate images and return the annotated ``datasets.Dataset``.

    Example::

        from charattr_hf import annotate
        ds = annotate(None, limit=32)            # the synthetic sample, with the shipped demo model
        ds = annotate("path/to/images", model="ViT-B-32", pretrained="laion2b_s34b_b79k")

    With ``output_dir`` the result is also written there (Parquet shards + dataset card) and the run can be
    resumed; without it, work files go to a temporary folder and the result is loaded into memory.
    """
    spec_keys = set(InputSpec.__dataclass_fields__) - {"dataset"}
    spec = InputSpec(**{k: kwargs.pop(k) for k in list(kwargs) if k in spec_keys})
    if output_dir is None and isinstance(dataset, IterableDataset):
        kwargs.setdefault("input_id", f"stream-{uuid.uuid4().hex}")  # a throw-away folder: nothing to resume
    with tempfile.TemporaryDirectory(prefix="charattr-") as tmp:
        result, _ = annotate_to_disk(dataset, output_dir or tmp, input_spec=spec, **kwargs)
        if not result.data_files:
            raise RuntimeError(
                f"annotation incomplete: chunks {result.failed_chunks or result.missing_chunks} failed; "
                "see the log, and call again with the same output_dir to retry them"
            )
        if result.rows == 0:  # `datasets` cannot read an empty Parquet split; build the typed empty table
            from .summary import features_of

            features = features_of(result.data_files)
            return Dataset.from_dict({c: [] for c in features}, features=features)
        return Dataset.from_parquet([str(f) for f in result.data_files], keep_in_memory=output_dir is None)
