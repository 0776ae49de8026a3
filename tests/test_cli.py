"""The option parser built from the library's dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field

import re

import pytest

from charattr_hf.cli import build_parser, parse_args
from charattr_hf.options import InputSpec, PipelineOptions, RunOptions


@dataclass
class Extra:
    flip: bool = field(default=True, metadata={"help": "Random flips."})
    names: list[str] = field(default_factory=list, metadata={"help": "Some names."})
    internal: int = 3


def test_library_dataclasses_parse_directly():
    spec, options, run = parse_args([InputSpec, PipelineOptions, RunOptions],
                                    ["--dataset", "x", "--dataset_config", "sub", "--no_tags", "--no_cache",
                                     "--keep_columns", "a", "b", "--batch_size", "8", "--quiet"])
    assert spec.dataset == "x" and spec.config == "sub" and list(spec.keep_columns) == ["a", "b"]
    assert options.tags is False and options.use_cache is False and options.batch_size == 8
    assert run.quiet is True and run.prefetch_flag is None
    assert spec.sample_image_size == 64  # not an option: keeps its default


def test_yaml_values_flags_override_and_the_config_option_is_not_a_field(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("dataset_config: from-yaml\nno_cache: true\nbatch_size: 4\nkeep_columns: style\n")
    spec, options, run = parse_args([InputSpec, PipelineOptions, RunOptions],
                                    ["--config", str(config), "--batch_size", "16"])
    assert spec.config == "from-yaml" and options.use_cache is False and options.batch_size == 16
    assert list(spec.keep_columns) == ["style"]
    spec, _, _ = parse_args([InputSpec, PipelineOptions, RunOptions], ["--config", str(config)])
    assert spec.config == "from-yaml"
    config.write_text("batch_size: 4\n")
    spec, _, _ = parse_args([InputSpec, PipelineOptions, RunOptions], ["--config", str(config)])
    assert spec.config is None  # the YAML file's path is not the dataset's config


def test_help_one_default_per_option_and_plain_switches():
    text = build_parser([InputSpec, PipelineOptions, RunOptions, Extra]).format_help()
    blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=-)", text.split("options:", 1)[1])]
    assert len(blocks) > 30
    for block in blocks:
        assert block.lower().count("default:") <= 1, block
    for switch in ("--streaming", "--no_tags", "--no_cache", "--quiet", "--keep_embedding", "--debug"):
        assert f"[{switch}]" in text  # switches take no value
    assert "[STREAMING]" not in text and "--streaming STREAMING" not in text
    assert "--flip, --no-flip" in text and "--internal" not in text
    block = " ".join(text.split())
    # the defaults said in the help text itself are not repeated
    assert "Default: the embedded synthetic sample." in block
    assert block.count("Default: the embedded synthetic sample") == 1
    assert "(default: 32)" in block and "(default: 1024)" in block


def test_out_of_range_and_bad_choices_exit_2(capsys):
    for argv in (["--batch_size", "0"], ["--limit", "-1"], ["--chunk_size", "0"], ["--precision", "fp8"]):
        with pytest.raises(SystemExit) as info:
            parse_args([InputSpec, PipelineOptions, RunOptions], argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert argv[0] in err and len(err.strip().splitlines()) == 2


@dataclass
class OwnConfig:
    curate_config: str = field(default=None, metadata={"help": "The curation YAML, also given as --config.",
                                                       "config_file": True})


def test_an_option_that_config_names_is_described_one_way(tmp_path):
    """curate.py's --config names its curation YAML, not a file of option values: --help says so once, and the
    option gets the file (which is not read as option values)."""
    import subprocess
    import sys
    from pathlib import Path

    text = " ".join(build_parser([OwnConfig]).format_help().split())
    assert "--config FILE.yaml The same as --curate_config." in text and "option values" not in text
    (tmp_path / "c.yaml").write_text("filters: {too_small: {min_side: 128}}\n")
    assert parse_args([OwnConfig], ["--config", str(tmp_path / "c.yaml")]).curate_config == str(tmp_path / "c.yaml")
    recipe = Path(__file__).parents[1] / "recipes" / "curate.py"
    help_text = subprocess.run([sys.executable, str(recipe), "--help"], capture_output=True, text=True).stdout
    assert "option values" not in help_text and "The same as --curate_config" in " ".join(help_text.split())
