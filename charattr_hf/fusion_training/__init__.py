"""Training the learned fusion policy: from labels (supervised) or from reviewer feedback (contextual bandit).

One concern per module, every public name importable from here as well:

- :mod:`.data`: :func:`build_features` turns an annotated dataset (``probs_<source>`` + context columns, and a
  ``truth`` struct or a labels dataset joined by ``id`` via :func:`join_labels`) into :class:`FusionData`;
  :func:`build_config` makes a :class:`~charattr_hf.models.fusion.CharattrFusionConfig` for a schema, with the
  flag vocabulary and embedding size read from the data; :func:`split_by_id`.
- :mod:`.loop`: :class:`FusionTrainingConfig` and the loop both kinds of training share (AdamW, early stopping
  on a validation split, temperature scaling, a record of each round in ``config.training_info``).
- :mod:`.supervised`: :func:`train_supervised` (cross-entropy / BCE on labels).
- :mod:`.feedback`: the feedback log format (:data:`FEEDBACK_FEATURES`, one row per reviewer event, documented
  there), :func:`simulate_feedback` and :func:`train_from_feedback` with its estimator and the reasons for it.
  Training continues from whatever model it is given, so ``CharattrFusionModel.from_pretrained(saved)`` + new
  feedback = a better policy ("gets smarter over time").
- :mod:`.scoring`: :func:`compare_methods` (sources alone, the fixed fusion rules, learned policies; accuracy
  and ECE through the shared metrics of :mod:`charattr_hf.metrics`), shared by the training recipe and
  ``benchmarks/fusion.py``.
- :mod:`.testbed`: :func:`simulate_annotated`, an annotated dataset with ground truth where each source's
  reliability depends on the kind of image (see :data:`DEFAULT_PROFILES`).
"""

from .data import (
    FusionData,
    build_config,
    build_features,
    build_model,
    encode_labels,
    join_labels,
    load_table,
    open_annotated,
    split_by_id,
)
from .feedback import (
    FEEDBACK_FEATURES,
    FeedbackError,
    round_report,
    simulate_feedback,
    train_from_feedback,
    unlike_feedback_weights,
    validate_feedback,
)
from .loop import FusionTrainingConfig, TrainResult, fit_context_stats
from .scoring import compare_methods, method_probs, predict, score, summarize
from .supervised import train_supervised
from .testbed import DEFAULT_PROFILES, SIM_STYLES, SourceProfile, simulate_annotated

__all__ = [
    "FusionData",
    "FusionTrainingConfig",
    "TrainResult",
    "FEEDBACK_FEATURES",
    "SourceProfile",
    "DEFAULT_PROFILES",
    "SIM_STYLES",
    "build_config",
    "build_features",
    "build_model",
    "encode_labels",
    "fit_context_stats",
    "join_labels",
    "split_by_id",
    "train_supervised",
    "train_from_feedback",
    "unlike_feedback_weights",
    "round_report",
    "FeedbackError",
    "simulate_feedback",
    "simulate_annotated",
    "validate_feedback",
    "predict",
    "compare_methods",
    "method_probs",
    "score",
    "summarize",
    "load_table",
    "open_annotated",
]
