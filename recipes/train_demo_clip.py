"""Train the small demo CLIP on procedurally drawn characters (the shipped ``demo`` model).

The shipped model was trained on a 2-core CPU with:

    accelerate launch --num_processes 1 recipes/train_demo_clip.py \
        --config recipes/configs/train_demo_clip.yaml --output_dir charattr_hf/assets/demo-clip

A short trial (about 2 minutes on 2 cores, smaller pool; colours and hair length only):

    accelerate launch --num_processes 1 recipes/train_demo_clip.py \
        --config recipes/configs/train_demo_clip.yaml --output_dir outputs/demo-clip-trial \
        --pool_size 8000 --max_steps 150 --eval_samples 300

``python recipes/train_demo_clip.py ...`` works too (one process). What it does: draws a pool of images
once (``--pool_size``, ``--num_proc`` processes), then trains open_clip's ``CLIP`` built from
``--model_config`` (default: ``charattr_hf.demo_clip.DEMO_MODEL_CFG``) with the multi-positive contrastive
loss on fresh captions each step, plus the sketch colour term (``--sketch_uniform_weight``) and a
training-only attribute classifier on the image embedding (``--head_loss_weight``); see
``charattr_hf/demo_clip.py`` for why. It writes an open_clip ``local-dir:`` folder (config JSON,
safetensors, the schema as ``charattr_schema.yaml``) and a ``README.md`` model card with the zero-shot
accuracy table measured through the pipeline's stages on ``--eval_samples`` held-out images per style.

Determinism: the same ``--seed`` (and thread count) gives the same pool, captions, batches and initial
weights. The learning-rate schedule follows ``--max_steps``; ``--time_budget_minutes`` is a safety stop
that ends training early (and says so) if the wall clock runs out first. ``--max_steps 0`` schedules by
the budget instead: then the number of steps depends on the machine's speed.
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

from charattr_hf.cli import configure_torch_threads, parse_args, run_main
from charattr_hf.errors import UserError

logger = logging.getLogger("train_demo_clip")


@dataclass
class ModelArguments:
    model_config: Optional[str] = field(
        default=None,
        metadata={
            "help": "open_clip model config: a JSON file (a bare model_cfg or {'model_cfg': ...}) or inline JSON. "
            "Default: charattr_hf.demo_clip.DEMO_MODEL_CFG (a ModifiedResNet image tower at 64 px, width 16, one "
            "block per stage; a 4-layer, width-128 text tower)."
        },
    )
    schema: str = field(
        default="synthetic",
        metadata={"help": "Schema whose prompts the model is meant for (shipped name or YAML path); saved with it."},
    )


@dataclass
class DataArguments:
    pool_size: int = field(default=60_000, metadata={"help": "Images drawn once before training."})
    styles: list[str] = field(
        default_factory=lambda: ["flat", "sketch", "watercolor", "pixel", "chibi"],
        metadata={"help": "Styles drawn (uniformly)."},
    )
    num_proc: int = field(default=2, metadata={"help": "Processes drawing the pool."})
    flip: bool = field(default=True, metadata={"help": "Random horizontal flips (no attribute depends on the side)."})


@dataclass
class TrainArguments:
    output_dir: str = field(default="outputs/demo-clip", metadata={"help": "Where the model folder is written."})
    seed: int = field(default=0, metadata={"help": "Seed of the pool, the captions, the batches and the weights."})
    batch_size: int = field(default=256, metadata={"help": "Images (and captions) per step and process."})
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (matrices only)."})
    beta2: float = field(default=0.98, metadata={"help": "AdamW beta2."})
    warmup_steps: int = field(default=50, metadata={"help": "Linear warm-up steps."})
    max_steps: int = field(default=1600, metadata={"help": "Steps of the cosine schedule (0: schedule by the time budget)."})
    time_budget_minutes: float = field(
        default=25.0, metadata={"help": "Stop training after this many minutes (0: no limit; needed with max_steps 0)."}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient norm clipping (0: off)."})
    sketch_uniform_weight: float = field(
        default=1.0,
        metadata={"help": "Weight of KL(uniform || colour label distribution) on sketch images (0: off)."},
    )
    captions_per_image: int = field(
        default=2, metadata={"help": "Captions drawn per image and step (all enter the multi-positive loss)."}
    )
    prompt_loss_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the cross-entropy of the schema's zero-shot scores against the truth (0: off)."},
    )
    head_loss_weight: float = field(
        default=5.0,
        metadata={"help": "Weight of a linear attribute classifier on the image embedding (training only; 0: off)."},
    )
    save_dtype: str = field(default="fp16", metadata={"help": "Weights dtype on disk: fp16 or fp32."})
    log_every: int = field(default=25, metadata={"help": "Print progress every N steps."})
    eval_samples: int = field(default=1000, metadata={"help": "Held-out images per style for the final evaluation (0: skip)."})
    eval_seed: int = field(default=20_261_126, metadata={"help": "Seed of the evaluation images (not a training seed)."})
    threads: int = field(default=0, metadata={"help": "torch threads per process (0: cores / processes)."})


def load_model_config(value: Optional[str]) -> dict:
    from charattr_hf.demo_clip import DEMO_MODEL_CFG

    if not value:
        return json.loads(json.dumps(DEMO_MODEL_CFG))
    text = value if value.lstrip().startswith("{") else Path(value).read_text()
    cfg = json.loads(text)
    cfg = cfg.get("model_cfg", cfg)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise UserError(f"--model_config: missing {key!r}")
    return cfg


def lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to 0 over ``progress`` in [0, 1]."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def main(argv: Optional[list[str]] = None) -> Path:
    margs, dargs, targs = parse_args((ModelArguments, DataArguments, TrainArguments), argv, description=__doc__)
    if targs.max_steps <= 0 and targs.time_budget_minutes <= 0:
        raise UserError("give --max_steps or --time_budget_minutes (or both)")
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    wall_start = time.time()

    import numpy as np

    from charattr_hf import demo_clip as D
    from charattr_hf.schema import load_schema

    schema = load_schema(margs.schema)
    model_cfg = load_model_config(margs.model_config)
    size = int(model_cfg["vision_cfg"]["image_size"])
    context = int(model_cfg["text_cfg"].get("context_length", 77))

    # The pool is drawn before the model is built (torch has run no parallel work yet): forked drawing
    # workers are then safe.
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    per_proc = max(1, dargs.pool_size // world)
    t0 = time.time()
    pool = D.build_pool(per_proc, seed=targs.seed, size=size, styles=dargs.styles, num_proc=dargs.num_proc,
                        start=rank * per_proc, schema=schema)
    if accelerator.is_main_process:
        logger.info("pool: %d images of %d px per process, drawn in %.1f s", len(pool), size, time.time() - t0)

    threads = configure_torch_threads(targs.threads) if accelerator.device.type == "cpu" else 0
    model = D.build_model(model_cfg, seed=targs.seed)
    n_params = sum(p.numel() for p in model.parameters())
    head = D.AttributeHead(int(model_cfg["embed_dim"]), schema) if targs.head_loss_weight > 0 else None
    decay, no_decay = [], []
    named = list(model.named_parameters()) + (list(head.named_parameters(prefix="head")) if head is not None else [])
    for name, p in named:
        (no_decay if p.ndim < 2 or "logit_scale" in name or "positional_embedding" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": targs.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=targs.learning_rate, betas=(0.9, targs.beta2), eps=1e-6,
    )
    forward, optimizer = accelerator.prepare(D.ContrastiveForward(model, head), optimizer)
    raw = accelerator.unwrap_model(forward).clip
    device = accelerator.device

    tokenizer = D.CaptionTokenizer(context)
    colours = [a for a in D.COLOUR_ATTRIBUTES if a in schema]
    use_kl = targs.sketch_uniform_weight > 0 and bool(colours) and "sketch" in dargs.styles
    use_bank = use_kl or targs.prompt_loss_weight > 0
    bank = D.PromptBank(schema, None if targs.prompt_loss_weight > 0 else colours, tokenizer)
    mean = torch.tensor(D.DEMO_PREPROCESS_CFG["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(D.DEMO_PREPROCESS_CFG["std"], device=device).view(1, 3, 1, 1) * 255
    pixels = torch.from_numpy(pool.pixels)  # shared, uint8
    sketch_all = torch.from_numpy(pool.is_sketch)

    if accelerator.is_main_process:
        logger.info("model: %.2fM parameters; %d process(es) on %s, %d thread(s); batch %d",
                    n_params / 1e6, world, device, threads, targs.batch_size)

    budget_s = targs.time_budget_minutes * 60.0
    step, stopped_early = 0, False
    train_start = time.time()
    seen = 0
    log_loss = log_kl = 0.0
    log_n = 0
    forward.train()
    while True:
        elapsed = time.time() - train_start
        if targs.max_steps > 0 and step >= targs.max_steps:
            break
        if budget_s > 0 and elapsed >= budget_s:
            stopped_early = targs.max_steps > 0
            break
        progress = step / targs.max_steps if targs.max_steps > 0 else elapsed / budget_s
        for group in optimizer.param_groups:
            group["lr"] = targs.learning_rate * lr_factor(progress, step, targs.warmup_steps)

        rng = np.random.default_rng([targs.seed, step, rank])
        index = rng.choice(len(pool), size=min(targs.batch_size, len(pool)), replace=False)
        captions = D.sample_captions(pool, np.tile(index, targs.captions_per_image), rng, tokenizer)
        positive, unknown = D.caption_targets(pool, index, captions, schema)
        # one text forward: the distinct captions of the batch, then the schema's colour prompts
        uniq = list(dict.fromkeys(captions.texts))
        where = {t: k for k, t in enumerate(uniq)}
        tokens = tokenizer(uniq)
        if use_bank:
            tokens = np.concatenate([tokens, bank.tokens])
        text_ids = torch.from_numpy(tokens).long().to(device)
        text_index = torch.tensor([where[t] for t in captions.texts], device=device)

        idx_t = torch.from_numpy(index)
        x = pixels[idx_t].to(device).permute(0, 3, 1, 2).float()
        if dargs.flip:
            flip = torch.from_numpy(rng.random(len(index)) < 0.5).to(device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x - mean) / std

        image_emb, all_text, scale, head_logits = forward(x, text_ids)
        text_emb = all_text[: len(uniq)][text_index]
        loss = D.multi_positive_clip_loss(
            image_emb, text_emb, scale,
            torch.from_numpy(positive).to(device), torch.from_numpy(unknown).to(device),
        )
        kl = torch.zeros((), device=device)
        total = loss
        if head_logits is not None:
            total = total + targs.head_loss_weight * D.truth_loss(head_logits, pool, index, schema)
        if use_bank:
            label_embs = bank.label_embeddings(all_text[len(uniq):])
            sketch = sketch_all[idx_t].to(device)
            if use_kl and bool(sketch.any()):
                kl = D.uniform_colour_loss(image_emb[sketch], [label_embs[a] for a in colours], scale)
                total = total + targs.sketch_uniform_weight * kl
            if targs.prompt_loss_weight > 0:
                total = total + targs.prompt_loss_weight * D.prompt_loss(image_emb, label_embs, scale, pool, index, schema)

        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(total)
        if targs.grad_clip > 0:
            accelerator.clip_grad_norm_(forward.parameters(), targs.grad_clip)
        optimizer.step()
        with torch.no_grad():
            raw.logit_scale.clamp_(0, math.log(100.0))
        step += 1
        seen += len(index) * world
        log_loss += loss.item()
        log_kl += kl.item()
        log_n += 1
        if accelerator.is_main_process and (step % targs.log_every == 0 or step == 1):
            el = time.time() - train_start
            logger.info(
                "step %d%s  loss %.4f  sketch-kl %.4f  scale %.1f  lr %.2e  %.0f img/s  %.1f min",
                step, f"/{targs.max_steps}" if targs.max_steps else "", log_loss / log_n, log_kl / log_n,
                scale.item(), optimizer.param_groups[0]["lr"], seen / max(el, 1e-9), el / 60,
            )
            log_loss = log_kl = 0.0
            log_n = 0
            short = {"hair_color": "hair", "hair_length": "len", "eye_color": "eye", "top_color": "top",
                     "accessories": "acc", "expression": "expr", "art_style": "style"}
            reports = []
            if use_bank and len(label_embs) == len(schema.attributes):
                reports.append(("zero-shot", D.prompt_logits(image_emb, label_embs, scale, schema)))
            if head_logits is not None:
                reports.append(("head", head_logits))
            for what, lg in reports:
                acc = D.batch_accuracy(lg, pool, index, schema)
                logger.info("    batch accuracy, %s: %s", what,
                            "  ".join(f"{short.get(k, k)} {v:.2f}" for k, v in acc.items()))
    train_s = time.time() - train_start
    if stopped_early:
        logger.warning("time budget reached at step %d of %d: the schedule did not finish", step, targs.max_steps)

    accelerator.wait_for_everyone()
    out = Path(targs.output_dir)
    if accelerator.is_main_process:
        D.save_model(raw, out, model_cfg, D.DEMO_PREPROCESS_CFG, schema=schema, dtype=targs.save_dtype)
        logger.info("trained %d steps in %.1f min (%.0f img/s); saved to %s", step, train_s / 60, seen / max(train_s, 1e-9), out)
        results = None
        if targs.eval_samples > 0:
            t0 = time.time()
            results = D.evaluate_zero_shot(str(out.resolve()), n=targs.eval_samples, seed=targs.eval_seed,
                                           styles=dargs.styles, device="cpu" if device.type == "cpu" else str(device))
            table = D.format_results(results)
            print(table, flush=True)
            logger.info("evaluated in %.1f s", time.time() - t0)
        launcher = ("accelerate launch --num_processes " + str(world)
                    if "ACCELERATE_MIXED_PRECISION" in os.environ else "python")
        info = {
            "command": " ".join([launcher, "recipes/train_demo_clip.py", *(sys.argv[1:] if argv is None else argv)]),
            "arguments": {**asdict(margs), **asdict(dargs), **asdict(targs)},
            "steps": step,
            "stopped_early": stopped_early,
            "train_minutes": round(train_s / 60, 2),
            "total_minutes": round((time.time() - wall_start) / 60, 2),
            "images_per_second": round(seen / max(train_s, 1e-9), 1),
            "parameters": n_params,
            "threads": threads,
            "processes": world,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores" if device.type == "cpu" else str(device),
            "torch": torch.__version__,
        }
        (out / "README.md").write_text(model_card(info, model_cfg, results))
    accelerator.wait_for_everyone()
    return out


def describe_vision(v: dict) -> str:
    """One line about an open_clip vision config (ViT, or ModifiedResNet when ``layers`` is a list)."""
    if isinstance(v.get("layers"), (list, tuple)):
        return (f"ModifiedResNet (CLIP's ResNet: 3-conv stem, anti-aliased strided bottlenecks, attention pooling), "
                f"{v['image_size']} px input, blocks per stage {list(v['layers'])}, stem width {v['width']}")
    return (f"ViT, {v['image_size']} px input, patch {v['patch_size']}, width {v['width']}, {v['layers']} layers, "
            f"head width {v.get('head_width', 64)}")


def model_card(info: dict, model_cfg: dict, results: Optional[dict]) -> str:
    """The model folder's README.md: what the model is for, how it was made, what it measured."""
    from charattr_hf import demo_clip as D

    args = info["arguments"]
    v, t = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    lines = [
        "# charattr-hf demo CLIP",
        "",
        "A small open_clip model trained from scratch on the procedural characters of `charattr_hf.synthetic`.",
        "It exists so that the pipeline runs end to end offline (`--model demo`, the default) and produces",
        "meaningful annotations on the embedded synthetic sample. **It is not a model for real images**: it has",
        "never seen a photo or a real drawing, and its vocabulary is the few phrases of the synthetic captions.",
        "",
        "For real data use a real CLIP checkpoint, for example:",
        "",
        "    accelerate launch recipes/annotate.py --dataset path/to/images \\",
        "        --model ViT-B-32 --pretrained laion2b_s34b_b79k --schema default",
        "",
        "or an open_clip folder on the Hub: `--model hf-hub:org/repo` (optionally `--model_revision`).",
        "",
        "Use it with the schema it was trained for, `charattr_schema.yaml` in this folder (a copy of the",
        f"`{args['schema']}` schema); the pipeline picks it automatically when `--schema` is not given.",
        "",
        "## Architecture",
        "",
        f"open_clip `CLIP`, {info['parameters'] / 1e6:.2f}M parameters, weights stored as {args['save_dtype']} "
        "safetensors (they load into the fp32 model).",
        "",
        "- image tower: " + describe_vision(v) + ";",
        f"- text tower: width {t['width']}, {t['heads']} heads, {t['layers']} layers, context {t['context_length']}, "
        f"open_clip's default SimpleTokenizer (vocabulary {t['vocab_size']});",
        f"- embedding {model_cfg['embed_dim']}; preprocessing: OpenAI mean/std, bicubic, shortest-side resize.",
        "",
        "## Training",
        "",
        "    " + info["command"],
        "",
        f"Seed {args['seed']}; {info['steps']} steps of {args['batch_size']} images "
        f"({info['images_per_second']:.0f} images/s), {info['train_minutes']:.1f} min of training, "
        f"{info['total_minutes']:.1f} min in all (pool drawing and evaluation included) on {info['machine']}, "
        f"{info['processes']} process(es) x {info['threads']} thread(s), torch {info['torch']}.",
        "",
        f"- data: a pool of {args['pool_size']} images drawn once (styles {', '.join(args['styles'])}; "
        "seed = the training seed), horizontally flipped at random; "
        f"{args['captions_per_image']} fresh caption(s) per image and step from `synthetic.describe` "
        "(1-5 attributes, varied phrasing, sometimes \"without X\");",
        "- loss: symmetric InfoNCE with a multi-positive target (every image whose attributes a caption states "
        "is a positive of it); colour captions are masked out for sketch images (colours are invisible there);",
        f"- plus {args['sketch_uniform_weight']} x KL(uniform || colour label distribution) on sketch images, "
        "with the schema's prompt-ensemble label embeddings, so that sketches get flat colour scores;",
        f"- plus {args['head_loss_weight']} x the loss of a linear attribute classifier on the image embedding "
        "(training only, not saved): it teaches the image tower the small cues (mouth, glasses, scarf) that "
        "the contrastive signal alone did not bootstrap within the budget;",
        (f"- plus {args['prompt_loss_weight']} x cross-entropy of the schema's zero-shot scores against the truth;"
         if args["prompt_loss_weight"] > 0 else
         "- the schema's prompts are not trained on (except the sketch colour term): accuracy below is zero-shot;"),
        f"- AdamW lr {args['learning_rate']}, betas (0.9, {args['beta2']}), weight decay {args['weight_decay']}, "
        f"{args['warmup_steps']} warm-up steps, cosine schedule over {args['max_steps']} steps, gradient clipping "
        f"{args['grad_clip']}.",
    ]
    if info.get("stopped_early"):
        lines.append(f"- the time budget stopped training at step {info['steps']} before the schedule ended.")
    if results:
        lines += [
            "",
            "## Zero-shot accuracy",
            "",
            f"Through the pipeline's own stages (`DecodeStage` + `ClipZeroShot`, prompt ensembles of "
            f"`charattr_schema.yaml`), {args['eval_samples']} images per style of "
            f"`synthetic.generate(n, seed={args['eval_seed']}, styles=[style])` (a seed not used in training):",
            "",
            D.format_results(results),
        ]
        if "sketch" in results:
            lines += [
                "",
                "Sketches are grayscale with colours drawn at random, so colour attributes cannot be read there: "
                "their accuracy is at chance by design, and a mean top-label confidence near 1/labels shows that "
                "the model says so instead of guessing.",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(run_main(main))
