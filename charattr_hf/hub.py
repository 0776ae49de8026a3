"""Dataset card and publication on the Hugging Face Hub.

The output folder already has the layout ``push_to_hub`` produces (``data/<split>-XXXXX-of-YYYYY.parquet`` and a
README.md whose YAML header declares configs, features and splits, with the card's pictures in ``images/``), so
publishing is one folder upload.
Tokens come from the environment or ``huggingface-cli login`` and are never printed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
from datasets.info import DatasetInfo, DatasetInfosDict
from datasets.splits import SplitDict, SplitInfo
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from . import __version__
from .card import IMAGES_DIR
from .markdown import markdown_table
from .summary import features_of, format_summary, summarize

if TYPE_CHECKING:
    from .pipeline import Pipeline

logger = logging.getLogger(__name__)

__all__ = ["write_dataset_card", "card_header", "push_dataset", "describe_models", "size_category"]

_BODY = """# Character attributes annotated with charattr-hf

Per-image character attributes (the attributes and labels are listed below) made by charattr-hf {version}.
Each row refers to one input image by `id`, `index` (position in the input) and `path` where there is one,
with `sha256` of the image bytes; rows whose image could not be read keep their place with a message in
`error`, so the row count equals the input's.

## How the labels were made

{models}

To make them again (same input, same models and revisions, same settings):

```{command_lang}
{command}
```

## Pictures

{pictures}

## Pipeline settings

{settings}

## Columns

- one column per attribute (a class label, or a list of them for multi-label attributes) and
  `<attribute>_confidence`;
- `probs_<source>`: each source's per-attribute probabilities (so fusion can be re-trained without recomputing);
- with the WD tagger source: `tagger_tags` (general tags above the threshold, highest score first),
  `tagger_characters` and `tagger_rating`;
- `tags` and `caption`: the tags and caption the data came with, when it had any; `repeats`, `trigger` and
  `class_token`: from the folder names of an image folder in kohya's `<repeats>_<trigger> <class>` layout;
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

Annotations are model outputs, not ground truth: check the confidences, and see the models' cards for their
limitations and biases (gender presentation and age group are *apparent* attributes, never identity).
"""

_SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` value for a number of rows."""
    for bound, name in _SIZE_CATEGORIES:
        if rows < bound:
            return name
    return "n>1T" if rows >= 10**12 else "1B<n<10B" if rows < 10**10 else "10B<n<100B" if rows < 10**11 else "100B<n<1T"


def write_dataset_card(output_dir: Path, split: str, pipeline: "Pipeline", extra: dict | None = None,
                       files: "list[Path] | None" = None, stats: dict | None = None) -> Path:
    """README.md with the YAML header ``load_dataset`` and the Hub use, pictures in ``images/``, and a summary
    (``summary.json``). ``files``: the split's data files (default: those in ``data/``); ``stats``: their
    :func:`~charattr_hf.summary.summarize` when the caller has it."""
    from .card import draw_card_figures

    output_dir = Path(output_dir)
    extra = dict(extra or {})
    command = extra.pop("command", None)
    files = sorted(files if files is not None else (output_dir / "data").glob(f"{split}-*.parquet"))
    features = features_of(files)
    stats = stats if stats is not None else summarize(files)
    num_examples = stats["rows"]

    card_data = DatasetCardData(
        tags=["charattr-hf", "image-annotation", "synthetic-labels"],
        task_categories=["image-classification"],
        size_categories=[size_category(num_examples)],
        pretty_name="Character attributes annotated with charattr-hf",
    )
    # every split present in data/ (an output folder can hold several, written by several runs), each with the
    # features of its own files
    present: dict[str, list[Path]] = {}
    for f in sorted((output_dir / "data").glob("*-*-of-*.parquet")):
        present.setdefault(split_of(f.name), []).append(f)
    # ``description`` names the content: datasets caches a local folder under the folder's name and this header,
    # so two outputs alike in all but their rows (identical images from two folders: the same sizes, the same
    # counts) would otherwise share one cache entry, and load_dataset would return the other folder's rows
    digest = _files_digest([f for fs in present.values() for f in fs])
    card_header(card_data, {name: (features if name == split else features_of(shards), shards)
                            for name, shards in present.items()},
                description=f"charattr-hf annotations; data files sha256 {digest}", default=split,
                rows={split: num_examples})

    try:
        figures = draw_card_figures(output_dir, split, files)
    except Exception as exc:  # noqa: BLE001 - pictures are a nicety: a card without them beats no card
        logger.warning("could not draw the card's pictures: %s: %s", type(exc).__name__, exc)
        from .card import CardFigures

        figures = CardFigures(notes=[f"the pictures could not be drawn ({type(exc).__name__})"])

    settings = {**pipeline.description, **extra}
    rows = markdown_table(["setting", "value"], [[k, _cell(v)] for k, v in settings.items()])
    attrs = "\n".join(
        f"- `{a.name}`{' (multi-label)' if a.multi_label else ''}: {', '.join(a.label_names)}"
        for a in pipeline.schema
    )
    body = _BODY.format(
        version=__version__,
        models=describe_models(pipeline),
        command=command or "# not recorded",
        command_lang="python" if (command or "").startswith("# Python") else "bash",
        pictures=_pictures(figures, output_dir),
        settings=rows,
        attributes=attrs,
        summary=format_summary(stats),
        repo_hint=extra.get("repo_id", str(output_dir)),
        split=split,
    )
    if pipeline.description.get("warnings"):  # e.g. the demo model or tagger run on real images
        title, rest = body.split("\n\n", 1)
        banner = "\n>\n".join(f"> **Warning**: {w}." for w in pipeline.description["warnings"])
        body = f"{title}\n\n{banner}\n\n{rest}"
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    path = output_dir / "README.md"
    tmp = path.with_name(".README.md.tmp")
    tmp.write_text(str(card))
    tmp.replace(path)
    (output_dir / "summary.json").write_text(json.dumps(stats, indent=2, default=str))
    return path


