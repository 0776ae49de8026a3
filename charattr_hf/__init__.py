"""charattr-hf: annotate images of characters with attributes on Hugging Face datasets.

``import charattr_hf`` stays light (no torch): the pipeline's decode workers are forked processes that must
not load it. Heavier entry points are imported on first use.
"""

__version__ = "0.1.0"

from .schema import Attribute, Label, Schema, list_schemas, load_schema

__all__ = ["Attribute", "Label", "Schema", "annotate", "annotate_to_disk", "list_schemas", "load_schema", "__version__"]


def __getattr__(name):
    if name in ("annotate", "annotate_to_disk"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'charattr_hf' has no attribute {name!r}")
