"""The review app: annotate uploaded images, browse an annotated output, review it and teach the fusion policy.

``python recipes/app.py [--dataset OUTPUT_DIR_OR_HUB_ID] [--port 7860] [--feedback_log PATH]`` serves it; the parts:

- :mod:`.annotator`: the pipeline built once, single images run through it in memory;
- :mod:`.data`: an annotated output read row group by row group (filters with ``pyarrow.compute``);
- :mod:`.review`: the review queue (priority, the label shown and its propensity);
- :mod:`.feedback`: the feedback log (the format ``recipes/train_fusion.py --mode feedback`` reads) and continued
  training from it;
- :mod:`.state`: every user action as a method (shared by the page, the API and the command line);
- :mod:`.serving`: who may reach the served app (a login beyond this machine);
- :mod:`.ui`: the Gradio page and its API endpoints (``/annotate``, ``/review_next``, ``/review_decide``, ...).

Importing the package imports nothing heavy; its names load on first use.
"""

__all__ = ["AppConfig", "AppState", "build_ui", "launch"]


def __getattr__(name):
    if name in ("AppConfig", "AppState"):
        from . import state

        return getattr(state, name)
    if name in ("build_ui", "launch"):  # gradio is an optional dependency (the `app` extra)
        from . import ui

        return getattr(ui, name)
    raise AttributeError(name)
