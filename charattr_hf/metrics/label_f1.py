"""F1 for attribute labels: macro-F1 for single-label attributes, micro/macro-F1 for multi-label ones.

Usable directly (``LabelF1(keep_in_memory=True)``) or offline through ``evaluate.load`` with the path of this
file (``charattr_hf.metrics.metric_path("label_f1")``); it needs no Hub access.
"""

import evaluate

from charattr_hf.metrics import core

_DESCRIPTION = """\
F1 of attribute labels.

- ``multiclass`` (default): macro-F1 = unweighted mean over labels of 2TP / (2TP + FP + FN), and the
  support-weighted mean. Labels averaged over: those occurring in the references or in the predictions
  (scikit-learn's default), unless ``labels`` is given. A missing prediction (-1) adds a false negative for
  the row's true label and no false positive.
- ``multilabel``: micro precision, recall and F1 over all (row, label) pairs, and macro-F1 over the labels
  occurring in the references or the predictions. A missing prediction row (any negative value) predicts
  no label.

A label with 2TP + FP + FN = 0 has F1 0 (it can only happen when ``labels`` is given).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: label indices (multiclass, -1 = missing) or 0/1 indicator vectors (multilabel, a row of -1
        = missing).
    references: label indices or 0/1 indicator vectors, same shape as the predictions.
    labels (multiclass only, optional): the label indices to average over.
Returns:
    multiclass: macro_f1, weighted_f1. multilabel: micro_f1, macro_f1, micro_precision, micro_recall, and
    per_label (lists f1, precision, recall, support, indexed by label). Each is None when undefined (no rows).
Examples:
    >>> from charattr_hf.metrics import LabelF1
    >>> LabelF1(keep_in_memory=True).compute(predictions=[0, 1, 1], references=[0, 1, 0])["macro_f1"]
    0.6666666666666666
"""

_CITATION = ""


class LabelF1(evaluate.Metric):
    """Macro-F1 (multiclass) or micro/macro-F1 (multilabel), missing predictions counted against."""

    def _info(self) -> evaluate.MetricInfo:
        return core.metric_info(self.config_name, "labels", _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)

    def _compute(self, predictions, references, labels=None):
        if self.config_name == "multilabel":
            if labels is not None:
                raise ValueError("'labels' is only supported by the multiclass config")
            return core.multilabel_f1(predictions, references)
        return core.multiclass_f1(predictions, references, labels=labels)
