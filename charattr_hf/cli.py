"""Command-line parsing and error display shared by the recipes.

Options are the fields of dataclasses (the library's own, such as :class:`~charattr_hf.inputs.InputSpec` and
:class:`~charattr_hf.pipeline.PipelineOptions`, or a recipe's), each ``field(metadata={"help": ...})`` one
option; a field without ``help`` is not an option. ``--config file.yaml`` gives values and flags given on the
command line override them. The parser is plain ``argparse``, so ``--help`` imports nothing heavy.

Field metadata understood here:

- ``help``: the help text. ``(default: X)`` is added unless the text already says what the default is.
- ``flag``: the option's name when it differs from the field's (``config`` -> ``--dataset_config``); for a
  field that defaults to True, a ``no_x`` flag is an off switch (``--no_tags`` sets ``tags`` to False).
- ``choices``: the allowed values. ``min``: the smallest allowed number (checked for YAML values too).
- ``config_file``: ``--config FILE`` names this option's file (curate's YAML), not a file of option values.

:func:`run_main` runs a recipe's ``main``: a :class:`~charattr_hf.errors.UserError` becomes one or two lines
on stderr and exit status 2 (printed by the main process only under ``accelerate launch``), the traceback only
with ``--debug``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UserError

__all__ = ["parse_args", "build_parser", "run_main", "is_main_process", "configure_torch_threads", "quiet_progress"]


def is_main_process() -> bool:
    """Whether this is the main process of a launch, read from the environment (no torch import)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one short line (printed once under ``accelerate launch``)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        if is_main_process():
            sys.stderr.write(f"{self.prog}: error: {message}\n  (see {self.prog} --help)\n")
        sys.exit(2)


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_list) of an annotation: Optional[...] and X | None are unwrapped."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        return str, False
    if origin in (list, tuple, Sequence, typing.Sequence, __import__("collections.abc").abc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = _unwrap(args[0])[0] if args else str
        return inner, True
    return tp, False


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _options(dataclass_types: Sequence[type]):
    """(dataclass, field, resolved type, option name) for every option field."""
    out = []
    for dc in dataclass_types:
        module = sys.modules.get(dc.__module__)
        # typing's names first: a recipe run by a wrapper (python -m cProfile) is not the __main__ module it names
        hints = typing.get_type_hints(dc, globalns={**vars(typing), **(vars(module) if module else {})})
        for f in dataclasses.fields(dc):
            if "help" not in f.metadata:
                continue
            out.append((dc, f, hints[f.name], f.metadata.get("flag", f.name)))
    return out


def build_parser(dataclass_types: Sequence[type], description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    seen: dict[str, str] = {}
    for dc, f, tp, flag in _options(dataclass_types):
        if flag in seen:
            raise ValueError(f"option --{flag} is defined twice ({seen[flag]} and {dc.__name__})")
        seen[flag] = dc.__name__
        names = [f"--{flag}"] + ([f"--{flag.replace('_', '-')}"] if "_" in flag else [])
        default = _default_of(f)
        help_text = f.metadata["help"]
        inner, is_list = _unwrap(tp)
        if inner is bool and not is_list:
            if default and flag.startswith("no_"):  # an off switch: --no_tags sets tags to False
                parser.add_argument(*names, dest=f.name, action="store_false", default=True, help=help_text)
            elif default:  # on unless --no-X
                parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=True,
                                    help=help_text)
            else:
                parser.add_argument(*names, dest=f.name, action="store_true", default=False, help=help_text)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "type": inner if inner in (int, float) else str}
        if is_list:
            kwargs["nargs"] = "*"
        choices = f.metadata.get("choices")
        if choices is None and typing.get_origin(inner) is typing.Literal:
            choices = list(typing.get_args(inner))
            kwargs["type"] = str
        if choices:
            kwargs["choices"] = list(choices)
        shown = default
        if shown not in (None, "", [], ()) and "default" not in help_text.lower():
            help_text = f"{help_text} (default: {shown})"
        kwargs["help"] = help_text
        if choices:
            kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
        else:
            kwargs["metavar"] = {int: "N", float: "X"}.get(kwargs["type"], flag.upper())
        parser.add_argument(*names, **kwargs)
    # dests of their own: a dataclass field may be named `config` (InputSpec.config is --dataset_config)
    own = _config_field(dataclass_types)
    parser.add_argument("--config", dest="_config_file", default=None, metavar="FILE.yaml",
                        help=f"The same as --{own[1]}." if own else
                        "YAML file of option values; options given on the command line override it.")
    parser.add_argument("--debug", dest="_debug", action="store_true", help="Show the full traceback of an error.")
    return parser


