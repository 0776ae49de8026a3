"""Command-line parsing shared by the recipes: dataclasses parsed by ``HfArgumentParser``, where
``--config file.yaml`` gives values and flags given on the command line override them."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml
from transformers import HfArgumentParser

__all__ = ["parse_args", "configure_torch_threads"]


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None):
    """Parse ``argv`` into one instance per dataclass; ``--config`` YAML supplies defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)

    parser = HfArgumentParser(list(dataclass_types), description=description)
    parser.add_argument(
        "--config", default=None, help="YAML file of option values; options given on the command line override it."
    )
    if known.config:
        values = _load_yaml(known.config)
        fields = {f.name for dc in dataclass_types for f in dataclasses.fields(dc)}
        unknown = sorted(set(values) - fields)
        if unknown:
            parser.error(f"{known.config}: unknown option(s) {unknown}")
        for dc in dataclass_types:  # a scalar given for a list option means a list of one
            for f in dataclasses.fields(dc):
                if f.name in values and "list" in str(f.type).lower() and isinstance(values[f.name], (str, int, float)):
                    values[f.name] = [values[f.name]]
        parser.set_defaults(**values)
    *instances, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    instances = [i for i in instances if not isinstance(i, argparse.Namespace)]
    return instances[0] if len(instances) == 1 else tuple(instances)


def _load_yaml(path: str) -> dict[str, Any]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping of option: value")
    return data


def configure_torch_threads(threads: int = 0) -> int:
    """Give each local process its share of the CPU cores for torch's intra-op threads; returns the number.

    ``accelerate launch`` exports ``OMP_NUM_THREADS=1`` unless ``--num_cpu_threads_per_process`` is given, which
    on a CPU run leaves all but one core idle. ``threads`` > 0 is used as given; 0 (auto) means usable cores
    divided by the number of processes on this machine, whatever ``OMP_NUM_THREADS`` says.
    """
    import torch

    if threads <= 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("ACCELERATE_NUM_PROCESSES_LOCAL") or 1)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        threads = max(1, cores // max(local, 1))
    torch.set_num_threads(threads)
    return threads
