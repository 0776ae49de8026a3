"""Accuracy for attribute labels, counting missing predictions as wrong.

Usable directly (``LabelAccuracy(keep_in_memory=True)``) or offline through ``evaluate.load`` with the path
of this file (``charattr_hf.metrics.metric_path("label_accuracy")``); it needs no Hub access.
"""

import evaluate

from charattr_hf.metrics import core

_DESCRIPTION = """\
Accuracy of attribute labels.

- ``multiclass`` (default): one label index per row; accuracy = correct rows / rows. A negative prediction
  (-1) marks a missing prediction (no evidence, failed row) and counts as wrong.
- ``multilabel``: one 0/1 indicator vector per row; subset (exact-match) accuracy = rows whose predicted set
  equals the true set / rows. A prediction row containing a negative value is missing and counts as wrong.

Rows without ground truth must be dropped before calling the metric.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: label indices (multiclass, -1 = missing) or 0/1 indicator vectors (multilabel, a row of -1
        = missing).
    references: label indices or 0/1 indicator vectors, same shape as the predictions.
Returns:
    accuracy (multiclass) or subset_accuracy (multilabel): float in [0, 1], None when there are no rows;
    n: number of rows; correct: rows predicted right (exactly right, multilabel); missing: number of missing
    predictions.
Examples:
    >>> from charattr_hf.metrics import LabelAccuracy
    >>> LabelAccuracy(keep_in_memory=True).compute(predictions=[0, 1, -1], references=[0, 1, 1])
    {'accuracy': 0.6666666666666666, 'n': 3, 'correct': 2, 'missing': 1}
    >>> LabelAccuracy("multilabel", keep_in_memory=True).compute(
    ...     predictions=[[1, 0], [1, 1]], references=[[1, 0], [1, 0]])
    {'subset_accuracy': 0.5, 'n': 2, 'correct': 1, 'missing': 0}
"""

_CITATION = ""


class LabelAccuracy(evaluate.Metric):
    """Accuracy (multiclass) or exact-match accuracy (multilabel) with missing predictions counted wrong."""

    def _info(self) -> evaluate.MetricInfo:
        return core.metric_info(self.config_name, "labels", _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)

    def _compute(self, predictions, references):
        if self.config_name == "multilabel":
            return core.multilabel_accuracy(predictions, references)
        return core.multiclass_accuracy(predictions, references)
