"""charattr-hf: annotate images of characters with attributes on Hugging Face datasets."""

__version__ = "0.1.0"

from .schema import Attribute, Label, Schema, list_schemas, load_schema

__all__ = ["Attribute", "Label", "Schema", "list_schemas", "load_schema", "__version__"]
