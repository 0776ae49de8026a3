"""The review app: annotate uploaded images, browse an annotated output, review it, and teach the fusion policy.

Offline, with the demo models (demo CLIP + demo fusion policy) and the embedded synthetic sample annotated first:

    accelerate launch recipes/annotate.py --output_dir outputs/annotated --keep_images
    python recipes/app.py --dataset outputs/annotated            # then open http://127.0.0.1:7860

The model and source flags are those of recipes/annotate.py (the same PipelineOptions: --model, --pretrained,
--schema, --fusion, --no_tags, --blip2, --cache_dir, ...); use the ones the dataset was annotated with. With the
demo CLIP the default fusion is the demo policy; --fusion none selects the --fusion_method rule. Decisions go to
--feedback_log (Parquet, the format `recipes/train_fusion.py --mode feedback --feedback LOG` reads). Continue the policy from the log without the
page (the same as the page's button), saving the next version beside the log:

    python recipes/app.py --dataset outputs/annotated --retrain
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field, replace
from typing import Optional

from charattr_hf.cli import parse_args, run_main
from charattr_hf.options import PipelineOptions


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


def app_pipeline_options(options: PipelineOptions) -> PipelineOptions:
    """The annotate recipe's pipeline options, with the app's default fusion: the demo policy for the demo CLIP
    (the demo models go together); ``--fusion none`` selects the ``--fusion_method`` rule."""
    if options.model == "":
        options = replace(options, model=None)
    if options.fusion is None and options.model == "demo":
        return replace(options, fusion="demo")
    if options.fusion in ("none", ""):
        return replace(options, fusion=None)
    return options


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args, options = parse_args([AppArguments, PipelineOptions], argv, description=__doc__.split("\n\n")[0])
    from charattr_hf.checks import check_models, check_schema

    options = app_pipeline_options(options)
    check_models(options)  # before anything heavy: mistakes end here
    check_schema(options.schema)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("datasets", "httpx", "huggingface_hub", "open_clip", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from charattr_hf.app import AppConfig, AppState
    from charattr_hf.cli import configure_torch_threads

    configure_torch_threads(app_args.torch_threads)
    config = AppConfig(
        dataset=app_args.dataset, split=app_args.split, feedback_log=app_args.feedback_log,
        policy_dir=app_args.policy_dir, epsilon=app_args.epsilon, pool_size=app_args.pool_size,
        reviewer=app_args.reviewer, pipeline=options,
    )
    state = AppState(config, warm_up=not app_args.retrain)
    if app_args.retrain:
        command = "python recipes/app.py " + shlex.join(argv)
        print(json.dumps(state.retrain(command=command), indent=1, default=str))
        return 0
    from charattr_hf.app.ui import launch

    launch(state, port=app_args.port, host=app_args.host, block=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
