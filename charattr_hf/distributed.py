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

__all__ = ["get_state", "broadcast"]


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
