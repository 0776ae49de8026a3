"""The tags/captions source (``probs_tags``): danbooru-style tags and free-text captions of the input (a tags or
caption column, sidecar ``.txt`` files, ``metadata.jsonl``) read as attribute evidence. On unless ``--no_tags``,
when the input has such a column. Stage: :class:`~.stage.TagStage` (pure Python, CPU part).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base import Source, register_source


@dataclass
class TagsOptions:
    """The tags source's options."""

    tags: bool = field(
        default=True, metadata={"help": "Do not use the tags/caption columns as a source.", "flag": "no_tags"}
    )


def requires(opts: TagsOptions) -> str | None:
    return None if opts.tags else "drop --no_tags"


def build(ctx, opts) -> None:
    if "tags" not in ctx.input_columns and "caption" not in ctx.input_columns:
        ctx.skip("the dataset has no tags or caption column (see --tags_column)")
    from .stage import TagStage

    ctx.cpu.append(TagStage(ctx.schema))


SOURCE = register_source(Source("tags", build, options=TagsOptions, requires=requires, title="tag", order=30))
