"""What a source is, what its ``build`` adds to, the options every source shares, and choosing the sources of a run.

A source gives, per image, a probability vector per attribute of the schema, in the column ``probs_<name>``
(``Schema.probs_feature()``); fusion (a rule or a learned policy) and fusion training read every such column.
A source is a :class:`Source`:

- ``name``: the column is ``probs_<name>``; ``--sources`` names it.
- ``options``: a dataclass of its options; each field with ``metadata={"help": ...}`` is a command-line flag of
  the annotate recipe (parsed by :mod:`charattr_hf.cli`). The built-in sources' options are assembled into
  :class:`~charattr_hf.sources.PipelineOptions`; a plugin's are given in ``PipelineOptions.source_options[name]``
  (the recipe does this).
- ``requires(opts)``: what its options lack to run (``"give --tagger ID"``), or None. Without ``--sources`` a
  source runs when nothing is lacking; a source named in ``--sources`` that lacks something is a user error.
- ``check(opts)``: checks of its options made before any work (no heavy imports): raise ``UserError``.
- ``build(ctx, opts)``: adds its stages to the :class:`BuildContext` (CPU stages after the shared decode, model
  stages, extra output columns, description entries) and asks for the pixels its model reads
  (:meth:`BuildContext.pixels`), or calls ``ctx.skip(reason)`` when it cannot run on this input (a message
  without ``--sources``, a user error with it).
- ``default``: False for a source that runs only when ``--sources`` names it.
- ``shipped_schema(opts)``: the schema its model ships (a YAML path) or None; the run's schema when
  ``--schema`` is not given.
- ``order``: its place among the sources (columns, tables, a new policy's inputs); ties in registration order.

This module imports nothing heavy: the recipe reads the options for ``--help`` and checks them before any work.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from ..constants import FUSION_METHODS, PRECISIONS
from ..errors import UserError
from ..stages.pixels import PixelSpec

logger = logging.getLogger(__name__)

__all__ = ["Source", "BuildContext", "SkipSource", "Selection", "SharedOptions", "register_source",
           "registered_sources", "order_sources", "load_plugins", "plugins_in_args", "select_sources",
           "check_sources", "check_precision", "source_options", "ENTRY_POINT_GROUP", "PLUGINS_ENV"]

ENTRY_POINT_GROUP = "charattr_hf.sources"
PLUGINS_ENV = "CHARATTR_HF_PLUGINS"
#: ``Source.order`` of a source that names none: after the built-in ones.
PLUGIN_ORDER = 1000


@dataclass
class SharedOptions:
    """Which sources run, the schema, fusion, and what every source shares (batch size, precision, cache)."""

    schema: Optional[str] = field(
        default=None,
        metadata={
            "help": "Attribute schema: a shipped name (default, synthetic) or a YAML path. Default: the model's own "
            "schema when it ships one, else 'default'."
        },
    )
    sources: Optional[str] = field(
        default=None,
        metadata={
            "help": "Sources to run, comma-separated, from the built-in ones (see 'Choosing sources' in the README) "
            "and those of --plugins. Default: every source the input and the other options make available."
        },
    )
    plugins: Optional[str] = field(
        default=None,
        metadata={
            "help": "Modules to import first, comma-separated: each registers its sources (see README, 'Adding a "
            "source'). Also read from $CHARATTR_HF_PLUGINS; installed packages declare entry points instead."
        },
    )
    fusion: Optional[str] = field(
        default=None,
        metadata={
            "help": "Learned fusion policy: a folder saved with save_pretrained, a Hub model id, or 'demo' (shipped: "
            "demo model + tags, synthetic schema; write ./demo for a local folder of that name). Default: the "
            "--fusion_method rule."
        },
    )
    fusion_revision: Optional[str] = field(default=None, metadata={"help": "Revision of the fusion policy on the Hub."})
    fusion_method: str = field(
        default="confidence",
        metadata={
            "help": "Fusion rule when no --fusion policy is given: confidence (weighted mean), mean or vote.",
            "choices": FUSION_METHODS,
        },
    )
    batch_size: int = field(default=32, metadata={"help": "Images per model forward pass.", "min": 1})
    precision: str = field(
        default="auto",
        metadata={
            "help": "Model precision: auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16, or int8 (CPU only: dynamic "
            "int8 quantization of the image tower, see benchmarks/README.md).",
            "choices": PRECISIONS,
        },
    )
    keep_embedding: bool = field(
        default=False, metadata={"help": "Store the CLIP image embedding (float16) in the output."}
    )
    keep_images: bool = field(default=False, metadata={"help": "Copy the image bytes into the output."})
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Model-output cache keyed by image sha256. Default: $HF_HOME/charattr_hf."},
    )
    use_cache: bool = field(
        default=True, metadata={"help": "Do not read or write the model-output cache.", "flag": "no_cache"}
    )
    cache_url: Optional[str] = field(
        default=None,
        metadata={"help": "Keep the model-output cache in Redis, shared by every machine: redis://host:port/db. "
                  "Default: SQLite files in --cache_dir. A cache that fails never fails the run."},
    )
    device: Optional[str] = None
    #: the options of plugin sources by source name (the built-in sources' options are fields of PipelineOptions)
    source_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """One source of attribute evidence (see the module docstring)."""

    name: str
    build: Callable[["BuildContext", Any], None]
    options: type | None = None
    requires: Callable[[Any], str | None] | None = None
    check: Callable[[Any], None] | None = None
    default: bool = True
    #: the schema its model ships (a YAML path), used when --schema is not given
    shipped_schema: Callable[[Any], str | None] | None = None
    #: how messages name it ("CLIP source skipped: ..."); default: the name
    title: str | None = None
    order: int = PLUGIN_ORDER

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"a source name must be an identifier (its column is probs_<name>), got {self.name!r}")


class SkipSource(Exception):
    """Raised by :meth:`BuildContext.skip`: the source cannot run on this input."""


@dataclass
class BuildContext:
    """What a source's ``build`` reads and adds to. The CPU part of a row is the shared decode stage (one read and
    one decode of each image: hash, quality, the pixels every model reads) followed by ``cpu``; then ``device``
    (model stages, in the main process), then fusion.

    - :meth:`pixels`: the working column the decode stage writes with the pixels a model reads.
    - ``cpu``: stages after decode (they see its columns; rows it quarantined are skipped), in ``num_proc``
      workers when ``cpu_bound`` (no torch there). ``device``: model stages.
    - ``columns``: output columns besides ``probs_<name>`` (``tagger_tags``...), as ``datasets`` features.
    - ``description``: entries for the run's description (manifest, card).
    - ``embedding``: whether a source that can give the image embedding should (``--keep_embedding``, or the
      fusion policy reads it).
    - ``embedded_prompts``: a source sets it to have the decode stage read the prompt each image file carries
      (working columns ``_prompt`` and ``_prompt_kind``, :mod:`charattr_hf.prompts`).
    """

    options: SharedOptions
    schema: Any
    input_columns: list[str]
    writer: str = "main"
    embedding: bool = False
    cpu: list = field(default_factory=list)
    device: list = field(default_factory=list)
    columns: dict = field(default_factory=dict)
    description: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    #: the pixel columns the decode stage writes: column -> PixelSpec
    pixel_specs: dict = field(default_factory=dict)
    embedded_prompts: bool = False

    def pixels(self, spec: PixelSpec) -> str:
        """The working column of ``spec``'s pixels (uint8 RGB, ``height x width x 3``), written by the decode stage
        from the same read and decode of the image as every other source's; sources whose models take the same
        geometry share one column."""
        self.pixel_specs.setdefault(spec.column, spec)
        return spec.column

    def skip(self, reason: str):
        """Stop building the current source: it cannot run on this input (``reason``: why, and what to do).
        Whatever it added before is taken back."""
        raise SkipSource(reason)


# ------------------------------------------------------------------------------------------------ the registry
_REGISTRY: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add ``source`` to the registry (a source of the same name is replaced); returns it."""
    _REGISTRY[source.name] = source
    return source


