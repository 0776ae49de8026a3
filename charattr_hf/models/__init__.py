"""Models shipped with charattr-hf. Importing :mod:`.fusion` registers the fusion policy with the transformers Auto
classes; this package imports it on first use of a name below (transformers is heavy)."""

__all__ = ["CharattrFusionConfig", "CharattrFusionModel", "CharattrFusionOutput"]


def __getattr__(name):  # imported on first use: transformers is heavy
    if name in __all__:
        from . import fusion

        return getattr(fusion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
