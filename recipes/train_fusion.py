"""Train the learned fusion policy: supervised from labels, or from reviewer feedback; fresh or continued.

Supervised, from an annotated dataset with a ``truth`` column (or ``--labels`` joined by ``id``)::

    accelerate launch recipes/train_fusion.py --dataset runs/annotated --output_dir runs/fusion-policy

From a feedback log, continuing from the policy that produced it (it "gets smarter over time")::

    accelerate launch recipes/train_fusion.py --mode feedback --dataset runs/annotated \\
        --feedback runs/feedback.parquet --init_from runs/fusion-policy --output_dir runs/fusion-policy-v2

Offline test bed (simulated sources whose reliability depends on the kind of image; no data needed)::

    accelerate launch recipes/train_fusion.py --simulate --mode feedback --output_dir runs/fusion-sim

A YAML file gives values, command-line flags override it (keys are the flag names without dashes)::

    accelerate launch recipes/train_fusion.py --config fusion.yaml --seed 1

    # fusion.yaml
    dataset: runs/annotated
    mode: supervised
    output_dir: runs/fusion-policy
    hidden_size: 64
    max_epochs: 200

The run prints one line per epoch, evaluates on held-out images (``--eval_fraction``) against the sources alone
and the fixed fusion rules (accuracy and ECE through ``evaluate`` metrics), and saves the policy
(``model.safetensors`` + ``config.json`` + ``README.md`` model card with the measured table) on the main
process; ``--push_to_hub`` publishes it. Deterministic for a given ``--seed``.
"""

import json
import shlex
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from charattr_hf import cli
from charattr_hf.cli import run_main
from charattr_hf.errors import UserError
from charattr_hf import fusion_training as ft
from charattr_hf.models.fusion import CharattrFusionModel, render_metrics_table
from charattr_hf.schema import load_schema


@dataclass
class DataArguments:
    dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Annotated dataset with probs_* columns: save_to_disk folder, Parquet or Hub id."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of --dataset (and --labels) to read: an annotation output folder, a save_to_disk DatasetDict or a Hub id."})
    labels: Optional[str] = field(
        default=None, metadata={"help": "Labels dataset joined on 'id' (a 'truth' struct or one column per attribute)."}
    )
    feedback: Optional[str] = field(
        default=None, metadata={"help": "Feedback log (FEEDBACK_FEATURES rows) for --mode feedback."}
    )
    schema: str = field(default="default", metadata={"help": "Attribute schema: shipped name or YAML path."})
    eval_fraction: float = field(
        default=0.2, metadata={"help": "Share of images (by id) held out for the final metrics; 0 to skip."}
    )
    max_rows: Optional[int] = field(default=None, metadata={"help": "Use only the first N rows (quick runs)."})
    group_column: Optional[str] = field(
        default="style",
        metadata={"help": "Column naming the kind of each image (e.g. its style), when the data has it: a feedback "
                  "round's card states before/after per group (otherwise for images with and without events)."},
    )
    simulate: bool = field(
        default=False, metadata={"help": "Use the simulated test bed instead of --dataset (and simulate feedback)."}
    )
    simulate_rows: int = field(default=3000, metadata={"help": "Rows of the simulated dataset."})
    simulate_epsilon: float = field(
        default=0.1, metadata={"help": "Exploration rate of the simulated logging policy (feedback without a log)."}
    )
    simulate_noise: float = field(default=0.0, metadata={"help": "Simulated reviewer error rate."})