def card_header(card_data: DatasetCardData, splits: "dict[str, tuple[Any, list[Path]]]", description: str | None = None,
                default: str | None = None, rows: "dict[str, int] | None" = None) -> None:
    """Declare ``splits`` (name -> (features, data files under ``data/``)) in ``card_data``: the card's YAML header,
    which ``load_dataset`` and the Hub read. One config when every split has the same features, else one config per
    split (``default``: the default one). ``rows``: split sizes already counted.

    datasets has no public API for this header; ``MetadataConfigs`` and ``DatasetInfosDict`` write it as
    ``push_to_hub`` does (tests/test_card.py and tests/test_publish.py read the result back with ``load_dataset``)."""
    infos = {}
    for name, (_, files) in splits.items():
        count = (rows or {}).get(name)
        if count is None:
            count = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        infos[name] = SplitInfo(name=name, num_examples=count, num_bytes=sum(f.stat().st_size for f in files))
    extra = {"description": description} if description is not None else {}
    features = [f for f, _ in splits.values()]
    configs: dict[str, dict] = {}
    dataset_infos: dict[str, DatasetInfo] = {}
    if all(f == features[0] for f in features):
        configs["default"] = {"data_files": [{"split": name, "path": f"data/{name}-*"} for name in splits], **extra}
        dataset_infos["default"] = DatasetInfo(features=features[0], splits=_split_dict(infos.values()))
    else:  # splits with different columns cannot share a config: one config per split
        for name, (feats, _) in splits.items():
            configs[name] = {"data_files": [{"split": name, "path": f"data/{name}-*"}], **extra}
            if name == default:
                configs[name]["default"] = True
            dataset_infos[name] = DatasetInfo(features=feats, splits=_split_dict([infos[name]]))
    MetadataConfigs(configs).to_dataset_card_data(card_data)
    DatasetInfosDict(dataset_infos).to_dataset_card_data(card_data)


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


def _pictures(figures, output_dir: Path) -> str:
    """Markdown for the pictures that exist (every link is checked against the folder)."""
    parts = []
    for title, rel in (("Label distribution per attribute", figures.labels),
                       ("Confidence of the fused labels", figures.confidence),
                       ("Agreement between sources", figures.agreement)):
        if rel and (output_dir / rel).is_file():
            parts.append(f"![{title}]({rel})")
    samples = [(a, rel) for a, rel in figures.samples.items() if (output_dir / rel).is_file()]
    if samples:
        parts.append("Most confident rows per label: "
                     + ", ".join(f"[{a}]({rel})" for a, rel in samples) + ".")
        parts.append(f"![{samples[0][0]}: most confident rows per label]({samples[0][1]})")
    parts += [f"_{note[0].upper()}{note[1:]}._" for note in figures.notes]
    return "\n\n".join(parts) or "_No pictures._"


def describe_models(pipeline: "Pipeline") -> str:
    """A table of the sources and the fusion that made the labels: model, revision or weights digest, link."""
    rows = []
    for stage in [*pipeline.device, *pipeline.cpu, pipeline.fusion]:
        row = _model_row(stage)
        if row is not None:
            rows.append(row)
    return markdown_table(["part", "model", "revision / weights"], rows)


def _hub_link(repo_id: str, revision: str | None = None, kind: str = "") -> str:
    url = f"https://huggingface.co/{kind}{repo_id}" + (f"/tree/{revision}" if revision else "")
    return f"[{repo_id}]({url})"


