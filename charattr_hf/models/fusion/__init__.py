"""The learned fusion policy as a transformers model (``model_type = "charattr_fusion"``).

Importing this package registers the config and model with ``AutoConfig`` / ``AutoModel`` in-process, so
``AutoModel.from_pretrained(path_or_hub_id)`` loads a policy without ``trust_remote_code``: the code that
runs is the installed charattr-hf, never code downloaded with a checkpoint.
"""

from transformers import AutoConfig, AutoModel

from .card import render_metrics_table, render_model_card
from .configuration_fusion import CharattrFusionConfig
from .modeling_fusion import (
    CharattrFusionModel,
    CharattrFusionOutput,
    CharattrFusionPreTrainedModel,
    encode_columns,
    supervised_loss,
)

AutoConfig.register(CharattrFusionConfig.model_type, CharattrFusionConfig, exist_ok=True)
AutoModel.register(CharattrFusionConfig, CharattrFusionModel, exist_ok=True)

__all__ = [
    "CharattrFusionConfig",
    "CharattrFusionModel",
    "CharattrFusionOutput",
    "CharattrFusionPreTrainedModel",
    "encode_columns",
    "render_metrics_table",
    "render_model_card",
    "supervised_loss",
]
