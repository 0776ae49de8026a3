"""Metrics for attribute annotations, as ``evaluate.Metric`` modules that work offline.

``evaluate.load("accuracy")`` fetches its script from the Hugging Face Hub, which air-gapped clusters cannot
reach. These modules ship inside the package instead. Use them either by instantiation::

    from charattr_hf.metrics import LabelAccuracy
    LabelAccuracy(keep_in_memory=True).compute(predictions=[0, 1, -1], references=[0, 1, 1])

or through ``evaluate.load`` with a local path (no network; ``evaluate`` copies the script into its
modules cache, ``HF_MODULES_CACHE``)::

    import evaluate
    from charattr_hf.metrics import metric_path
    f1 = evaluate.load(metric_path("label_f1"), "multilabel")

Modules (each with a ``multiclass`` default config and a ``multilabel`` config):

- ``label_accuracy``: accuracy / exact-match accuracy, missing predictions (-1) counted wrong;
- ``label_f1``: macro-F1 / micro- and macro-F1;
- ``calibration_error``: expected calibration error with a reliability table;
- ``selective_accuracy``: coverage and accuracy when abstaining below a confidence threshold.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import evaluate

from .calibration_error import CalibrationError
from .label_accuracy import LabelAccuracy
from .label_f1 import LabelF1
from .selective_accuracy import SelectiveAccuracy

__all__ = [
    "CalibrationError",
    "LabelAccuracy",
    "LabelF1",
    "SelectiveAccuracy",
    "METRICS",
    "metric_path",
    "load_metric",
]

#: Metric module name -> class.
METRICS: dict[str, type[evaluate.Metric]] = {
    "label_accuracy": LabelAccuracy,
    "label_f1": LabelF1,
    "calibration_error": CalibrationError,
    "selective_accuracy": SelectiveAccuracy,
}


def metric_path(name: str) -> str:
    """Local path of a metric script, for ``evaluate.load(metric_path(name), config_name)``."""
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; available: {sorted(METRICS)}")
    return str(resources.files("charattr_hf.metrics") / f"{name}.py")


def load_metric(name: str, config_name: str = "multiclass", **kwargs: Any) -> evaluate.Metric:
    """Instantiate a shipped metric without copying its script (``keep_in_memory=True`` by default).

    Keeping inputs in memory avoids Arrow cache files and locks under ``HF_METRICS_CACHE``; ``evaluate``
    still creates that (empty) metric folder, so pass ``cache_dir`` to put it elsewhere.
    """
    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; available: {sorted(METRICS)}")
    kwargs.setdefault("keep_in_memory", True)
    return METRICS[name](config_name=config_name, **kwargs)
