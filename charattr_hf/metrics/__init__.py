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

The arithmetic is :mod:`charattr_hf.metrics.core`, which the rest of charattr-hf calls directly; importing it
(or this package) does not import ``evaluate``: the module classes load on first use.

Modules (each with a ``multiclass`` default config and a ``multilabel`` config):

- ``label_accuracy``: accuracy / exact-match accuracy, missing predictions (-1) counted wrong;
- ``label_f1``: macro-F1 / micro- and macro-F1;
- ``calibration_error``: expected calibration error with a reliability table;
- ``selective_accuracy``: coverage and accuracy when abstaining below a confidence threshold.
"""

from __future__ import annotations

from importlib import import_module, resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the classes import ``evaluate``: loaded on first use, see __getattr__
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

#: Metric module name -> class name (the class is ``metric_class(name)``).
_CLASSES: dict[str, str] = {
    "label_accuracy": "LabelAccuracy",
    "label_f1": "LabelF1",
    "calibration_error": "CalibrationError",
    "selective_accuracy": "SelectiveAccuracy",
}


def metric_class(name: str) -> "type[evaluate.Metric]":
    """The ``evaluate.Metric`` class of a shipped metric module."""
    if name not in _CLASSES:
        raise KeyError(f"unknown metric {name!r}; available: {sorted(_CLASSES)}")
    return getattr(import_module(f"{__name__}.{name}"), _CLASSES[name])


def __getattr__(attr: str) -> Any:
    if attr == "METRICS":  # metric module name -> class
        return {name: metric_class(name) for name in _CLASSES}
    for name, cls in _CLASSES.items():
        if cls == attr:
            return metric_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def metric_path(name: str) -> str:
    """Local path of a metric script, for ``evaluate.load(metric_path(name), config_name)``."""
    if name not in _CLASSES:
        raise KeyError(f"unknown metric {name!r}; available: {sorted(_CLASSES)}")
    return str(resources.files("charattr_hf.metrics") / f"{name}.py")


def load_metric(name: str, config_name: str = "multiclass", **kwargs: Any) -> "evaluate.Metric":
    """Instantiate a shipped metric without copying its script (``keep_in_memory=True`` by default).

    Keeping inputs in memory avoids Arrow cache files and locks under ``HF_METRICS_CACHE``; ``evaluate``
    still creates that (empty) metric folder, so pass ``cache_dir`` to put it elsewhere.
    """
    kwargs.setdefault("keep_in_memory", True)
    return metric_class(name)(config_name=config_name, **kwargs)
