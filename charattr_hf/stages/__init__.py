"""Pipeline stages: each a top-level, picklable callable for batched ``datasets.map``."""

from .base import Compose, Stage
from .fusion import FusionStage, SimpleFusion

__all__ = ["Compose", "Stage", "FusionStage", "SimpleFusion"]