def registered_sources() -> dict[str, Source]:
    """Every registered source by name, in ``order`` (built-in sources first), ties in registration order."""
    ranked = sorted(enumerate(_REGISTRY.values()), key=lambda item: (item[1].order, item[0]))
    return {source.name: source for _, source in ranked}


def order_sources(names: Iterable[str]) -> list[str]:
    """``names`` in the registry's order, unknown ones (a user's own ``probs_*`` column) after them by name."""
    names = set(names)
    known = list(registered_sources())
    return [s for s in known if s in names] + sorted(names.difference(known))


def _split(value: "str | Iterable[str] | None") -> list[str]:
    if not value:
        return []
    parts = value.split(",") if isinstance(value, str) else list(value)
    return [p.strip() for p in parts if p and p.strip()]


_ENTRY_POINTS_LOADED = False


def load_plugins(modules: "str | Iterable[str] | None" = None) -> None:
    """Import the plugin modules named in ``modules`` (comma-separated) and in ``$CHARATTR_HF_PLUGINS``, and the
    entry points of the group ``charattr_hf.sources`` (once); each registers its sources when imported. Module
    names are found as ``python -m`` finds them: installed, or in the current folder."""
    global _ENTRY_POINTS_LOADED
    names = _split(modules) + _split(os.environ.get(PLUGINS_ENV))
    if names and os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    for name in dict.fromkeys(names):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"--plugins {name}: cannot import it ({exc}); give the module's name as you would "
                            "import it (a module of the current folder, or installed)") from None
    if not _ENTRY_POINTS_LOADED:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            before = set(_REGISTRY)
            try:
                loaded = ep.load()  # a module that registers its sources, or a Source
            except Exception as exc:  # noqa: BLE001 - an installed plugin that is broken is the user's to fix
                raise UserError(f"the installed source plugin {ep.name!r} ({ep.value}, entry point group "
                                f"{ENTRY_POINT_GROUP}) does not import: {type(exc).__name__}: {exc}; fix or uninstall "
                                "its package") from None
            if isinstance(loaded, Source):
                register_source(loaded)
            added = sorted(set(_REGISTRY) - before)
            if added:
                logger.info("source(s) %s from the installed plugin %s", ", ".join(added), ep.value)
        _ENTRY_POINTS_LOADED = True


