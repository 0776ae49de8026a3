"""The review app: annotate uploaded images, browse an annotated output, review it, and teach the fusion policy.

Offline, with the demo models (demo CLIP + demo fusion policy) and the embedded synthetic sample annotated first:

    accelerate launch recipes/annotate.py --output_dir outputs/annotated --keep_images
    python recipes/app.py --dataset outputs/annotated            # then open http://127.0.0.1:7860

The model and source flags are those of recipes/annotate.py (--model, --pretrained, --schema, --fusion, --no_tags,
--blip2, ...); use the ones the dataset was annotated with. Decisions go to --feedback_log (Parquet, the format
`recipes/train_fusion.py --mode feedback --feedback LOG` reads). Continue the policy from the log without the
page (the same as the page's button), saving the next version beside the log:

    python recipes/app.py --dataset outputs/annotated --retrain
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from charattr_hf.cli import configure_torch_threads, parse_args


def _annotate_model_arguments():
    """The annotate recipe's model/source options: the app takes exactly the same flags."""
    path = Path(__file__).with_name("annotate.py")
    spec = importlib.util.spec_from_file_location("_charattr_annotate_recipe", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module.ModelArguments


ModelArguments = _annotate_model_arguments()


@dataclass
class AppArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Annotated output to browse and review: a recipes/annotate.py output folder, a Parquet "
                  "file, or a Hub dataset id. Empty: the Annotate tab only."},
    )
    split: str = field(default="train", metadata={"help": "Split of --dataset."})
    port: int = field(default=7860, metadata={"help": "Port to serve on."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to serve on (0.0.0.0: every interface)."})
    feedback_log: str = field(
        default="outputs/feedback.parquet", metadata={"help": "Parquet file the reviewers' decisions are appended to."}
    )
    policy_dir: Optional[str] = field(
        default=None, metadata={"help": "Where retrained policies are saved (default: <feedback_log stem>-policy/)."}
    )
    epsilon: float = field(default=0.1, metadata={"help": "Exploration rate of the label shown for review."})
    pool_size: int = field(default=10000, metadata={"help": "Rows of --dataset the review queue ranks."})
    reviewer: str = field(default="app", metadata={"help": "Name recorded with each decision."})
    retrain: bool = field(
        default=False, metadata={"help": "Continue the policy from --feedback_log, save it, and exit (no server)."}
    )
    torch_threads: int = field(default=0, metadata={"help": "torch threads; 0 = all cores."})


def pipeline_options(model_args):
    """The library's PipelineOptions from the annotate recipe's model arguments (``no_x`` flags negate ``x``)."""
    from charattr_hf.pipeline import PipelineOptions

    known = {f.name for f in fields(PipelineOptions)}
    values = {}
    for f in fields(model_args):
        value = getattr(model_args, f.name)
        if f.name in known:
            values[f.name] = value
        elif f.name.startswith("no_") and f.name[3:] in known:
            values[f.name[3:]] = not value
    if values.get("model") == "":
        values["model"] = None
    fusion = values.get("fusion")
    if fusion is None and values.get("model") == "demo":
        values["fusion"] = "demo"  # the demo models: the demo CLIP and the policy trained on its outputs
    elif fusion in ("none", ""):
        values["fusion"] = None
    return PipelineOptions(**values)


def main(argv: list[str] | None = None) -> int:
    app_args, model_args = parse_args([AppArguments, ModelArguments], argv, description=__doc__.split("\n\n")[0])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub", "open_clip", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    configure_torch_threads(app_args.torch_threads)

    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.errors import UserError

    try:
        config = AppConfig(
            dataset=app_args.dataset, split=app_args.split, feedback_log=app_args.feedback_log,
            policy_dir=app_args.policy_dir, epsilon=app_args.epsilon, pool_size=app_args.pool_size,
            reviewer=app_args.reviewer, pipeline=pipeline_options(model_args),
        )
        state = AppState(config, warm_up=not app_args.retrain)
        if app_args.retrain:
            command = "python recipes/app.py " + shlex.join(sys.argv[1:] if argv is None else argv)
            print(json.dumps(state.retrain(command=command), indent=1, default=str))
            return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from charattr_hf.app.ui import launch

    launch(state, port=app_args.port, host=app_args.host, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
