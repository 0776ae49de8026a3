"""Errors a user can fix, and how the recipes show them.

A :class:`UserError` is a mistake in what was asked (a path that does not exist, an option out of range, a model
that cannot be loaded): the recipes print its message in one or two lines on stderr, once, and exit with status
2; the traceback is shown only with ``--debug``. Anything else is a bug or a fault and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["UserError", "ModelLoadError"]


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and what to do."""

    exit_code = 2


class ModelLoadError(UserError):
    """A model (CLIP, tagger, BLIP-2, fusion policy) could not be loaded: raised once, before any chunk runs."""
