"""Who may reach the served app. On this machine's loopback interface (the default, ``127.0.0.1``) no one else
can; on any other interface (``--host 0.0.0.0``: every one) every endpoint, retraining and the feedback log
included, is open to the network, so the app asks for a password there (Gradio's login page, and
``gradio_client.Client(url, auth=(user, password))``), unless ``--insecure`` says the network is trusted.
Gradio's public share link (``share=True``, which ``GRADIO_SHARE=true`` or a Colab notebook would turn on) is never
made: it would open the app to anyone while it listens on loopback only, without a login.

This module imports nothing heavy: the recipe checks its options with it before any model loads.
"""

from __future__ import annotations

import ipaddress
import os

from ..errors import UserError

__all__ = ["AUTH_ENV", "check_serving", "is_loopback", "parse_auth", "redact_auth", "serving_auth"]

#: Environment variable read when ``--auth`` is not given (keeps the password out of the process list).
AUTH_ENV = "CHARATTR_APP_AUTH"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address (or ``localhost``) that only this machine can reach."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` -> ``(user, password)`` (the password may hold ``:``); empty -> None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise UserError(f"--auth (or ${AUTH_ENV}) must be USER:PASSWORD with both parts given")
    return user, password


def serving_auth(host: str, auth: str | None, insecure: bool = False) -> tuple[str, str] | None:
    """The login to serve with (``--auth``, else ``$CHARATTR_APP_AUTH``), after refusing to serve beyond this
    machine without one unless ``insecure``."""
    login = parse_auth(auth if auth else os.environ.get(AUTH_ENV))
    check_serving(host, login, insecure)
    return login


def check_serving(host: str, login: tuple[str, str] | None, insecure: bool = False) -> None:
    """Refuse to serve on ``host`` beyond this machine without a ``login`` unless ``insecure`` (what both the
    recipe and :func:`charattr_hf.app.ui.launch` check)."""
    if login is None and not insecure and not is_loopback(host):
        raise UserError(
            f"--host {host} serves every endpoint (annotate, review, retrain, the feedback log) to the network: give "
            f"--auth USER:PASSWORD (or set ${AUTH_ENV}), or --insecure to serve it without a login on a trusted network"
        )


def redact_auth(argv: list[str]) -> list[str]:
    """``argv`` with the value of ``--auth`` (``--auth X`` and ``--auth=X``) replaced by ``***``: a command that is
    recorded (the policy's ``training_info``, its model card) or printed never holds the password."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("***")
        elif arg.startswith("--auth="):
            out.append("--auth=***")
        else:
            out.append(arg)
        hide = not hide and arg == "--auth"
    return out
