"""Models shipped with charattr-hf. Importing this package registers them with the transformers Auto classes."""

from .fusion import CharattrFusionConfig, CharattrFusionModel, CharattrFusionOutput

__all__ = ["CharattrFusionConfig", "CharattrFusionModel", "CharattrFusionOutput"]