@dataclass
class ModelArguments:
    init_from: Optional[str] = field(
        default=None, metadata={"help": "Continue training a saved policy (folder or Hub id) instead of a fresh one."}
    )
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of --init_from."})
    sources: Optional[list[str]] = field(
        default=None, metadata={"help": "Sources to fuse (default: the probs_* columns present)."}
    )
    hidden_size: int = field(default=64, metadata={"help": "Width of the context encoder."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Layers of the context encoder."})
    hidden_dropout_prob: float = field(default=0.1, metadata={"help": "Dropout in the context encoder."})
    use_embedding: bool = field(default=True, metadata={"help": "Use the 'embedding' column when present."})
    max_flags: int = field(default=32, metadata={"help": "Size of the flag vocabulary (most frequent flags)."})


@dataclass
class RunArguments:
    output_dir: str = field(default="runs/fusion-policy", metadata={"help": "Where the policy is saved."})
    mode: str = field(default="supervised", metadata={"help": "'supervised' (labels) or 'feedback' (reviewer events).", "choices": ("supervised", "feedback")})
    policy_version: Optional[str] = field(
        default=None, metadata={"help": "Version recorded in the config (default: v<number of training rounds>)."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Publish the policy and its card to the Hub."})
    hub_model_id: Optional[str] = field(default=None, metadata={"help": "Hub repository for --push_to_hub."})
    hub_revision: Optional[str] = field(default=None, metadata={"help": "Hub branch to push to."})


PARSER_CLASSES = (DataArguments, ModelArguments, RunArguments, ft.FusionTrainingConfig)


def parse_args(argv: Optional[list[str]] = None):
    """Dataclasses from ``--config file.yaml`` (values) and the command line (overrides)."""
    return cli.parse_args(PARSER_CLASSES, argv, description=__doc__.split("\n\n")[0])


@contextmanager
def _mistake(what: str):
    """A ``ValueError`` raised while checking what the user gave (options, a policy, a log, a dataset that do not
    fit together) becomes one line naming ``what``, with exit status 2."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def main(argv: Optional[list[str]] = None) -> Path:
    data_args, model_args, run_args, train_args = parse_args(argv)
    if run_args.mode not in ("supervised", "feedback"):
        raise UserError(f"--mode must be 'supervised' or 'feedback', got {run_args.mode!r}")
    if not data_args.simulate and not data_args.dataset:
        raise UserError("give --dataset (an annotated dataset) or --simulate")
    with _mistake("training options"):
        train_args.check()
    # the feedback log first: a missing or malformed log is found before the data is read and the model built
    feedback = ft.load_table(data_args.feedback) if run_args.mode == "feedback" and data_args.feedback else None
    command = "accelerate launch recipes/train_fusion.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    set_seed(train_args.seed)
    say = accelerator.print

    # ---------------------------------------------------------------- data
    schema = load_schema(data_args.schema)
    annotated, data_name = ft.open_annotated(
        None if data_args.simulate else data_args.dataset, data_args.dataset_split, labels=data_args.labels or None,
        schema=schema, simulate_rows=data_args.simulate_rows, seed=train_args.seed,
    )
    if data_args.max_rows:
        annotated = annotated.select(range(min(data_args.max_rows, len(annotated))))
    has_truth = "truth" in annotated.column_names
    train_idx, eval_idx = ft.split_by_id(
        annotated["id"], data_args.eval_fraction if has_truth else 0.0, train_args.seed, salt="eval"
    )
    train_ds, eval_ds = annotated.select(train_idx), annotated.select(eval_idx)
    say(f"data: {data_name}: {len(train_ds)} training rows, {len(eval_ds)} held out")

    # ---------------------------------------------------------------- model
    if model_args.init_from:
        model = CharattrFusionModel.from_pretrained(model_args.init_from, revision=model_args.revision)
        with _mistake(f"--init_from {model_args.init_from} and --schema {data_args.schema}"):
            model.config.check_schema(schema)
        say(f"continuing policy {model_args.init_from} (version {model.config.policy_version})")
    else:
        config = ft.build_config(
            schema, train_ds, sources=model_args.sources, max_flags=model_args.max_flags,
            use_embedding=model_args.use_embedding, hidden_size=model_args.hidden_size,
            num_hidden_layers=model_args.num_hidden_layers, hidden_dropout_prob=model_args.hidden_dropout_prob,
        )
        model = ft.build_model(config, seed=train_args.seed)
    model = model.to(accelerator.device)
    config = model.config
    group = data_args.group_column if data_args.group_column in train_ds.column_names else None
    with _mistake(f"{data_name} and the policy"):
        train_data = ft.build_features(train_ds, config, group_column=group)

    def log(record: dict) -> None:
        say(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))

    # ---------------------------------------------------------------- train
    if run_args.mode == "supervised":
        if train_data.labels is None:
            raise UserError("supervised training needs a 'truth' column or --labels")
        result = ft.train_supervised(
            model, train_data, args=train_args, accelerator=accelerator, log=log, data_name=data_name,
            command=command, policy_version=run_args.policy_version,
        )
    else:
        if feedback is not None:
            with _mistake(f"--feedback {data_args.feedback}"):
                ft.validate_feedback(feedback, config)
        elif has_truth:
            logging_policy = model if model_args.init_from else "confidence"
            feedback = ft.simulate_feedback(
                train_ds, config, logging_policy, epsilon=data_args.simulate_epsilon,
                noise_rate=data_args.simulate_noise, seed=train_args.seed,
            )
            say(f"simulated {len(feedback)} reviewer events (logging policy: "
                f"{feedback[0]['policy_version'] if len(feedback) else '-'})")
        else:
            raise UserError("--mode feedback needs --feedback (a log) or a 'truth' column to simulate one")
        result = ft.train_from_feedback(
            model, train_data, feedback, args=train_args, accelerator=accelerator, log=log, data_name=data_name,
            command=command, policy_version=run_args.policy_version,
        )
    say(f"best epoch {result.best_epoch} (validation loss {result.best_val_loss:.4f}); "
        f"temperature {[round(t, 3) for t in result.temperature or []]}")

    # ---------------------------------------------------------------- evaluate, save, publish
    out_dir = Path(run_args.output_dir)
    records: list[dict] = []
    if len(eval_ds) and has_truth:
        with _mistake(f"{data_name} and the policy"):
            eval_data = ft.build_features(eval_ds, config)
        records = ft.compare_methods(eval_ds.to_dict(), eval_data, config, policies={"policy": model})
        config.eval_results = [r for r in records if r.get("style") is None]
        say(render_metrics_table(config.eval_results))
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        # the card's loading snippet names the Hub repository, or else the folder it was saved to
        model.save_pretrained(out_dir, model_card_id=run_args.hub_model_id or str(out_dir))
        (out_dir / "training_log.json").write_text(
            json.dumps({"history": result.history, "args": {**asdict(data_args), **asdict(model_args),
                        **asdict(run_args), **asdict(train_args)}, "eval": records}, indent=1, default=str)
        )
        say(f"saved policy {config.policy_version} to {out_dir}")
        if run_args.push_to_hub:
            if not run_args.hub_model_id:
                raise UserError("--push_to_hub needs --hub_model_id")
            model.push_to_hub(run_args.hub_model_id, revision=run_args.hub_revision)
            say(f"pushed to {run_args.hub_model_id}")
    accelerator.wait_for_everyone()
    return out_dir


if __name__ == "__main__":
    sys.exit(run_main(main))
