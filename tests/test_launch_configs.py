"""The accelerate configs shipped beside the recipes pass every value ``accelerate launch`` needs: with one of them
the launcher neither guesses nor prints its "values were not passed" warning. Checked with accelerate's own
argument parser and validation (the function ``accelerate launch`` runs before it starts anything; accelerate has
no public API for it), so nothing is launched and no address in the configs is contacted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[1] / "recipes" / "accelerate_configs").glob("*.yaml"))


def validate(args: list[str], caplog):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parsed = launch_command_parser().parse_args([*args, "recipes/annotate.py"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="accelerate.commands.launch"):
        validated, _, _ = _validate_launch_command(parsed)
    return validated, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_each_shipped_config_launches_without_guesses(config, caplog, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no user-level accelerate config
    validated, warnings = validate(["--config_file", str(config)], caplog)
    assert not warnings, warnings
    assert validated.num_processes >= 1 and validated.mixed_precision == "no"


def test_without_a_config_the_launcher_warns(caplog, monkeypatch, tmp_path):
    """What a new user sees with a plain ``accelerate launch`` (why the README runs one process with python)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import accelerate.commands.launch as launch

    monkeypatch.setattr(launch, "default_config_file", str(tmp_path / "none.yaml"))
    _, warnings = validate([], caplog)
    assert warnings and "were not passed" in warnings[0]
    assert CONFIGS and {c.stem for c in CONFIGS} >= {"single_process", "multi_gpu", "multi_node"}
