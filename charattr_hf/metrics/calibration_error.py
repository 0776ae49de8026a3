"""Expected calibration error (ECE) of attribute confidences, with a reliability table.

Usable directly (``CalibrationError(keep_in_memory=True)``) or offline through ``evaluate.load`` with the
path of this file (``charattr_hf.metrics.metric_path("calibration_error")``); it needs no Hub access.
"""

import evaluate

from charattr_hf.metrics import core

_DESCRIPTION = """\
Expected calibration error with equal-width bins (15 by default, as in Guo et al. 2017).

Bin b holds confidences in (b/B, (b+1)/B] (the first bin also holds 0). ECE = sum over bins of
(items in bin / items) * |observed frequency - mean confidence|; MCE is the largest gap of a non-empty bin.

- ``multiclass`` (default): top-label calibration. Inputs: predictions (label index, -1 = missing),
  references, confidences (probability of the predicted label). The observed frequency is accuracy.
  Rows with a missing prediction or a non-finite confidence have no confidence and are left out.
- ``multilabel``: calibration of per-label presence probabilities. Inputs: probabilities (one per label)
  and references (0/1 indicator vectors); every (row, label) pair is one item and the observed frequency
  is how often the label is present. Rows with a non-finite probability are left out.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (multiclass): predicted label indices, -1 = missing.
    references: true label indices (multiclass) or 0/1 indicator vectors (multilabel).
    confidences (multiclass): probability given to the predicted label.
    probabilities (multilabel): presence probability of each label.
    num_bins (int, default 15): number of equal-width confidence bins.
Returns:
    ece, mce: floats (None when no item has a confidence); mean_confidence: mean of the confidences used;
    n: items used;
    bins: non-empty bins as {lower, upper, count, confidence, accuracy}.
Examples:
    >>> from charattr_hf.metrics import CalibrationError
    >>> CalibrationError(keep_in_memory=True).compute(
    ...     predictions=[0, 1], references=[0, 0], confidences=[0.75, 0.5])["ece"]
    0.375
"""

_CITATION = """\
@inproceedings{guo2017calibration,
  title={On Calibration of Modern Neural Networks},
  author={Guo, Chuan and Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.},
  booktitle={ICML},
  year={2017}
}
"""


class CalibrationError(evaluate.Metric):
    """Expected calibration error (top-label for multiclass, per-label presence for multilabel)."""

    def _info(self) -> evaluate.MetricInfo:
        return core.metric_info(self.config_name, "confidences", _DESCRIPTION, _KWARGS_DESCRIPTION, _CITATION,
                                reference_urls=["https://arxiv.org/abs/1706.04599"])

    def _compute(self, references, predictions=None, confidences=None, probabilities=None, num_bins=15):
        if self.config_name == "multilabel":
            return core.multilabel_calibration(probabilities, references, num_bins=int(num_bins))
        return core.multiclass_calibration(predictions, references, confidences, num_bins=int(num_bins))