def plugins_in_args(argv: Iterable[str]) -> str | None:
    """The ``--plugins`` value of a command line (or of its ``--config`` YAML file), read before the full parse so
    that the plugins' options can be parsed with the others (a bad value is left for the full parse to report)."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default=None)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    if known.plugins is None and known.config:
        import yaml

        try:
            data = yaml.safe_load(open(known.config)) or {}
        except (OSError, yaml.YAMLError):
            return None
        value = data.get("plugins") if isinstance(data, dict) else None
        return ",".join(value) if isinstance(value, list) else value
    return known.plugins


def source_options(source: Source, options: SharedOptions) -> Any:
    """The options of ``source`` in this run: ``options`` itself for a built-in source (its options are bases of
    ``PipelineOptions``), else ``options.source_options[name]`` or the defaults."""
    if source.options is None:
        return None
    if isinstance(options, source.options):
        return options
    given = (getattr(options, "source_options", None) or {}).get(source.name)
    return given if given is not None else source.options()


@dataclass(frozen=True)
class Selection:
    """The sources a run builds, in registry order, and whether ``--sources`` named them (then a source that
    cannot run on the input is an error, and the input's own ``probs_*`` columns are not fused)."""

    sources: tuple[Source, ...]
    named: bool

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


def select_sources(options: SharedOptions) -> Selection:
    """The sources to build. Unknown names and named sources whose options lack something are user errors; without
    ``--sources`` every default source whose options lack nothing is chosen."""
    registry = registered_sources()
    asked = _split(getattr(options, "sources", None))
    if not asked:
        chosen = [s for s in registry.values() if s.default and not _lacks(s, options)]
        return Selection(tuple(chosen), False)
    unknown = [n for n in asked if n not in registry]
    if unknown:
        raise UserError(f"--sources: unknown source(s) {', '.join(unknown)}; known: {', '.join(registry)} (a plugin's "
                        "source: load its module with --plugins MODULE)")
    for name in asked:
        lack = _lacks(registry[name], options)
        if lack:
            raise UserError(f"--sources {name}: {lack}, or leave {name} out of --sources")
    return Selection(tuple(s for s in registry.values() if s.name in asked), True)


def _lacks(source: Source, options: SharedOptions) -> str | None:
    return source.requires(source_options(source, options)) if source.requires else None


def check_precision(precision: str, device: str | None = None) -> None:
    """Raise :class:`UserError` for a ``--precision`` that cannot run (checked before any work)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        import torch

        target = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if not str(target).startswith("cpu"):
            raise UserError("--precision int8 runs on CPU only (dynamic int8 quantization); on a GPU use fp16")


def check_sources(options: SharedOptions) -> Selection:
    """Before any work: ``--plugins``, ``--sources`` and each chosen source's own checks; the selection, for the
    pipeline to build (see :func:`select_sources`)."""
    load_plugins(getattr(options, "plugins", None))
    selection = select_sources(options)
    for source in selection.sources:
        if source.check:
            source.check(source_options(source, options))
    return selection
