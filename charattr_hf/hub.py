"""Dataset card and publication on the Hugging Face Hub.

The output folder already has the layout ``push_to_hub`` produces (``data/<split>-XXXXX-of-YYYYY.parquet`` and a
README.md whose YAML header declares configs, features and splits), so publishing is one folder upload.
Tokens come from the environment or ``huggingface-cli login`` and are never printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from . import __version__
from .markdown import markdown_table
from .summary import features_of, format_summary, summarize

if TYPE_CHECKING:
    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

__all__ = ["write_dataset_card", "push_dataset"]

_BODY = """# Character attributes annotated with charattr-hf

This dataset holds per-image character attributes produced by [charattr-hf](https://github.com/charattr-hf/charattr-hf)
{version}. Each row refers to one input image by `id`, `index` (position in the input) and `path` where there
is one, with `sha256` of the image bytes; rows whose image could not be read keep their place with a message
in `error`, so the row count equals the input's.

## Pipeline

{settings}

## Columns

- one column per attribute (a class label, or a list of them for multi-label attributes) and
  `<attribute>_confidence`;
- `probs_<source>`: each source's per-attribute probabilities (so fusion can be re-trained without recomputing);
- with the WD tagger source: `tagger_tags` (general tags above the threshold, highest score first),
  `tagger_characters` and `tagger_rating`;
- `flags`: quality flags from decoding; `quality`: brightness, contrast, saturation, colourfulness, sharpness;
- `error`: null when the row was annotated.

Attributes and labels:

{attributes}

## Summary

```
{summary}
```

## Use

```python
from datasets import load_dataset
ds = load_dataset("{repo_hint}", split="{split}")
```

Annotations are model outputs, not ground truth: check the confidences, and see the model's card for its
limitations and biases (gender presentation and age group are *apparent* attributes, never identity).
"""


def write_dataset_card(output_dir: Path, split: str, pipeline: "Pipeline", extra: dict | None = None) -> Path:
    """README.md with the YAML header ``load_dataset`` and the Hub use, and a human summary."""
    output_dir = Path(output_dir)
    files = sorted((output_dir / "data").glob(f"{split}-*.parquet"))
    features = features_of(files)
    stats = summarize(files)
    num_examples = stats["rows"]

    card_data = DatasetCardData(tags=["charattr-hf", "image-annotation", "synthetic-labels"])
    # every split present in data/ (an output folder can hold several, written by several runs), each with the
    # features of its own files
    present: dict[str, list[Path]] = {}
    for f in sorted((output_dir / "data").glob("*-*-of-*.parquet")):
        present.setdefault(split_of(f.name), []).append(f)
    split_features = {name: features if name == split else features_of(shards) for name, shards in present.items()}
    split_infos = {}
    for name, shard_files in present.items():
        rows = num_examples if name == split else sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files)
        split_infos[name] = SplitInfo(name=name, num_examples=rows, num_bytes=sum(f.stat().st_size for f in shard_files))
    # ``description`` names the content: datasets caches a local folder under the folder's name and this header,
    # so two outputs alike in all but their rows (identical images from two folders: the same sizes, the same
    # counts) would otherwise share one cache entry, and load_dataset would return the other folder's rows
    description = f"charattr-hf annotations; data files sha256 {_files_digest([f for fs in present.values() for f in fs])}"
    configs: dict[str, dict] = {}
    infos: dict[str, DatasetInfo] = {}
    if all(f == features for f in split_features.values()):
        configs["default"] = {
            "data_files": [{"split": name, "path": f"data/{name}-*"} for name in present],
            "description": description,
        }
        infos["default"] = DatasetInfo(features=features, splits=_split_dict(split_infos.values()))
    else:  # splits with different columns cannot share a config: one config per split, this run's the default
        for name in present:
            configs[name] = {"data_files": [{"split": name, "path": f"data/{name}-*"}], "description": description}
            if name == split:
                configs[name]["default"] = True
            infos[name] = DatasetInfo(features=split_features[name], splits=_split_dict([split_infos[name]]))
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    DatasetInfosDict(infos).to_dataset_card_data(card_data)

    settings = {**pipeline.description, **(extra or {})}
    rows = markdown_table(["setting", "value"], [[k, _cell(v)] for k, v in settings.items()])
    attrs = "\n".join(
        f"- `{a.name}`{' (multi-label)' if a.multi_label else ''}: {', '.join(a.label_names)}"
        for a in pipeline.schema
    )
    body = _BODY.format(
        version=__version__,
        settings=rows,
        attributes=attrs,
        summary=format_summary(stats),
        repo_hint=(extra or {}).get("repo_id", str(output_dir)),
        split=split,
    )
    if pipeline.description.get("warning"):  # e.g. the demo model run on real images
        title, rest = body.split("\n\n", 1)
        body = f"{title}\n\n> **Warning**: {pipeline.description['warning']}.\n\n{rest}"
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = output_dir / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(str(card))
    tmp.replace(path)
    (output_dir / "summary.json").write_text(json.dumps(stats, indent=2, default=str))
    return path


def _split_dict(infos) -> SplitDict:
    splits = SplitDict()
    for info in infos:
        splits.add(info)
    return splits


def split_of(shard_name: str) -> str:
    """The split of a shard file name ``<split>-XXXXX-of-YYYYY.parquet``."""
    return shard_name.rsplit("-", 3)[0]


def _files_digest(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _cell(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or None
    return None if value is None else str(value)


def push_dataset(
    output_dir: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload annotations made with charattr-hf",
    token: str | None = None,
    api=None,
    extra_patterns: tuple[str, ...] = ("images/*.png", "curation.json"),
) -> str:
    """Upload ``data/`` and README.md of ``output_dir`` to the dataset repository ``repo_id``; returns its URL.

    ``extra_patterns``: other files to upload when present (the curated card's pictures and report)."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / "README.md").is_file() or not any((output_dir / "data").glob("*.parquet")):
        raise FileNotFoundError(f"{output_dir} has no finished annotated dataset (data/*.parquet + README.md)")
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    # replace the shards of the splits uploaded now (their count may have changed), keep other splits
    splits = sorted({split_of(f.name) for f in (output_dir / "data").glob("*-*-of-*.parquet")})
    api.upload_folder(
        folder_path=str(output_dir),
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        allow_patterns=["data/*.parquet", "README.md", "summary.json", *extra_patterns],
        delete_patterns=[f"data/{name}-*.parquet" for name in splits],
        commit_message=commit_message,
    )
    url = getattr(repo, "url", None) or f"https://huggingface.co/datasets/{repo_id}"
    logger.info("pushed %s to %s", output_dir, url)
    return str(url)
