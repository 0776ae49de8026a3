"""The BLIP-2 question-answering source (``probs_blip2``), on with ``--blip2 MODEL``: slow, for small sets or a
GPU. It reads its pixels from the shared decode stage (one decode per image, the same size limit, EXIF, 16-bit
and remote-file handling as every other source), in a working column of its own size. Stage:
:class:`~.stage.Blip2Source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..base import Source, register_source


@dataclass
class Blip2Options:
    """The BLIP-2 source's options."""

    blip2: Optional[str] = field(
        default=None,
        metadata={"help": "Add the BLIP-2 question-answering source, e.g. Salesforce/blip2-opt-2.7b (slow)."},
    )
    blip2_revision: Optional[str] = field(default=None, metadata={"help": "Revision of the BLIP-2 model."})


def requires(opts: Blip2Options) -> str | None:
    return None if opts.blip2 else "give --blip2 MODEL (e.g. --blip2 Salesforce/blip2-opt-2.7b)"


def build(ctx, opts) -> None:
    from ...loading import model_load_error
    from .stage import Blip2Source

    try:
        spec = Blip2Source(ctx.schema, model_id=opts.blip2, revision=opts.blip2_revision).pixel_spec()
    except Exception as exc:  # noqa: BLE001 - the processor names the image size; a bad name fails here
        raise model_load_error("BLIP-2 model", opts.blip2, exc) from exc
    ctx.device.append(Blip2Source(ctx.schema, model_id=opts.blip2, revision=opts.blip2_revision,
                                  pixel_shape=spec.size, pixels_column=ctx.pixels(spec)))


SOURCE = register_source(Source("blip2", build, options=Blip2Options, requires=requires, title="BLIP-2",
                                order=40))
