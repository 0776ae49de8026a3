"""Attribute sources as plugins: one module per source, registered by name, as open_clip and transformers
register models.

A source gives, per image, a probability vector per attribute of the schema, in the column ``probs_<name>``
(``Schema.probs_feature()``); fusion (a rule or a learned policy) and fusion training read every such column.
A source is a :class:`Source`:

- ``name``: the column is ``probs_<name>``; ``--sources`` names it.
- ``options``: a dataclass of its options; each field with ``metadata={"help": ...}`` is a command-line flag of
  the annotate recipe (parsed by :mod:`charattr_hf.cli`). The built-in sources' options are bases of
  :class:`~charattr_hf.options.PipelineOptions`; a plugin's are given to ``build_pipeline`` in
  ``PipelineOptions.source_options[name]`` (the recipe does this).
- ``requires(opts)``: what its options lack to run (``"give --tagger ID"``), or None. Without ``--sources`` a
  source runs when nothing is lacking; a source named in ``--sources`` that lacks something is a user error.
- ``check(opts)``: checks of its options made before any work (no heavy imports): raise ``UserError``.
- ``build(ctx, opts)``: adds its stages to the :class:`BuildContext` (CPU stages after the shared decode, model
  stages, extra output columns, description entries), or calls ``ctx.skip(reason)`` when it cannot run on this
  input (a message without ``--sources``, a user error with it).
- ``default``: False for a source that runs only when ``--sources`` names it.
- ``shipped_schema(opts)``: the schema its model ships (a YAML path) or None; the run's schema when
  ``--schema`` is not given.

Built-in, in this order (the order of columns, of the sources in tables and of a new policy's inputs):
:mod:`.clip`, :mod:`.tagger`, :mod:`.tags`, :mod:`.blip2`. A plugin is a module that calls
:func:`register_source` when imported; the annotate recipe imports it when named with ``--plugins MODULE``
(comma-separated; a module of the current folder or an installed one), in the ``CHARATTR_HF_PLUGINS``
environment variable, or declared by an installed package as an entry point of the group ``charattr_hf.sources``
(``[project.entry-points."charattr_hf.sources"] mine = "my_package.my_source"``). README "Adding a source" has
a complete example.

This module and the source modules import nothing heavy: the recipe reads their options for ``--help``.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..errors import UserError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from ..options import PipelineOptions
    from ..schema import Schema
    from ..stages.base import Stage

__all__ = ["Source", "BuildContext", "register_source", "registered_sources", "order_sources", "load_plugins",
           "plugins_in_args", "select_sources", "check_sources", "source_options", "BUILTIN_SOURCES",
           "ENTRY_POINT_GROUP", "PLUGINS_ENV"]

#: The built-in sources, in their order.
BUILTIN_SOURCES = ("clip", "tagger", "tags", "blip2")
ENTRY_POINT_GROUP = "charattr_hf.sources"
PLUGINS_ENV = "CHARATTR_HF_PLUGINS"


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

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(f"a source name must be an identifier (its column is probs_<name>), got {self.name!r}")


class SkipSource(Exception):
    """Raised by :meth:`BuildContext.skip`: the source cannot run on this input."""


@dataclass
class BuildContext:
    """What a source's ``build`` reads and adds to. The CPU part of a row is ``decode`` (one pass over each
    image: hash, quality, the pixels every model reads) followed by ``cpu``; then ``device`` (model stages, in the
    main process), then fusion.

    - ``decode``: the shared :class:`~charattr_hf.stages.decode.DecodeStage`. A source that needs pixels of its
      own size adds a working column to it: ``ctx.decode = ctx.decode.with_extra_pixels(_pixels_mine={...})``.
      CLIP, built first, replaces it with the decode stage its preprocessing defines (``_pixels``).
    - ``cpu``: stages after decode (they see its columns; rows it quarantined are skipped), in ``num_proc``
      workers when ``cpu_bound`` (no torch there). ``device``: model stages.
    - ``columns``: output columns besides ``probs_<name>`` (``tagger_tags``...), as ``datasets`` features.
    - ``description``: entries for the run's description (manifest, card).
    - ``embedding``: whether a source that can give the image embedding should (``--keep_embedding``, or the
      fusion policy reads it).
    """

    options: "PipelineOptions"
    schema: "Schema"
    input_columns: list[str]
    decode: "Stage"
    writer: str = "main"
    embedding: bool = False
    cpu: list = field(default_factory=list)
    device: list = field(default_factory=list)
    columns: dict = field(default_factory=dict)
    description: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)

    def skip(self, reason: str):
        """Stop building the current source (call it before adding anything): it cannot run on this input
        (``reason``: why, and what to do)."""
        raise SkipSource(reason)


_REGISTRY: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    """Add ``source`` to the registry (a source of the same name is replaced); returns it."""
    _REGISTRY[source.name] = source
    return source


def registered_sources() -> dict[str, Source]:
    """Every registered source by name, built-in ones first, then plugins in the order they were registered."""
    return dict(_REGISTRY)


def order_sources(names: Iterable[str]) -> list[str]:
    """``names`` in the registry's order, unknown ones (a user's own ``probs_*`` column) after them by name."""
    names = set(names)
    known = [*BUILTIN_SOURCES, *(s for s in _REGISTRY if s not in BUILTIN_SOURCES)]
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


def source_options(source: Source, options: "PipelineOptions") -> Any:
    """The options of ``source`` in this run: ``options`` itself for a built-in source (its options are bases of
    :class:`PipelineOptions`), else ``options.source_options[name]`` or the defaults."""
    if source.options is None:
        return None
    if isinstance(options, source.options):
        return options
    given = (getattr(options, "source_options", None) or {}).get(source.name)
    return given if given is not None else source.options()


def select_sources(options: "PipelineOptions") -> tuple[list[Source], bool]:
    """(the sources to build in registry order, whether ``--sources`` named them). Unknown names and named
    sources whose options lack something are user errors; without ``--sources`` every default source whose
    options lack nothing is chosen."""
    registry = registered_sources()
    asked = _split(getattr(options, "sources", None))
    if not asked:
        chosen = [s for s in registry.values() if s.default and not _lacks(s, options)]
        return chosen, False
    unknown = [n for n in asked if n not in registry]
    if unknown:
        raise UserError(f"--sources: unknown source(s) {', '.join(unknown)}; known: {', '.join(registry)} (a plugin's "
                        "source: load its module with --plugins MODULE)")
    for name in asked:
        lack = _lacks(registry[name], options)
        if lack:
            raise UserError(f"--sources {name}: {lack}, or leave {name} out of --sources")
    return [s for s in registry.values() if s.name in asked], True


def _lacks(source: Source, options: "PipelineOptions") -> str | None:
    return source.requires(source_options(source, options)) if source.requires else None


def check_sources(options: "PipelineOptions") -> list[Source]:
    """Before any work: ``--sources`` and each chosen source's own checks (see :func:`select_sources`)."""
    load_plugins(getattr(options, "plugins", None))
    chosen, _ = select_sources(options)
    for source in chosen:
        if source.check:
            source.check(source_options(source, options))
    return chosen


# the built-in sources register themselves, in BUILTIN_SOURCES order
from . import clip, tagger, tags, blip2  # noqa: E402,F401  (isort: skip)
