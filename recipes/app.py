"""The review app: annotate uploaded images, browse an annotated output, review it, and teach the fusion policy.

Offline, with the demo model and the embedded synthetic sample annotated first:

    python recipes/annotate.py --output_dir outputs/annotated --keep_images
    python recipes/app.py --dataset outputs/annotated            # then open http://127.0.0.1:7860

The model, source and fusion flags are those of recipes/annotate.py (the same PipelineOptions, with the same
defaults: --model, --pretrained, --schema, --fusion, --fusion_method, --no_tags, --tagger, --blip2, --cache_dir,
...); give the ones the dataset was annotated with, and the app labels an image as the recipe did. Decisions go
to --feedback_log (a folder of Parquet files, which `recipes/train_fusion.py --mode feedback --feedback LOG`
reads). Continue the policy from the log without the page (the same as the page's button), saving the next
version beside the log:

    python recipes/app.py --dataset outputs/annotated --retrain

Served beyond this machine (--host 0.0.0.0), the app asks for a login (--auth USER:PASSWORD, or
$CHARATTR_APP_AUTH), and refuses to start without one unless --insecure.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass, field
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
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to serve on (0.0.0.0: every interface; needs --auth, or --insecure)."},
    )
    auth: Optional[str] = field(
        default=None,
        metadata={"help": "USER:PASSWORD of the login the page and the API ask for (default: $CHARATTR_APP_AUTH; "
                  "none on 127.0.0.1)."},
    )
    insecure: bool = field(
        default=False, metadata={"help": "Serve on a --host other than loopback without a login (a trusted network)."}
    )
    feedback_log: str = field(
        default="outputs/feedback.parquet",
        metadata={"help": "Where the reviewers' decisions are appended (a folder of Parquet files)."},
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    app_args, options = parse_args([AppArguments, PipelineOptions], argv, description=__doc__.split("\n\n")[0])
    from charattr_hf.app.serving import redact_auth, serving_auth
    from charattr_hf.checks import check_models, check_schema

    check_models(options)  # before anything heavy: mistakes end here
    check_schema(options.schema)
    login = None if app_args.retrain else serving_auth(app_args.host, app_args.auth, app_args.insecure)
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
        command = "python recipes/app.py " + shlex.join(redact_auth(argv))  # recorded in the policy and its card
        print(json.dumps(state.retrain(command=command), indent=1, default=str))
        return 0
    from charattr_hf.app.ui import launch

    launch(state, port=app_args.port, host=app_args.host, block=True, auth=login, insecure=app_args.insecure)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
