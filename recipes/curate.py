"""Curate an annotated dataset: global near-duplicate removal and explained filters -> train / quarantine.

Annotate first (keep the embeddings for semantic duplicates), then curate, then publish:

    accelerate launch recipes/annotate.py --dataset path/to/images --output_dir outputs/annotated --keep_embedding
    python recipes/curate.py --dataset outputs/annotated --output_dir outputs/curated \
        --config recipes/configs/curate.yaml --push_to_hub your-name/your-dataset

``--dataset`` is an annotated output folder or a Hub dataset id; without ``--config`` a default config is used
(exact and near duplicates, semantic ones when there are embeddings, a few quality filters). Read the result with
``datasets.load_dataset("outputs/curated", split="train")`` (and ``split="quarantine"`` for what was removed and
why).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from charattr_hf.cli import parse_args, run_main


@dataclass
class CurateArguments:
    dataset: Optional[str] = field(
        default=None, metadata={"help": "Annotated dataset (required): an output folder of recipes/annotate.py or a Hub id."}
    )
    output_dir: str = field(default="outputs/curated", metadata={"help": "Where the curated dataset is written."})
    curate_config: Optional[str] = field(
        default=None,
        metadata={"help": "Curation YAML (dedup thresholds and filters), also given as --config; default: a built-in "
                          "config.", "config_file": True},
    )
    split: str = field(default="train", metadata={"help": "Split of the annotated dataset to curate."})
    revision: Optional[str] = field(default=None, metadata={"help": "Revision of a Hub dataset."})
    max_shard_rows: int = field(default=100_000, metadata={"help": "Rows per output Parquet file.", "min": 1})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": "Publish the result to this Hub dataset repo id."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})


def _split_config(argv: list[str]) -> list[str]:
    """``--config`` names the curation YAML here (not a file of command-line options)."""
    out = []
    for a in argv:
        if a == "--config":
            out.append("--curate_config")
        elif a.startswith("--config="):
            out.append("--curate_config=" + a.split("=", 1)[1])
        else:
            out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _split_config(list(sys.argv[1:] if argv is None else argv))
    args = parse_args([CurateArguments], argv, description=__doc__.split("\n\n")[0])
    from charattr_hf.errors import UserError

    if not args.dataset:
        raise UserError("--dataset is required: an annotated output folder (recipes/annotate.py) or a Hub dataset id")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub", "faiss", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from charattr_hf.curation.curate import curate

    result = curate(args.dataset, args.output_dir, args.curate_config, split=args.split, revision=args.revision,
                    max_shard_rows=args.max_shard_rows)
    out = Path(args.output_dir)
    print()
    print(f"curated dataset: {out.resolve()}")
    print(f"  rows in: {result.rows}   train: {result.train}   quarantine: {result.quarantine}   "
          f"duplicate groups: {result.groups}")
    removed = ", ".join(f"{k} {v}" for k, v in result.removed_by.items() if v) or "nothing"
    print(f"  removed by: {removed}")
    if not result.train:
        print("  no row was kept (see 'removed by' and the card); datasets cannot load an empty split")
    everything = [k for k, v in result.removed_by.items() if result.rows and v == result.rows]
    for step in everything:
        print(f"  {step} removed every row: its threshold does not suit this data (the shipped config's are for real "
              f"images); change or remove it in the config")
    if result.skipped:
        print(f"  skipped (the dataset cannot take them): {', '.join(step for step, _ in result.skipped)}")
    times = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"  time: {times}")
    split = "train" if result.train else "quarantine"
    print(f"  load it with: datasets.load_dataset({str(args.output_dir)!r}, split={split!r})")
    if args.push_to_hub:
        from charattr_hf.hub import push_dataset

        url = push_dataset(out, args.push_to_hub, private=args.hub_private,
                           commit_message="Upload a dataset curated with charattr-hf")
        print(f"\npublished: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
