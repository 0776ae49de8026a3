"""The WD tagger source (``probs_tagger``, ``tagger_tags``, ``tagger_characters``, ``tagger_rating``), on with
``--tagger ID``. Its pixels (the reference preprocessing: padded to a white square, resized) come from the shared
decode stage, in the CPU part; the model runs batched on the accelerator. Stage: :class:`~.stage.TaggerStage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..base import Source, register_source


@dataclass
class TaggerOptions:
    """The WD tagger source's options (#9)."""

    tagger: Optional[str] = field(
        default=None,
        metadata={
            "help": "Add the WD tagger source: a Hub id (SmilingWolf/wd-vit-tagger-v3, with --tagger_revision), "
            "'hf-hub:org/repo', 'local-dir:/path' (config.json, model.safetensors, selected_tags.csv) or 'demo' "
            "(shipped, synthetic drawings only)."
        },
    )
    tagger_revision: Optional[str] = field(default=None, metadata={"help": "Revision (commit) of a Hub tagger."})
    tagger_threshold: float = field(
        default=0.35, metadata={"help": "Score above which a general tag goes to tagger_tags.", "min": 0}
    )
    tagger_character_threshold: float = field(
        default=0.85, metadata={"help": "Score above which a character tag goes to tagger_characters.", "min": 0}
    )
    tagger_mcut: bool = field(
        default=False, metadata={"help": "MCut thresholds (the largest gap in the scores) for the tagger's tags."}
    )


def requires(opts: TaggerOptions) -> str | None:
    return None if opts.tagger else "give --tagger ID (a WD tagger, e.g. --tagger demo)"


def check(opts: TaggerOptions) -> None:
    """Thresholds in [0, 1]; the tagger id parses and a local folder exists."""
    from ...errors import UserError

    for flag in ("tagger_threshold", "tagger_character_threshold"):
        if not 0.0 <= getattr(opts, flag) <= 1.0:
            raise UserError(f"--{flag} must be in [0, 1], got {getattr(opts, flag)}")
    from .stage import TaggerSpec

    TaggerSpec.parse(opts.tagger, opts.tagger_revision)  # a missing folder or a bad id ends here


def build(ctx, opts) -> None:
    from .stage import TaggerSpec, TaggerStage

    run = ctx.options
    tagger = TaggerStage(
        ctx.schema,
        TaggerSpec.parse(opts.tagger, opts.tagger_revision),
        threshold=opts.tagger_threshold,
        character_threshold=opts.tagger_character_threshold,
        mcut=opts.tagger_mcut,
        batch_size=run.batch_size,
        precision=run.precision,
        device=run.device,
    )
    ctx.pixels(tagger.pixel_spec)  # the shared decode stage makes them, into tagger.pixels_column
    ctx.device.append(tagger)
    ctx.columns.update(tagger.output_features())
    ctx.description["tagger"] = tagger.spec.describe()


SOURCE = register_source(Source("tagger", build, options=TaggerOptions, requires=requires, check=check, order=20))
