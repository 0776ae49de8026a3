"""The shared stages: each a top-level, picklable callable for batched ``datasets.map``.

:mod:`.base` (the calling convention), :mod:`.pixels` (what a model reads: :class:`~.pixels.PixelSpec`),
:mod:`.decode` (one read and one decode per image), :mod:`.signatures`, :mod:`.identity`, :mod:`.fusion` and
:mod:`.policy`. A source's own stages live in its package of :mod:`charattr_hf.sources`. Importing this package
imports nothing heavy; the names below are imported on first use.
"""

__all__ = ["Compose", "Stage", "FusionStage", "SimpleFusion"]

_LAZY = {"Compose": "base", "Stage": "base", "FusionStage": "fusion", "SimpleFusion": "fusion"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
