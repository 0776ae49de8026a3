"""Export an annotated or curated dataset for training: kohya sd-scripts folders, or an image folder with
metadata.jsonl (datasets' imagefolder, what diffusers' training scripts read).

A LoRA with kohya's sd-scripts (images and captions in DIR/<repeats>_<trigger> <class>/, and DIR/dataset.toml):

    python recipes/export.py --dataset outputs/curated --format kohya --output_dir outputs/lora \
        --trigger mychar --class_token girl --repeats 10 --keep_tokens 1 --caption_blacklist "*_background"

A diffusers fine-tune (load_dataset("imagefolder", data_dir="outputs/hf_train") reads it; caption column: text):

    python recipes/export.py --dataset outputs/curated --format imagefolder --output_dir outputs/hf_train

Options can come from a YAML file, command-line flags overriding it:

    python recipes/export.py --config recipes/configs/export_kohya.yaml --dataset outputs/curated

``--dataset`` is an output folder of recipes/annotate.py or recipes/curate.py, or a Hub id. Each image is the
original file when it is still there unchanged (its sha256 is the one recorded when it was annotated), else the
image bytes the dataset holds (annotate with --keep_images); rows with neither, or with an error, are left out and
counted with their reason.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Optional

from charattr_hf.captions import CaptionOptions
from charattr_hf.cli import parse_args, run_main


@dataclass
class ExportArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Annotated or curated dataset (required): an output folder of recipes/annotate.py or "
                  "recipes/curate.py, or a Hub dataset id."},
    )
    format: str = field(
        default="kohya",
        metadata={"help": "kohya: <repeats>_<trigger> <class>/ folders of images and caption files plus dataset.toml "
                  "for sd-scripts; imagefolder: images plus metadata.jsonl (file_name, text) for datasets and "
                  "diffusers.", "choices": ["kohya", "imagefolder"]},
    )
    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder to write (required): new or empty, or an earlier export with "
                                "--overwrite."}
    )
    split: str = field(default="train", metadata={"help": "Split to export (a curated dataset: train)."})
    revision: Optional[str] = field(default=None, metadata={"help": "Revision of a Hub dataset."})
    repeats: Optional[int] = field(
        default=None,
        metadata={"help": "Repeats per image in the kohya folder name. Default: the row's own repeats (an input "
                  "folder in kohya's layout), else 1.", "min": 1},
    )
    schema: str = field(
        default="default",
        metadata={"help": "The schema the dataset was annotated with (its tags order and write the attributes)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier export in --output_dir."})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, caption_options = parse_args([ExportArguments, CaptionOptions], argv,
                                       description=__doc__.split("\n\n")[0])
    from charattr_hf.checks import check_schema
    from charattr_hf.errors import UserError
    from charattr_hf.export import check_export

    if not args.dataset:
        raise UserError("--dataset is required: an annotated or curated output folder, or a Hub dataset id")
    if not args.output_dir:
        raise UserError("--output_dir is required: the folder to write the export to")
    check_export(args.output_dir, args.format, caption_options, overwrite=args.overwrite, repeats=args.repeats)
    check_schema(args.schema)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pathlib import Path

    from charattr_hf.export import export

    report = export(args.dataset, args.output_dir, args.format, split=args.split, revision=args.revision,
                    caption_options=caption_options, repeats=args.repeats, schema=args.schema,
                    overwrite=args.overwrite)
    out = Path(args.output_dir).resolve()
    print()
    print(f"export ({args.format}): {out}")
    print(f"  rows: {report.rows}   exported: {report.exported}   left out: {report.rows - report.exported}"
          + (f"   converted to PNG: {report.converted}" if report.converted else ""))
    if report.left_out:
        print(f"  left out: {report.describe_left_out()}")
    if args.format == "kohya":
        for folder, n in sorted(report.folders.items()):
            print(f"  {folder}/: {n} images")
        print(f"  train: accelerate launch train_network.py --dataset_config {out / 'dataset.toml'} "
              "--pretrained_model_name_or_path MODEL --network_module networks.lora --resolution 512 --output_dir OUT")
    else:
        print(f"  load it with: datasets.load_dataset('imagefolder', data_dir={str(out)!r})")
        print(f"  train: accelerate launch train_text_to_image_lora.py --train_data_dir {out} --caption_column text "
              "--pretrained_model_name_or_path MODEL --output_dir OUT")
    return 0 if report.exported else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
