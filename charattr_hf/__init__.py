"""charattr-hf: annotate images of characters with attributes on Hugging Face datasets.

``import charattr_hf`` is light (no torch, no datasets): the recipes parse their arguments and check them before
anything heavy is imported, and the pipeline's decode workers (started by a forkserver) must not load torch.
Every public name is imported on first use.
"""

__version__ = "0.3.0"

__all__ = ["Attribute", "Label", "Schema", "annotate", "annotate_to_disk", "list_schemas", "load_schema", "__version__"]

_LAZY = {
    "annotate": "api",
    "annotate_to_disk": "api",
    "Attribute": "schema",
    "Label": "schema",
    "Schema": "schema",
    "list_schemas": "schema",
    "load_schema": "schema",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'charattr_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