def _config_field(dataclass_types: Sequence[type]) -> tuple[str, str] | None:
    """(field name, flag) of the option that ``--config`` names the file of (metadata ``config_file``), if any."""
    return next(((f.name, flag) for _, f, _, flag in _options(dataclass_types) if f.metadata.get("config_file")), None)


def _check_ranges(parser: argparse.ArgumentParser, dataclass_types: Sequence[type], ns: argparse.Namespace) -> None:
    for _, f, _, flag in _options(dataclass_types):
        value = getattr(ns, f.name)
        lowest = f.metadata.get("min")
        if lowest is not None and value is not None and not isinstance(value, bool):
            if not isinstance(value, (int, float)):
                parser.error(f"--{flag}: expected a number, got {value!r}")
            if value < lowest:
                parser.error(f"--{flag} must be >= {lowest}, got {value}")
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            parser.error(f"--{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")


def parse_args(dataclass_types: Sequence[type], argv: Sequence[str] | None = None, description: str | None = None):
    """Parse ``argv`` into one instance per dataclass; ``--config`` YAML supplies defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(dataclass_types, description)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    own = _config_field(dataclass_types)
    if known.config and not own:
        values = _load_yaml(known.config, parser)
        options = {flag: (f, tp) for _, f, tp, flag in _options(dataclass_types)}
        by_field = {f.name: (f, tp) for f, tp in options.values()}
        defaults = {}
        for key, value in values.items():
            if key == "debug":
                continue
            f, tp = options.get(key) or by_field.get(key) or (None, None)
            if f is None:
                parser.error(f"{known.config}: unknown option {key!r}")
            inner, is_list = _unwrap(tp)
            if is_list and isinstance(value, (str, int, float)):  # a scalar given for a list option: a list of one
                value = [value]
            if inner is bool and not is_list and f.metadata.get("flag", f.name).startswith("no_") and key != f.name:
                value = not value  # `no_cache: true` in YAML means use_cache False
            defaults[f.name] = value
        parser.set_defaults(**defaults)
    ns = parser.parse_args(argv)
    if own and ns._config_file and getattr(ns, own[0]) is None:
        setattr(ns, own[0], ns._config_file)
    _check_ranges(parser, dataclass_types, ns)
    instances = []
    for dc in dataclass_types:
        names = {f.name for f in dataclasses.fields(dc) if "help" in f.metadata}
        instances.append(dc(**{n: getattr(ns, n) for n in names}))
    return instances[0] if len(instances) == 1 else tuple(instances)


def _load_yaml(path: str, parser: argparse.ArgumentParser) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        parser.error(f"--config {path}: no such file")
    except (OSError, yaml.YAMLError) as exc:
        parser.error(f"--config {path}: cannot read it as YAML ({str(exc).splitlines()[0]})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of option: value")
    return data


#: How long a process other than the main one waits after a user error before it exits (see run_main).
USER_ERROR_GRACE_S = 5.0


def run_main(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` and return its exit status; call as ``sys.exit(run_main(main))``.

    A :class:`UserError` gives exit status 2 and its message on stderr (main process only); ``--debug`` adds the
    traceback. Other exceptions keep their traceback (they are bugs or faults, not the user's mistakes).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = main(argv)
    except UserError as exc:
        if is_main_process():
            if "--debug" in argv:
                import traceback

                traceback.print_exc()
            message = str(exc).strip() or type(exc).__name__
            prog = os.path.basename(sys.argv[0]) or "charattr"
            sys.stderr.write(f"{prog}: error: {message}\n")
            sys.stderr.flush()
        else:
            # the main process meets the same mistake and says it; the launcher stops every process as soon as
            # one exits, so a process that exited at once could cut the main process off before its line
            import time

            time.sleep(USER_ERROR_GRACE_S)
        return exc.exit_code
    except KeyboardInterrupt:
        if is_main_process():
            sys.stderr.write("interrupted; rerun the same command to resume (finished work is kept)\n")
        return 130
    if status is None or not isinstance(status, int):
        return 0
    return status


def quiet_progress() -> None:
    """Silence every progress bar (ours, datasets', huggingface_hub's), also in worker processes."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


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
