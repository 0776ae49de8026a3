"""Attribute sources as plugins: one package (or module) per source, registered by name, as open_clip and
transformers register models.

What a source is and how it is chosen: :mod:`.base`. The built-in sources are the packages of this folder
(:mod:`.clip`, :mod:`.tagger`, :mod:`.tags`, :mod:`.blip2`), each importing nothing heavy until it builds: this
module imports every one of them (there is no list of them anywhere) and assembles :class:`PipelineOptions` from
:class:`~.base.SharedOptions` and their options, in their ``order``. Adding a built-in source is adding one
package here.

A plugin is a module that calls :func:`register_source` when imported; the annotate recipe imports it when named
with ``--plugins MODULE`` (comma-separated; a module of the current folder or an installed one), in the
``CHARATTR_HF_PLUGINS`` environment variable, or declared by an installed package as an entry point of the group
``charattr_hf.sources`` (``[project.entry-points."charattr_hf.sources"] mine = "my_package.my_source"``). README
"Adding a source" has a complete example.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Optional

from .base import (ENTRY_POINT_GROUP, PLUGINS_ENV, BuildContext, Selection, SharedOptions, SkipSource, Source,
                   check_precision, check_sources, load_plugins, order_sources, plugins_in_args, register_source,
                   registered_sources, select_sources, source_options)

__all__ = ["Source", "BuildContext", "SkipSource", "Selection", "SharedOptions", "PipelineOptions",
           "register_source", "registered_sources", "order_sources", "load_plugins", "plugins_in_args",
           "select_sources", "check_sources", "check_precision", "source_options", "builtin_sources",
           "ENTRY_POINT_GROUP", "PLUGINS_ENV"]


def _import_builtin_sources() -> tuple[Source, ...]:
    """Import every source package of this folder; each registers its source. Returns them in their order."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base" and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    return tuple(registered_sources().values())


_BUILTIN = _import_builtin_sources()


def builtin_sources() -> list[str]:
    """The built-in sources' names, in their order."""
    return [s.name for s in _BUILTIN]


def _pipeline_options() -> type:
    """``SharedOptions`` and every built-in source's options in one dataclass: the options of a run that the library
    takes as they are and the recipes parse from the command line and YAML."""
    bases = tuple(s.options for s in reversed(_BUILTIN) if s.options is not None) + (SharedOptions,)
    sources_help = (f"Sources to run, comma-separated, from {', '.join(builtin_sources())} and those of --plugins. "
                    "Default: every source the input and the other options make available.")
    cls = dataclasses.make_dataclass(
        "PipelineOptions",
        [("sources", Optional[str], dataclasses.field(default=None, metadata={"help": sources_help}))],
        bases=bases,
        namespace={"__doc__": "Which sources run, with which models, schema and fusion: the options every source "
                              "shares (:class:`SharedOptions`) and every built-in source's."},
    )
    cls.__module__ = __name__
    return cls


#: The options of an annotation run (a dataclass; see :func:`_pipeline_options`).
PipelineOptions = _pipeline_options()
