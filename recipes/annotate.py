"""Annotate an image dataset with character attributes.

One machine, the embedded synthetic sample and the shipped demo model:

    accelerate launch recipes/annotate.py

A real dataset with a real CLIP checkpoint, on every GPU of a machine (on a machine without GPU the same
command starts that many CPU processes):

    accelerate launch --num_processes 8 recipes/annotate.py \
        --dataset path/to/images_or_parquet_or_hub_id --tags_column tags \
        --model ViT-B-32 --pretrained laion2b_s34b_b79k --schema default \
        --output_dir outputs/annotated --batch_size 256

Options can come from a YAML file, command-line flags overriding it:

    accelerate launch recipes/annotate.py --config recipes/configs/annotate_sample.yaml --limit 100

Rerunning the same command after an interruption resumes it: finished chunks are kept.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from charattr_hf.captions import CaptionOptions
from charattr_hf.cli import parse_args, run_main
from charattr_hf.options import InputSpec, PipelineOptions, RunOptions


@dataclass
class CaptionArguments:
    write_captions: Optional[str] = field(
        default=None,
        metadata={"help": "Write kohya-style caption files <name>.txt beside the images' names in this folder (the "
                  "tagger's tags merged with the data's own; see the caption options); they are recorded as "
                  "written by charattr-hf, so annotating the folder again does not read them as a person's tags."},
    )
    overwrite_captions: bool = field(
        default=False,
        metadata={"help": "Replace caption files a person wrote there (charattr-hf's own are always updated)."},
    )


def check_captions(options: PipelineOptions, captions: CaptionArguments, caption_options: CaptionOptions,
                   sources: list[str]) -> None:
    """--write_captions (#9, #20): the caption options are valid, a source they name runs (``sources``: the run's),
    the folder is writable."""
    if not captions.write_captions:
        return
    from charattr_hf.captions import caption_sources, check_caption_options
    from charattr_hf.checks import check_writable
    from charattr_hf.errors import UserError

    check_caption_options(caption_options)
    if "tagger" in (caption_sources(caption_options.caption_sources) or ()):
        if not options.tagger or "tagger" not in sources:
            raise UserError("--caption_sources names the tagger, but no tagger runs: give --tagger (e.g. --tagger "
                            "demo) and keep tagger in --sources")
    check_writable(captions.write_captions, "--write_captions")


def plugin_options() -> dict[str, type]:
    """The option dataclasses of the registered sources that are not fields of PipelineOptions (plugins')."""
    from charattr_hf.sources import registered_sources

    return {name: s.options for name, s in registered_sources().items()
            if s.options is not None and not issubclass(PipelineOptions, s.options)}


@dataclass
class PublishArguments:
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Publish the result to this Hub dataset repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from charattr_hf.sources import load_plugins, plugins_in_args

    load_plugins(plugins_in_args(argv))  # before parsing: a plugin's sources bring their own options
    plugins = plugin_options()
    spec, options, run_opts, captions, caption_options, publish, *mine = parse_args(
        [InputSpec, PipelineOptions, RunOptions, CaptionArguments, CaptionOptions, PublishArguments,
         *plugins.values()], argv,
        description=__doc__.split("\n\n")[0],
    )
    options = replace(options, source_options=dict(zip(plugins, mine)))
    if run_opts.quiet:
        from charattr_hf.cli import quiet_progress

        quiet_progress()
    from charattr_hf.checks import check_run

    selection = check_run(spec, options, run_opts)  # before anything heavy: mistakes end here, in a second
    check_captions(options, captions, caption_options, selection.names)

    from charattr_hf.distributed import relaunch_as_cpu_processes

    relaunch_as_cpu_processes(os.path.abspath(__file__), argv)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub", "open_clip"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # open_clip logs through the root logger itself (logging.info): keep those quiet below WARNING without
    # silencing this library's own INFO lines (which input columns or files were used, skipped sources)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.name != "root" or record.levelno >= logging.WARNING)

    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.distributed import get_state
    from charattr_hf.output import hold_output

    state = get_state()
    threads = configure_torch_threads(run_opts.torch_threads)
    run_opts = replace(run_opts, num_proc=run_opts.num_proc or max(1, threads))
    # the folder is held from before the input is read until the captions and the upload are done
    with hold_output(run_opts.output_dir) as held:
        return _annotate(spec, options, run_opts, captions, caption_options, publish, argv, state, threads, held,
                         selection)


def _annotate(spec, options, run_opts, captions, caption_options, publish, argv, state, threads, held,
              selection) -> int:
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.summary import format_summary

    start = time.perf_counter()
    result, pipeline = annotate_to_disk(None, run_opts.output_dir, input_spec=spec, options=options, run_options=run_opts,
                                        card_extra={"command": _command_line(argv)}, held=held, selection=selection)
    if not state.is_main_process:
        return 1 if result.failed_chunks else 0
    if not result.data_files:
        bad = sorted(set(result.failed_chunks) | set(result.missing_chunks))
        print(f"annotation incomplete: {len(bad)} chunk(s) not finished {bad[:10]}; rerun the same command "
              "to retry them (finished chunks are kept)", file=sys.stderr)
        return 1
    output_dir = Path(run_opts.output_dir)
    stats = result.summary
    processed = result.total_rows_processed
    speed = result.total_images_per_second if processed else None
    busy = sum(1 for r in result.ranks if r.get("chunks_processed"))
    print()
    print(f"annotated dataset: {output_dir.resolve()}")
    print(f"  load it with: datasets.load_dataset({str(run_opts.output_dir)!r}, split={spec.split!r})")
    desc = pipeline.description
    print(f"  schema: {desc['schema']}   model: {desc['model']}"
          + (f"   tagger: {desc['tagger']}" if desc.get("tagger") else "") + f"   sources: {', '.join(desc['sources']) or '-'}"
          f"   fusion: {desc['fusion']}   processes: {state.num_processes}   threads: {threads}")
    skipped = f" ({result.chunks_skipped} chunk(s) reused from an earlier run)" if result.chunks_skipped else ""
    if result.already_complete:
        print("  this run: nothing to do (an earlier launch of this command finished it)")
    else:
        print(f"  this run: {processed} images in {max([r['seconds'] for r in result.ranks] or [result.seconds]):.1f}s"
              f"{skipped}" + (f", by all {state.num_processes} processes" if state.num_processes > 1 else ""))
    if state.num_processes > 1 and processed and busy < state.num_processes:
        print(f"  {state.num_processes - busy} of {state.num_processes} processes had no chunk to do "
              f"(fewer pending chunks than processes; lower --chunk_size to share the work)")
    print()
    print(format_summary(stats, speed, warnings=desc.get("warnings", [])))
    run_info = {
        "rows": result.rows,
        "rows_processed": processed,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(speed, 3) if speed else None,
        "processes": state.num_processes,
        "ranks": result.ranks,  # each process's record: its chunks, rows, seconds (and a stream's rows and shards read)
        "torch_threads": threads,
        "wall_seconds": round(time.perf_counter() - start, 3),
        "warnings": list(desc.get("warnings", [])),
    }
    (output_dir / "run_info.json").write_text(json.dumps(run_info, indent=2))
    if captions.write_captions:
        from charattr_hf.captions import write_captions

        done = write_captions(run_opts.output_dir, captions.write_captions, split=spec.split,
                              overwrite=captions.overwrite_captions, options=caption_options, schema=options.schema)
        print(f"\ncaptions: {done.written} written, {done.unchanged} unchanged, {done.skipped_existing} kept (a "
              f"person's; --overwrite_captions replaces them), {done.skipped_rows} rows with an error "
              f"-> {Path(captions.write_captions).resolve()}")
    if publish.push_to_hub:
        from charattr_hf.hub import push_dataset

        url = push_dataset(run_opts.output_dir, publish.push_to_hub, private=publish.hub_private)
        print(f"\npublished: {url}")
    return 0


def _command_line(argv: list[str] | None) -> str:
    """This run's command, for the dataset card (it reproduces the labels; any process count gives the same)."""
    import os
    import shlex

    script = os.path.relpath(__file__)
    if script.startswith(".."):
        script = "recipes/annotate.py"
    args = sys.argv[1:] if argv is None else list(argv)
    return f"accelerate launch {shlex.quote(script)} {shlex.join(args)}".rstrip()


if __name__ == "__main__":
    sys.exit(run_main(main))
