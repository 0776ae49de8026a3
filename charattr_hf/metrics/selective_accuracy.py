"""Coverage and accuracy when abstaining below a confidence threshold (selective prediction).

Usable directly (``SelectiveAccuracy(keep_in_memory=True)``) or offline through ``evaluate.load`` with the
path of this file (``charattr_hf.metrics.metric_path("selective_accuracy")``); it needs no Hub access.
"""

import evaluate

from charattr_hf.metrics import core

_DESCRIPTION = """\
Coverage and accuracy of the decisions whose confidence is at least ``threshold``; the others are withheld.
coverage = kept decisions / all decisions; accuracy = correct kept decisions / kept decisions (None when
nothing is kept). A curve over ``thresholds`` is returned as well.

- ``multiclass`` (default): one decision per row, confidence = probability of the predicted label. A missing
  prediction (-1) or a non-finite confidence is never kept but counts in the coverage denominator.
- ``multilabel``: one decision per (row, label): present iff probability >= ``label_threshold``, with
  confidence p if present and 1 - p if absent. Rows with a non-finite probability are withheld entirely.

Unlike accuracy, the accuracy here is measured on kept decisions only: that is the point of abstaining.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (multiclass): predicted label indices, -1 = missing.
    references: true label indices (multiclass) or 0/1 indicator vectors (multilabel).
    confidences (multiclass): probability given to the predicted label.
    probabilities (multilabel): presence probability of each label.
    threshold (float, default 0.5): keep decisions with confidence >= threshold.
    label_threshold (float, default 0.5, multilabel): presence threshold of a label.
    thresholds (list of float): thresholds of the coverage/accuracy curve.
Returns:
    coverage, accuracy, kept, n, threshold, curve (list of {threshold, coverage, accuracy, kept}).
Examples:
    >>> from charattr_hf.metrics import SelectiveAccuracy
    >>> r = SelectiveAccuracy(keep_in_memory=True).compute(
    ...     predictions=[0, 1, 2], references=[0, 0, 2], confidences=[0.9, 0.4, 0.6], threshold=0.5)
    >>> r["coverage"], r["accuracy"]
    (0.6666666666666666, 1.0)
"""

_CITATION = """\
@inproceedings{geifman2017selective,
  title={Selective Classification for Deep Neural Networks},
  author={Geifman, Yonatan and El-Yaniv, Ran},
  booktitle={NeurIPS},
  year={2017}
}
"""


class SelectiveAccuracy(evaluate.Metric):
    """Coverage and accuracy on kept decisions when abstaining below a confidence threshold."""

    def _info(self) -> evaluate.MetricInfo:
        return core.metric_info(self.config_name, "confidences", _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION)

    def _compute(
        self,
        references,
        predictions=None,
        confidences=None,
        probabilities=None,
        threshold=0.5,
        label_threshold=None,
        thresholds=core.DEFAULT_CURVE_THRESHOLDS,
    ):
        if self.config_name == "multilabel":
            lt = 0.5 if label_threshold is None else float(label_threshold)
            return core.multilabel_selective(probabilities, references, float(threshold), lt, thresholds)
        if label_threshold is not None:
            raise ValueError("'label_threshold' is only used by the multilabel config")
        return core.multiclass_selective(predictions, references, confidences, float(threshold), thresholds)
