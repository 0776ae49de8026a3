"""The CLIP zero-shot source (``probs_clip``): an open_clip model scores each attribute's label prompts.

Its pixels are those of the model's eval preprocessing (:meth:`~.stage.ClipZeroShot.pixel_spec`), from the shared
decode stage. A model folder may ship the schema it was trained for (``charattr_schema.yaml``): it is the run's
schema when ``--schema`` is not given. Model resolution and loading: :mod:`.model`; the stage:
:class:`~.stage.ClipZeroShot`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..base import Source, register_source

REAL_MODEL_HINT = "--model ViT-B-32 --pretrained laion2b_s34b_b79k"


@dataclass
class ClipOptions:
    """The CLIP source's options."""

    model: Optional[str] = field(
        default="demo",
        metadata={
            "help": "open_clip model: 'demo' (the default: shipped, trained on synthetic drawings only, not for real "
            f"images), a built-in name such as ViT-B-32 (with --pretrained; real images: {REAL_MODEL_HINT}), "
            "'hf-hub:org/repo' or 'local-dir:/path'. Empty string: no CLIP source."
        },
    )
    pretrained: Optional[str] = field(
        default=None,
        metadata={"help": "Pretrained tag of a built-in model, e.g. laion2b_s34b_b79k ('none' = random weights)."},
    )
    model_revision: Optional[str] = field(default=None, metadata={"help": "Revision of an hf-hub: model."})


def check(opts: ClipOptions) -> None:
    """A ``local-dir:`` model folder exists."""
    from ...errors import UserError

    model = opts.model or ""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        if not folder.is_dir():
            raise UserError(f"--model {model}: no such folder {str(folder)!r}; check the path after 'local-dir:'")


def clip_spec(opts: ClipOptions):
    """The :class:`~.model.ClipSpec` of ``--model``, resolved (a hf-hub: name to a commit, its config
    fetched); a name that does not parse or resolve is the user's to fix."""
    from ...loading import model_load_error
    from .model import ClipSpec

    try:
        spec = ClipSpec.parse(opts.model, opts.pretrained, opts.model_revision)
        spec.fingerprint()
        return spec
    except Exception as exc:  # noqa: BLE001
        raise model_load_error("CLIP model", opts.model, exc) from exc


def spec_schema(spec) -> str | None:
    """The schema a model folder ships (``charattr_schema.yaml``), if any, for a ClipSpec (or None)."""
    folder = spec.local_dir() if spec is not None else None
    if folder is not None and (folder / "charattr_schema.yaml").is_file():
        return str(folder / "charattr_schema.yaml")
    return None


def model_schema(opts: ClipOptions) -> str | None:
    """The schema the ``--model`` folder ships, if any."""
    from .model import demo_model_dir

    if not opts.model or (opts.model == "demo" and demo_model_dir() is None):
        return None
    return spec_schema(clip_spec(opts))


def build(ctx, opts) -> None:
    from .model import demo_model_dir
    from .stage import ClipZeroShot

    if not opts.model:
        ctx.skip("--model is empty")
    if opts.model == "demo" and demo_model_dir() is None:
        ctx.skip("no --model given and this installation ships no demo model")
    spec = clip_spec(opts)
    run = ctx.options  # the options every source shares (batch size, precision, device, cache)
    clip = ClipZeroShot(ctx.schema, spec, batch_size=run.batch_size, precision=run.precision,
                        embedding=ctx.embedding, device=run.device)
    ctx.pixels(clip.pixel_spec)  # the shared decode stage makes them, into clip.pixels_column
    if run.use_cache:
        from ...cache import default_cache_dir
        from ...cache_redis import open_feature_cache

        root = Path(run.cache_dir).expanduser() if run.cache_dir else default_cache_dir()
        clip.cache = open_feature_cache(run.cache_url, root, clip.cache_namespace(), writer=ctx.writer)
    ctx.device.append(clip)
    ctx.description["model"] = spec.describe()


SOURCE = register_source(Source("clip", build, options=ClipOptions, check=check, shipped_schema=model_schema,
                                title="CLIP", order=10))
