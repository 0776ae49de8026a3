"""Annotate an image dataset with character attributes.

One machine, the embedded synthetic sample and the shipped demo model:

    accelerate launch recipes/annotate.py

A real dataset with a real CLIP checkpoint, on every GPU of a machine (or CPU processes with --cpu):

    accelerate launch --multi_gpu --num_processes 8 recipes/annotate.py \
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
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from charattr_hf.cli import configure_torch_threads, parse_args


@dataclass
class DataArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Images to annotate: a local image folder, Parquet/Arrow file(s) or folder, a folder saved with "
            "save_to_disk, or a Hub dataset id. Empty: the embedded synthetic sample."
        },
    )
    split: str = field(default="train", metadata={"help": "Split to annotate."})
    dataset_config: Optional[str] = field(default=None, metadata={"help": "Config (subset) name of a Hub dataset."})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Revision (branch, tag, commit) of a Hub dataset."})
    image_column: str = field(default="image", metadata={"help": "Column holding images (or paths/bytes)."})
    tags_column: Optional[str] = field(
        default=None, metadata={"help": "Column of danbooru-style tags (default: 'tags' or similar when present)."}
    )
    caption_column: Optional[str] = field(
        default=None, metadata={"help": "Column of free-text captions (default: 'caption'/'text' when present)."}
    )
    id_column: Optional[str] = field(default=None, metadata={"help": "Column holding a stable row id (default: 'id' when present, else the path, else the index)."})
    keep_columns: list[str] = field(
        default_factory=list, metadata={"help": "Extra input columns to copy into the output (truth/style are kept when present)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the input instead of downloading/preparing it first."})
    limit: Optional[int] = field(default=None, metadata={"help": "Annotate only the first N rows."})
    sample_size: int = field(default=256, metadata={"help": "Rows of the synthetic sample when no --dataset is given."})


@dataclass
class ModelArguments:
    model: str = field(
        default="demo",
        metadata={
            "help": "open_clip model: 'demo' (shipped, synthetic domain only), a built-in name such as ViT-B-32 "
            "(with --pretrained), 'hf-hub:org/repo' or 'local-dir:/path'. Empty string: no CLIP source."
        },
    )
    pretrained: Optional[str] = field(
        default=None, metadata={"help": "Pretrained tag for a built-in model, e.g. laion2b_s34b_b79k ('none' = random weights)."}
    )
    model_revision: Optional[str] = field(default=None, metadata={"help": "Revision of an hf-hub: model."})
    schema: Optional[str] = field(
        default=None,
        metadata={"help": "Attribute schema: a shipped name (default, synthetic) or a YAML path. Default: the model's own schema when it ships one, else 'default'."},
    )
    no_tags: bool = field(default=False, metadata={"help": "Do not use the tags/caption columns as a source."})
    blip2: Optional[str] = field(
        default=None, metadata={"help": "Add the BLIP-2 question-answering source, e.g. Salesforce/blip2-opt-2.7b (slow)."}
    )
    blip2_revision: Optional[str] = field(default=None, metadata={"help": "Revision of the BLIP-2 model."})
    fusion: Optional[str] = field(
        default=None,
        metadata={
            "help": "Learned fusion policy: a folder saved with save_pretrained, a Hub model id, or 'demo' (shipped: "
            "demo model + tags, synthetic schema; write ./demo for a local folder of that name). Default: the "
            "--fusion_method rule."
        },
    )
    fusion_revision: Optional[str] = field(default=None, metadata={"help": "Revision of the fusion policy on the Hub."})
    fusion_method: str = field(
        default="confidence",
        metadata={"help": "Fusion rule when no --fusion policy is given: confidence (weighted mean), mean, vote."},
    )
    tagger: Optional[str] = field(
        default=None,
        metadata={
            "help": "Add the WD tagger source: a Hub id (SmilingWolf/wd-vit-tagger-v3, with --tagger_revision), "
            "'hf-hub:org/repo', 'local-dir:/path' (config.json, model.safetensors, selected_tags.csv) or 'demo' "
            "(shipped, synthetic domain only)."
        },
    )
    tagger_revision: Optional[str] = field(default=None, metadata={"help": "Revision (commit) of a Hub tagger."})
    tagger_threshold: float = field(default=0.35, metadata={"help": "Score above which a general tag goes to tagger_tags."})
    tagger_character_threshold: float = field(
        default=0.85, metadata={"help": "Score above which a character tag goes to tagger_characters."}
    )
    tagger_mcut: bool = field(default=False, metadata={"help": "Use MCut thresholds for the tagger's tags instead."})
    write_captions: Optional[str] = field(
        default=None,
        metadata={"help": "Write kohya-style caption files <name>.txt (the tagger's tags, joined by ', ') into this folder."},
    )
    overwrite_captions: bool = field(default=False, metadata={"help": "Replace caption files that already exist there."})
    precision: str = field(default="auto", metadata={"help": "Model precision: auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16."})
    batch_size: int = field(default=32, metadata={"help": "Images per model forward pass."})
    keep_embedding: bool = field(default=False, metadata={"help": "Store the CLIP image embedding (float16) in the output."})


@dataclass
class RunArguments:
    output_dir: str = field(default="outputs/annotated", metadata={"help": "Where the annotated dataset is written."})
    num_proc: Optional[int] = field(
        default=None, metadata={"help": "Worker processes for decoding and tag parsing (default: cores per process)."}
    )
    chunk_size: int = field(default=1024, metadata={"help": "Rows per work unit (the unit of resume)."})
    max_shard_rows: int = field(default=100_000, metadata={"help": "Rows per output Parquet file."})
    keep_images: bool = field(default=False, metadata={"help": "Copy the image bytes into the output."})
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Model-output cache keyed by image sha256 (default: $HF_HOME/charattr_hf)."}
    )
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the model-output cache."})
    prefetch: str = field(
        default="auto",
        metadata={"help": "Decode the next chunk while the model works on this one: auto (on with a GPU), on, off."},
    )
    torch_threads: int = field(default=0, metadata={"help": "torch threads per process on CPU; 0 = cores / local processes."})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Publish the result to this Hub dataset repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})


def main(argv: list[str] | None = None) -> int:
    data_args, model_args, run_args = parse_args(
        [DataArguments, ModelArguments, RunArguments], argv, description=__doc__.split("\n\n")[0]
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub", "open_clip", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from charattr_hf.api import annotate_to_disk
    from charattr_hf.distributed import get_state
    from charattr_hf.inputs import InputSpec
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.summary import format_summary

    state = get_state()
    threads = configure_torch_threads(run_args.torch_threads)
    num_proc = run_args.num_proc or max(1, threads)
    spec = InputSpec(
        dataset=data_args.dataset,
        split=data_args.split,
        config=data_args.dataset_config,
        revision=data_args.dataset_revision,
        image_column=data_args.image_column,
        tags_column=data_args.tags_column,
        caption_column=data_args.caption_column,
        id_column=data_args.id_column,
        keep_columns=data_args.keep_columns,
        streaming=data_args.streaming,
        limit=data_args.limit,
        sample_size=data_args.sample_size,
    )
    options = PipelineOptions(
        schema=model_args.schema,
        model=model_args.model or None,
        pretrained=model_args.pretrained,
        model_revision=model_args.model_revision,
        tags=not model_args.no_tags,
        blip2=model_args.blip2,
        blip2_revision=model_args.blip2_revision,
        fusion=model_args.fusion,
        fusion_revision=model_args.fusion_revision,
        fusion_method=model_args.fusion_method,
        batch_size=model_args.batch_size,
        precision=model_args.precision,
        keep_embedding=model_args.keep_embedding,
        keep_images=run_args.keep_images,
        cache_dir=run_args.cache_dir,
        use_cache=not run_args.no_cache,
        tagger=model_args.tagger or None,
        tagger_revision=model_args.tagger_revision,
        tagger_threshold=model_args.tagger_threshold,
        tagger_character_threshold=model_args.tagger_character_threshold,
        tagger_mcut=model_args.tagger_mcut,
    )
    if model_args.write_captions and not model_args.tagger:
        from charattr_hf.errors import UserError

        raise UserError("--write_captions writes the tagger's tags: give --tagger too (e.g. --tagger demo)")
    start = time.perf_counter()
    result, pipeline = annotate_to_disk(
        None,
        run_args.output_dir,
        input_spec=spec,
        options=options,
        chunk_size=run_args.chunk_size,
        num_proc=num_proc,
        max_shard_rows=run_args.max_shard_rows,
        progress=not run_args.quiet,
        prefetch={"auto": None, "on": True, "off": False}[run_args.prefetch],
    )
    if not state.is_main_process:
        return 1 if result.failed_chunks else 0
    if not result.data_files:
        bad = sorted(set(result.failed_chunks) | set(result.missing_chunks))
        print(f"annotation incomplete: {len(bad)} chunk(s) not finished {bad[:10]}; rerun the same command "
              "to retry them (finished chunks are kept)", file=sys.stderr)
        return 1
    stats = json.loads((Path(run_args.output_dir) / "summary.json").read_text())
    print()
    print(f"annotated dataset: {Path(run_args.output_dir).resolve()}")
    print(f"  load it with: datasets.load_dataset({str(run_args.output_dir)!r}, split={data_args.split!r})")
    desc = pipeline.description
    print(f"  schema: {desc['schema']}   model: {desc['model']}" + (f"   tagger: {desc['tagger']}" if desc.get("tagger") else "")
          + f"   sources: {', '.join(desc['sources']) or '-'}"
          f"   fusion: {desc['fusion']}   processes: {state.num_processes}   threads: {threads}")
    skipped = f" ({result.chunks_skipped} chunk(s) reused from an earlier run)" if result.chunks_skipped else ""
    print(f"  this run: {result.rows_processed} images in {result.seconds:.1f}s{skipped}")
    print()
    print(format_summary(stats, result.images_per_second if result.rows_processed else None))
    run_info = {
        "rows": result.rows,
        "rows_processed": result.rows_processed,
        "seconds": round(result.seconds, 3),
        "images_per_second": round(result.images_per_second, 3) if result.rows_processed else None,
        "processes": state.num_processes,
        "torch_threads": threads,
        "wall_seconds": round(time.perf_counter() - start, 3),
    }
    (Path(run_args.output_dir) / "run_info.json").write_text(json.dumps(run_info, indent=2))
    if model_args.write_captions:
        from charattr_hf.captions import write_captions

        done = write_captions(run_args.output_dir, model_args.write_captions, split=data_args.split,
                              overwrite=model_args.overwrite_captions)
        print(f"\ncaptions: {done.written} written, {done.unchanged} unchanged, {done.skipped_existing} kept "
              f"(already there; --overwrite_captions replaces them), {done.skipped_rows} rows without tags "
              f"-> {Path(model_args.write_captions).resolve()}")
    if run_args.push_to_hub:
        from charattr_hf.hub import push_dataset

        url = push_dataset(run_args.output_dir, run_args.push_to_hub, private=run_args.hub_private)
        print(f"\npublished: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
