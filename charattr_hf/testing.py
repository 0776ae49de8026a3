"""Tiny models built locally, for tests and offline benchmarks: the same code paths as real checkpoints
(open_clip ``local-dir:`` folders, ``transformers`` ``from_pretrained`` folders), random weights, seconds to build.

- :func:`build_tiny_clip`: an open_clip CLIP with a 32 px ViT and a one-layer text tower.
- :func:`build_tiny_tagger`: a timm ViT tagger in the WD v3 folder layout (``config.json``, ``model.safetensors``,
  ``selected_tags.csv``), as small as a ViT gets; ``logits`` fixes chosen tags' outputs through the head's biases
  (their head weights are zero), so a test knows what the tagger says whatever the image.
- :func:`build_tiny_blip2`: a BLIP-2 (OPT) checkpoint with a real ``Blip2Processor`` whose tokenizer is a
  word-level ``tokenizers`` model over the words of the given texts. Like the OPT tokenizer of the real
  checkpoints it prepends ``</s>`` as BOS and keeps ``"\\n"`` as a token (the end-of-answer marker the BLIP-2
  source scores). With random weights it is a real source that knows nothing: a pure-noise source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

__all__ = ["TINY_CLIP_CFG", "TINY_TAGGER_ARGS", "BLIP2_IMAGE_SIZE", "build_tiny_clip", "build_tiny_tagger",
           "build_tiny_blip2"]

TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_tiny_clip(folder: Path, seed: int = 0, image_size: int = 32) -> Path:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` for a random tiny CLIP."""
    import open_clip
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    cfg = json.loads(json.dumps(TINY_CLIP_CFG))
    cfg["vision_cfg"]["image_size"] = image_size
    torch.manual_seed(seed)
    model = CLIP(**cfg)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_cfg": cfg,
        "preprocess_cfg": {
            "mean": list(open_clip.OPENAI_DATASET_MEAN),
            "std": list(open_clip.OPENAI_DATASET_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


#: timm ``vit_tiny_patch16_224`` arguments of the tiny tagger: the WD v3 ViT's choices (no class token, average
#: pooling, no fc norm, tanh GELU) at toy size.
TINY_TAGGER_ARGS = {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2, "class_token": False,
                    "global_pool": "avg", "fc_norm": False, "act_layer": "gelu_tanh"}


def build_tiny_tagger(
    folder: Path,
    tags: "Iterable[tuple[str, int]]",
    logits: "dict[str, float] | None" = None,
    image_size: int = 32,
    seed: int = 0,
    mean: "tuple[float, float, float]" = (0.5, 0.5, 0.5),
    std: "tuple[float, float, float]" = (0.5, 0.5, 0.5),
) -> Path:
    """Write a random tiny timm ViT tagger in the WD v3 layout to ``folder``; returns the folder.

    ``tags``: ``(name, category)`` pairs in output order (category 0 general, 4 character, 9 rating). ``logits``: for
    the named tags, the head's weights are zeroed and its bias set to the value, so their score is
    ``sigmoid(value)`` for every image; the other tags keep random weights (their scores depend on the pixels)."""
    import csv

    import timm
    import torch
    from safetensors.torch import save_file

    tags = list(tags)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    args = dict(TINY_TAGGER_ARGS, img_size=image_size)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=len(tags), **args)
    names = [t for t, _ in tags]
    with torch.no_grad():
        head = model.get_classifier()
        for name, value in (logits or {}).items():
            i = names.index(name)
            head.weight[i].zero_()
            head.bias[i] = float(value)
    config = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": len(tags),
        "num_features": model.num_features,
        "global_pool": "avg",
        "model_args": args,
        "pretrained_cfg": {
            "custom_load": False, "input_size": [3, image_size, image_size], "fixed_input_size": False,
            "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "mean": list(mean), "std": list(std),
            "num_classes": len(tags), "pool_size": None, "first_conv": None, "classifier": None,
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    with open(folder / "selected_tags.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, cat) in enumerate(tags):
            writer.writerow([1000 + i, name, cat, 100])
    return folder


SPECIALS = ("<pad>", "</s>", "<unk>", "<image>")
BLIP2_IMAGE_SIZE = 32
NUM_QUERY_TOKENS = 4


def build_tiny_blip2(
    path: str | Path, texts: Iterable[str], seed: int = 0, init_range: float = 0.3, max_positions: int = 128
) -> Path:
    """Write a tiny random BLIP-2 checkpoint + processor to ``path``; returns the path.

    ``texts``: every string the tests will tokenize (prompts and answers); their words form the vocabulary.
    ``init_range``: weight init std, larger than usual so that random answer scores differ clearly.
    ``max_positions``: the language model's context (query tokens + packed questions and answers).
    """
    import torch
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, "\n", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken("\n", normalized=False)])
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", vocab["</s>"])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="</s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    image_processor = BlipImageProcessor(size={"height": BLIP2_IMAGE_SIZE, "width": BLIP2_IMAGE_SIZE})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=NUM_QUERY_TOKENS)

    config = Blip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=BLIP2_IMAGE_SIZE, patch_size=8, initializer_range=init_range,
        ),
        qformer_config=dict(
            vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
            encoder_hidden_size=32, cross_attention_frequency=1, max_position_embeddings=64,
            initializer_range=init_range,
        ),
        text_config=dict(
            model_type="opt", vocab_size=len(tokenizer), hidden_size=32, ffn_dim=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=max_positions, word_embed_proj_dim=32,
            pad_token_id=vocab["<pad>"], bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"],
            init_std=init_range,
        ),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=vocab["<image>"],
        initializer_range=init_range,
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():  # query tokens start at zero: make them distinct so the Q-Former output varies
        model.query_tokens.normal_(0.0, 1.0)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
