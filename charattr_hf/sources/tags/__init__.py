"""The tags/captions source (``probs_tags``): danbooru-style tags and free-text captions that come with the data,
read as attribute evidence. Per row, in this order: the input's tags and/or caption columns (``--tags_column``,
a ``metadata.jsonl``/``metadata.csv`` column, or the ``.txt`` files beside the images), else the prompt embedded
in the image file (A1111, NovelAI, ComfyUI, Fooocus; :mod:`charattr_hf.prompts`), which the decode stage reads
from the file it opens anyway. So it runs on every input unless ``--no_tags``; ``tags_from`` says, per row, where
the text came from. Stage: :class:`~.stage.TagStage` (pure Python, CPU part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import Source, register_source


@dataclass
class TagsOptions:
    """The tags source's options."""

    tags: bool = field(
        default=True,
        metadata={"help": "Do not use the tags/caption columns, nor the prompts embedded in the images, as a source.",
                  "flag": "no_tags"},
    )


def requires(opts: TagsOptions) -> str | None:
    return None if opts.tags else "drop --no_tags"


def build(ctx, opts) -> None:
    from datasets import Value

    from .stage import TAGS_FROM, TagStage

    # the input's tags/caption columns where a row has them; the prompt embedded in its image file where not
    ctx.embedded_prompts = True
    ctx.cpu.append(TagStage(ctx.schema))
    ctx.columns[TAGS_FROM] = Value("string")


SOURCE = register_source(Source("tags", build, options=TagsOptions, requires=requires, title="tag", order=30))
