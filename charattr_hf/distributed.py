"""The process group, set up once for every entry point.

``PartialState()`` alone, on a machine without GPUs, believes each process launched by ``accelerate launch
--multi_gpu`` is alone, so every process would do all the work; ``cpu=True`` there makes them a real gloo group.
The timeout is long (``CHARATTR_DIST_TIMEOUT`` seconds, default 6 hours): ranks legitimately wait at the end
of a run for the slowest one and for the main process to assemble the output, and the collective
library's default (10 minutes for NCCL) would kill a healthy job.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

__all__ = ["get_state", "broadcast", "relaunch_as_cpu_processes"]


def get_state():
    import torch
    from accelerate import PartialState

    timeout = timedelta(seconds=int(os.environ.get("CHARATTR_DIST_TIMEOUT", 6 * 3600)))
    return PartialState(cpu=not torch.cuda.is_available(), timeout=timeout)


def broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process (a no-op when there is one process)."""
    state = get_state()
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _parent_launch_processes(script: str) -> int | None:
    """``--num_processes N`` of the ``accelerate launch`` that started this process, when it is the parent."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            args = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return None
    if not any(a == "launch" or a.endswith("accelerate.commands.launch") for a in args):
        return None
    script = os.path.realpath(script)
    end = next((i for i, a in enumerate(args) if os.path.realpath(a) == script), len(args))
    for i, a in enumerate(args[:end]):
        value = None
        if a in ("--num_processes", "--num-processes") and i + 1 < end:
            value = args[i + 1]
        elif a.startswith(("--num_processes=", "--num-processes=")):
            value = a.split("=", 1)[1]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def relaunch_as_cpu_processes(script: str, argv: list[str]) -> None:
    """Make ``accelerate launch --num_processes N script`` start N processes on a machine without GPUs.

    Without ``--multi_gpu`` (or a config that says so) ``accelerate launch`` starts one process on such a
    machine, whatever ``--num_processes`` says. Called first thing by a recipe: when this process was started
    that way, it is replaced (``exec``) by ``accelerate launch --multi_gpu --num_processes N script argv``,
    whose processes form a real CPU (gloo) process group; otherwise it returns at once.
    """
    if os.environ.get("WORLD_SIZE") or os.environ.get("CHARATTR_RELAUNCHED") or "ACCELERATE_MIXED_PRECISION" not in os.environ:
        return
    wanted = _parent_launch_processes(script)
    if not wanted or wanted < 2:
        return
    import sys

    import torch

    if torch.cuda.is_available():
        return
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(wanted),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", script, *argv]
    print(f"no GPU here: starting {wanted} CPU processes, as `accelerate launch --multi_gpu --num_processes {wanted} "
          f"{os.path.relpath(script)} ...` does", file=sys.stderr, flush=True)
    env = dict(os.environ, CHARATTR_RELAUNCHED="1")
    os.execve(sys.executable, cmd, env)