def _model_row(stage) -> tuple[str, str, str] | None:
    name = getattr(stage, "name", "")
    if name == "clip":
        spec = stage.spec
        if spec.model.startswith("hf-hub:"):
            repo = spec.model[len("hf-hub:"):]
            commit = spec.local_dir().name
            return "clip (open_clip)", _hub_link(repo, commit), f"commit `{commit}`"
        folder = spec.local_dir()
        if folder is not None:
            digest = spec.fingerprint().removeprefix("dir-")
            label = (f"the demo CLIP shipped with charattr-hf {__version__} (synthetic characters only)"
                     if spec.describe() == "demo" else f"`{spec.model}`")
            return "clip (open_clip)", label, f"weights digest `{digest}`"
        if spec.pretrained is None:
            return "clip (open_clip)", f"`{spec.model}`", "random weights (`--pretrained none`): labels are meaningless"
        cfg = {}
        try:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained) or {}
        except Exception:  # noqa: BLE001
            pass
        hub = (cfg.get("hf_hub") or "").strip("/")
        model = f"`{spec.model}`, pretrained `{spec.pretrained}`"
        if hub:
            model += f" ({_hub_link(hub)})"
        return "clip (open_clip)", model, f"open_clip's pinned weights for `{spec.pretrained}`"
    if name == "blip2":
        model_id, revision = stage.model_id, stage.revision
        local = Path(model_id).exists()
        model = f"`{model_id}`" if local else _hub_link(model_id, revision)
        return "blip2", model, f"revision `{revision}`" if revision else ("local folder" if local else "main branch")
    if name == "tags":
        return "tags", ("the input's tags / caption columns, else the prompt embedded in the image (A1111, NovelAI, "
                        "ComfyUI, Fooocus; per row in `tags_from`), parsed with the schema's aliases"), "-"
    if name == "tagger":
        spec = stage.spec
        if spec.describe() == "demo":
            model = f"the demo tagger shipped with charattr-hf {__version__} (synthetic characters only)"
        else:
            model = f"`{spec.local_dir()}`" if spec.is_local else _hub_link(spec.source.removeprefix("hf-hub:"),
                                                                            spec.local_dir().name)
        weights = f"weights digest `{stage.model_fingerprint.removeprefix('dir-')}`" if spec.is_local else \
            f"commit `{spec.local_dir().name}`"
        return "tagger (timm)", model, weights
    params = stage.params() if hasattr(stage, "params") else {}
    if "weights" in params and "model" in params and hasattr(stage, "weights_id"):
        model = params["model"]
        if model not in ("demo", "<local folder>", "<in-memory>"):
            model = _hub_link(model, params.get("revision"))
        elif model == "demo":
            model = f"the demo fusion policy shipped with charattr-hf {__version__}"
        elif model == "<local folder>":
            model = f"`{stage.model_ref}`"
        return "fusion (learned policy)", model, f"weights `{params['weights']}`"
    if "method" in params:
        return "fusion (rule)", f"`{params['method']}`", "-"
    return None


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
    """Upload ``data/``, the card's pictures in ``images/``, README.md and summary.json of ``output_dir`` to the
    dataset repository ``repo_id``; returns its URL. The card's ``load_dataset`` example is pointed at ``repo_id``
    first.

    ``extra_patterns``: other files to upload when present (the curated card's pictures and report)."""
    from huggingface_hub import HfApi

    output_dir = Path(output_dir)
    if not (output_dir / "README.md").is_file() or not any((output_dir / "data").glob("*.parquet")):
        raise FileNotFoundError(f"{output_dir} has no finished annotated dataset (data/*.parquet + README.md)")
    api = api or HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    _point_card_at(output_dir / "README.md", repo_id)
    # replace the shards and pictures of the splits uploaded now (their count may have changed), keep other splits
    splits = sorted({split_of(f.name) for f in (output_dir / "data").glob("*-*-of-*.parquet")})
    api.upload_folder(
        folder_path=str(output_dir),
        repo_id=repo_id,
        repo_type="dataset",
        revision=revision,
        allow_patterns=list(dict.fromkeys(["data/*.parquet", f"{IMAGES_DIR}/*.png", "README.md", "summary.json",
                                           *extra_patterns])),
        delete_patterns=[f"data/{name}-*.parquet" for name in splits] + [f"{IMAGES_DIR}/{name}-*.png" for name in splits],
        commit_message=commit_message,
    )
    url = getattr(repo, "url", None) or f"https://huggingface.co/datasets/{repo_id}"
    logger.info("pushed %s to %s", output_dir, url)
    return str(url)


def _point_card_at(card: Path, repo_id: str) -> None:
    """Make the card's ``load_dataset`` example name the repository it is published to."""
    text = card.read_text()
    new = re.sub(r'(ds = load_dataset\()"[^"\n]*"', lambda m: f'{m.group(1)}"{repo_id}"', text, count=1)
    if new != text:
        tmp = card.with_name(".README.md.tmp")
        tmp.write_text(new)
        tmp.replace(card)
