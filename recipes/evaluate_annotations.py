"""Measure annotation accuracy against ground truth: per attribute, per source, per group.

An annotated dataset that carries its ground truth (a ``truth`` column, as with the synthetic sample),
broken down by the ``style`` column when there is one:

    python recipes/evaluate_annotations.py --dataset outputs/annotated --output_dir outputs/eval

Ground truth kept elsewhere, joined by id (a Parquet/JSONL/CSV file or a dataset folder with an ``id``
column and a ``truth`` struct, or one column per attribute holding label indices or label names):

    python recipes/evaluate_annotations.py --dataset outputs/annotated \
        --labels path/to/labels.parquet --labels_id_column id \
        --group_by none --abstain_threshold 0.7 --output_dir outputs/eval

Options can come from a YAML file (keys are the option names below), command-line flags overriding it:

    printf 'dataset: outputs/annotated\noutput_dir: outputs/eval\nabstain_threshold: 0.7\n' > eval.yaml
    python recipes/evaluate_annotations.py --config eval.yaml --sources clip fused

Writes ``eval.md`` (the tables printed here) and ``eval.json`` (every number, with reliability bins and
coverage/accuracy curves) to ``--output_dir``. Works offline: the metrics ship with the package.
Counting: rows with null truth are skipped per attribute; null predictions count as wrong (``missing``),
except in ECE and coverage, where they are abstentions.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class EvaluateArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Annotated dataset (required): the annotation output folder, Parquet/JSONL file(s), a folder "
            "saved with save_to_disk, or a Hub dataset id."
        },
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset (and of --labels) to read."})
    output_dir: str = field(default="outputs/eval", metadata={"help": "Where eval.md and eval.json are written."})
    labels: Optional[str] = field(
        default=None,
        metadata={
            "help": "Ground truth to join by id instead of the dataset's 'truth' column: a dataset path with an id "
            "column and a 'truth' struct or one column per attribute (label indices or label names)."
        },
    )
    labels_id_column: str = field(default="id", metadata={"help": "Id column of --labels."})
    id_column: str = field(default="id", metadata={"help": "Id column of --dataset, matched with --labels_id_column."})
    schema: Optional[str] = field(
        default=None,
        metadata={
            "help": "Attribute schema (shipped name or YAML path). Default: rebuilt from the dataset's ClassLabel "
            "names; multi-label presence thresholds are then 0.5, so pass the schema if it used others."
        },
    )
    group_by: str = field(
        default="auto",
        metadata={
            "help": "Column to break results down by (a dotted path reaches into a struct: truth.art_style). "
            "'auto': 'style' when present; 'none': no breakdown. The group 'all' is always reported."
        },
    )
    sources: list[str] = field(
        default_factory=list,
        metadata={"help": "Only these sources (clip, tags, blip2, fused). Default: every source present."},
    )
    attributes: list[str] = field(
        default_factory=list, metadata={"help": "Only these attributes. Default: every attribute with ground truth."}
    )
    abstain_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Confidence below which a decision is withheld: coverage = share of decisions kept, and "
            "accuracy is then measured on the kept ones. Multi-label: per-label decisions."
        },
    )
    num_bins: int = field(default=15, metadata={"help": "Equal-width bins of the expected calibration error."})


def main(argv: list[str] | None = None) -> int:
    from charattr_hf.cli import parse_args
    from charattr_hf.errors import UserError

    args = parse_args([EvaluateArguments], argv, description=__doc__.split("\n\n")[0])
    if not args.dataset:
        raise UserError("--dataset is required (or 'dataset:' in --config): the annotated dataset to score")
    from charattr_hf.checks import check_input, check_schema, check_writable
    from charattr_hf.options import InputSpec

    check_input(InputSpec(dataset=args.dataset, split=args.split))
    if args.labels:
        check_input(InputSpec(dataset=args.labels))
    check_schema(args.schema)
    check_writable(args.output_dir, "--output_dir")
    # imported after parsing: datasets and pyarrow take seconds that --help need not wait
    from charattr_hf.evaluation import EvaluationError, evaluate_annotations, to_markdown, write_report

    try:
        report = evaluate_annotations(
            args.dataset,
            schema=args.schema,
            labels=args.labels,
            labels_id_column=args.labels_id_column,
            id_column=args.id_column,
            group_by=args.group_by,
            sources=args.sources or None,
            attributes=args.attributes or None,
            abstain_threshold=args.abstain_threshold,
            num_bins=args.num_bins,
            split=args.split,
        )
    except (EvaluationError, FileNotFoundError, KeyError) as exc:
        raise UserError(str(exc).strip("'\"")) from exc
    print(to_markdown(report))
    md, js = write_report(report, args.output_dir)
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    from charattr_hf.cli import run_main

    sys.exit(run_main(main))
