"""Train the small demo tagger on procedurally drawn characters (the shipped ``--tagger demo``).

The shipped tagger was trained on a shared 2-core CPU with:

    nice -n 5 python recipes/train_demo_tagger.py --output_dir charattr_hf/assets/demo-tagger \
        --pool_size 16000 --batch_size 64 --max_steps 0 --time_budget_minutes 12 --threads 1 --group_loss_weight 0.25

(one thread: with seven other jobs on the two cores, two torch threads ran ten times slower than one.)

A short trial (about a minute):

    python recipes/train_demo_tagger.py --output_dir outputs/demo-tagger-trial --pool_size 2000 --max_steps 30

What it does: draws a pool of synthetic characters once (``--pool_size``, the benchmark's ``train`` indices of
``--seed``, the default styles), then trains a timm ``resnet10t`` with narrow stages
(``charattr_hf.demo_tagger``) as a multi-label tagger over the demo vocabulary (binary cross-entropy, one sigmoid
per tag, plus a softmax cross-entropy over the tags of each single-label attribute), on inputs prepared exactly as the tagger source prepares them for a WD tagger (white square padding,
bicubic resize to 64 px, [-1, 1], BGR). It writes the WD v3 folder layout: ``config.json``,
``model.safetensors`` (fp16), ``selected_tags.csv``, and a ``README.md`` with how it was made.

Determinism: the same ``--seed`` and thread count give the same pool, batches and weights for the same number of
steps. The schedule follows ``--max_steps``; ``--time_budget_minutes`` stops early (and says so in the card) when the
wall clock runs out. ``--max_steps 0`` schedules by the time budget instead (for a shared, contended machine): the
number of steps then depends on the machine's speed, and the card records it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from charattr_hf.cli import configure_torch_threads, parse_args

logger = logging.getLogger("train_demo_tagger")


@dataclass
class TrainArguments:
    output_dir: str = field(default="outputs/demo-tagger", metadata={"help": "Where the tagger folder is written."})
    schema: str = field(default="synthetic", metadata={"help": "Schema whose labels give the tag vocabulary."})
    pool_size: int = field(default=16_000, metadata={"help": "Images drawn once before training."})
    num_proc: int = field(default=2, metadata={"help": "Processes drawing the pool."})
    seed: int = field(default=0, metadata={"help": "Seed of the pool, the batches and the weights."})
    batch_size: int = field(default=128, metadata={"help": "Images per step."})
    learning_rate: float = field(default=4e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=30, metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(default=450, metadata={"help": "Steps of the cosine schedule (0: schedule by the time budget)."})
    time_budget_minutes: float = field(default=14.0, metadata={"help": "Stop training after this many minutes (0: no limit)."})
    flip: bool = field(default=True, metadata={"help": "Random horizontal flips."})
    group_loss_weight: float = field(
        default=0.25,
        metadata={"help": "Weight of a softmax cross-entropy over the tags of each single-label attribute (hair colour, "
                  "eye colour...), beside the per-tag binary cross-entropy (0: off)."},
    )
    log_every: int = field(default=25, metadata={"help": "Print progress every N steps."})
    threads: int = field(default=0, metadata={"help": "torch threads (0: all cores)."})


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 over ``progress`` in [0, 1]."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def main(argv: Optional[list[str]] = None) -> Path:
    args = parse_args([TrainArguments], argv, description=__doc__.split("\n\n")[0])
    if args.max_steps <= 0 and args.time_budget_minutes <= 0:
        raise SystemExit("give --max_steps or --time_budget_minutes (or both)")
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    wall_start = time.time()

    import numpy as np

    from charattr_hf import demo_clip, synthetic
    from charattr_hf import demo_tagger as T

    size = T.DEMO_TAGGER_SIZE
    vocab = T.demo_vocabulary(args.schema)
    # drawn before torch starts its thread pools: forked drawing workers are then safe
    t0 = time.time()
    pool = demo_clip.build_pool(args.pool_size, seed=args.seed, size=size, num_proc=args.num_proc,
                                schema=args.schema)
    styles = [synthetic.STYLES[int(s)] for s in pool.styles]
    targets = np.stack([T.tag_targets(ch, st, vocab) for ch, st in zip(pool.characters, styles)])
    logger.info("pool: %d images of %d px, %d tags, drawn in %.1f s", len(pool), size, len(vocab), time.time() - t0)

    import timm
    import torch

    threads = configure_torch_threads(args.threads)
    torch.manual_seed(args.seed)
    model = timm.create_model(T.DEMO_TAGGER_ARCH, pretrained=False, num_classes=len(vocab), **T.DEMO_TAGGER_ARGS)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate)
    from charattr_hf.schema import load_schema

    schema = load_schema(args.schema)
    groups = [torch.tensor([i for i, row in enumerate(vocab) if row[2] == a.name]) for a in schema if not a.multi_label]
    groups = [g for g in groups if len(g) > 1]
    pixels = torch.from_numpy(pool.pixels)  # (N, H, W, 3) uint8 RGB
    y_all = torch.from_numpy(targets)
    logger.info("model: %s %s, %.2fM parameters, %d thread(s)", T.DEMO_TAGGER_ARCH, T.DEMO_TAGGER_ARGS,
                n_params / 1e6, threads)

    budget = args.time_budget_minutes * 60.0
    step, stopped_early, seen, log_loss, log_n = 0, False, 0, 0.0, 0
    train_start = time.time()
    model.train()
    while args.max_steps <= 0 or step < args.max_steps:
        elapsed = time.time() - train_start
        if budget > 0 and elapsed >= budget:
            stopped_early = args.max_steps > 0
            break
        progress = step / args.max_steps if args.max_steps > 0 else elapsed / budget
        for group in opt.param_groups:
            group["lr"] = args.learning_rate * lr_factor(progress, step, args.warmup_steps)
        rng = np.random.default_rng([args.seed, step])
        idx = torch.from_numpy(rng.choice(len(pool), size=min(args.batch_size, len(pool)), replace=False))
        # what the tagger source feeds a WD tagger: [0, 1] -> (x - 0.5) / 0.5 in RGB order, then RGB -> BGR
        x = pixels[idx].permute(0, 3, 1, 2).float().div_(255.0).sub_(0.5).div_(0.5)[:, [2, 1, 0]]
        if args.flip:
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        logits = model(x)
        y = y_all[idx]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        if args.group_loss_weight > 0:
            # mutually exclusive tags (one hair colour...): a softmax over the group gives the small cues (eye colour)
            # a stronger signal than seven independent sigmoids; rows where no tag of the group is on (the colours of
            # a sketch) are left out
            for cols in groups:
                yg = y[:, cols]
                on = yg.sum(1) > 0
                if bool(on.any()):
                    ce = torch.nn.functional.cross_entropy(logits[on][:, cols], yg[on].argmax(1))
                    loss = loss + args.group_loss_weight * ce / len(groups)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        seen += len(idx)
        log_loss += loss.item()
        log_n += 1
        if step % args.log_every == 0 or step == 1:
            el = time.time() - train_start
            with torch.no_grad():
                pred = logits > 0
                exact = (pred == (y_all[idx] > 0.5)).all(1).float().mean().item()
            logger.info("step %d/%s  loss %.4f  exact-set %.2f  lr %.2e  %.0f img/s  %.1f min", step,
                        args.max_steps or "-", log_loss / log_n, exact, opt.param_groups[0]["lr"], seen / max(el, 1e-9),
                        el / 60)
            log_loss, log_n = 0.0, 0
    train_s = time.time() - train_start
    if stopped_early:
        logger.warning("time budget reached at step %d of %d: the schedule did not finish", step, args.max_steps)
    model.eval()

    out = Path(args.output_dir)
    counts = targets.sum(0).astype(int).tolist()
    config = T.wd_config(len(vocab), model.num_features, size)
    T.save_tagger(model, out, config, vocab, counts)
    info = {
        "command": " ".join(["python", "recipes/train_demo_tagger.py", *(sys.argv[1:] if argv is None else argv)]),
        "arguments": asdict(args),
        "steps": step,
        "stopped_early": stopped_early,
        "train_minutes": round(train_s / 60, 2),
        "total_minutes": round((time.time() - wall_start) / 60, 2),
        "images_per_second": round(seen / max(train_s, 1e-9), 1),
        "parameters": n_params,
        "tags": len(vocab),
        "threads": threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    (out / "training_log.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "README.md").write_text(model_card(info))
    logger.info("trained %d steps in %.1f min; saved to %s", step, train_s / 60, out)
    return out


def model_card(info: dict) -> str:
    from charattr_hf import demo_tagger as T

    a = info["arguments"]
    lines = [
        "# charattr-hf demo tagger",
        "",
        "A small multi-label image tagger in the folder layout of the WD v3 taggers (`config.json`,",
        "`model.safetensors`, `selected_tags.csv`), trained from scratch on the procedural characters of",
        "`charattr_hf.synthetic`. It exists so that the tagger source runs offline end to end (`--tagger demo`) and",
        "can be measured where the truth is known. **It is not a tagger for real images**: it has never seen one, and",
        f"its vocabulary is {info['tags']} tags (one per label of the `{a['schema']}` schema, a few visual tags, the",
        "four WD rating tags; no character tags).",
        "",
        "For real data use a real WD tagger, for example `--tagger SmilingWolf/wd-vit-tagger-v3 --tagger_revision <commit>`.",
        "",
        "## Model",
        "",
        f"timm `{T.DEMO_TAGGER_ARCH}` with `{json.dumps(T.DEMO_TAGGER_ARGS)}`, {info['parameters'] / 1e6:.2f}M "
        f"parameters, fp16 safetensors. Input {T.DEMO_TAGGER_SIZE} px, BGR, mean = std = 0.5, as the WD v3 configs.",
        "",
        "## Training",
        "",
        "    " + info["command"],
        "",
        f"Seed {a['seed']}; {info['steps']} steps of {a['batch_size']} images ({info['images_per_second']:.0f} "
        f"images/s) from a pool of {a['pool_size']} images (the benchmark's `train` indices, default styles), "
        f"{info['train_minutes']:.1f} min of training, {info['total_minutes']:.1f} min in all on {info['machine']}, "
        f"{info['threads']} thread(s), torch {info['torch']}. Binary cross-entropy over the tags; AdamW lr "
        f"{a['learning_rate']}, weight decay {a['weight_decay']}, {a['warmup_steps']} warm-up steps, cosine schedule; "
        "random horizontal flips. Colour tags are 0 on sketches (the colours are invisible there). "
        f"Plus {a['group_loss_weight']} x a softmax cross-entropy over the tags of each single-label attribute.",
    ]
    if not a["max_steps"]:
        lines.append(f"\nThe schedule followed a wall-clock budget of {a['time_budget_minutes']} min (`--max_steps 0`), "
                     "so the number of steps reflects this machine's speed during the run.")
    if info.get("stopped_early"):
        lines.append(f"\nThe time budget stopped training at step {info['steps']} before the schedule ended.")
    lines += ["", "Accuracy through the pipeline: `benchmarks/README.md` (tagger source)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
