"""What reading the prompts embedded in renders costs the CPU part of a run (#17), in one process.

The decode stage with CLIP-size pixels (what every run does), without and with ``prompts`` (what the tags source
asks for), over real SD renders that carry an A1111 ``parameters`` chunk (tests/data/sd/bikini-*.png, 256x384) and
over as many PNGs without metadata; then the tag stage reading each render's text from a tags column against
reading it from the embedded prompt (the same text). The two ways of each pair run batch by batch in alternating
order, so that a noisy machine slows both alike.

    python benchmarks/prompts.py --images 256 --rounds 5

Prints images/s (median of the rounds) per way and the ratio with prompts / without.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def cells(n: int) -> tuple[list[dict], list[dict]]:
    """``n`` real renders (cycling over the two in tests/data/sd) and ``n`` PNGs of the same size without text."""
    from PIL import Image

    renders = [(ROOT / "tests" / "data" / "sd" / f"bikini-{i}.png").read_bytes() for i in (0, 1)]
    rng = np.random.default_rng(0)
    plain = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((rng.random((384, 256, 3)) * 255).astype("uint8")).save(buf, "PNG")
        plain.append({"bytes": buf.getvalue(), "path": f"plain_{i}.png"})
    return [{"bytes": renders[i % 2], "path": f"render_{i}.png"} for i in range(n)], plain


def timed(fn, batch: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn(batch)
    return time.perf_counter() - t0, out


def compare(ways: dict, batches: list[dict]) -> tuple[dict[str, float], dict[str, list]]:
    """Seconds per way over ``batches``, the ways run batch by batch in alternating order (ABBA...), so that a
    machine whose speed drifts slows both alike; and each way's outputs, concatenated."""
    seconds = dict.fromkeys(ways, 0.0)
    outputs: dict[str, list] = {name: [] for name in ways}
    names = list(ways)
    for k, batch in enumerate(batches):
        for name in names if k % 2 == 0 else names[::-1]:
            dt, out = timed(ways[name], batch)
            seconds[name] += dt
            outputs[name].append(out)
    return seconds, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from charattr_hf.sources.tags.stage import TagStage
    from charattr_hf.stages.decode import DecodeStage
    from charattr_hf.stages.pixels import PixelSpec

    renders, plain = cells(args.images)
    clip = {"_pixels": PixelSpec(224)}  # a ViT-B/32's pixels, as the pipeline asks the decode stage for them
    decode = {"without": DecodeStage(clip), "with prompts": DecodeStage(clip, prompts=True)}
    tags = TagStage("default")
    n, b = args.images, args.batch
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, images in (("renders", renders), ("plain PNGs", plain)):
            seconds, outputs = compare(decode, [{"image": images[i:i + b]} for i in range(0, n, b)])
            for way, s in seconds.items():
                rates.setdefault(f"decode {name}, {way}", []).append(n / s)
            if name == "renders":
                text = [t for out in outputs["with prompts"] for t in out["_prompt"]]
        assert all(text), "every render carries its prompt"
        none = [None] * n
        ways = {"tags column": lambda batch: tags({"tags": batch["text"], "caption": batch["none"]}),
                "embedded prompt": lambda batch: tags({"tags": batch["none"], "caption": batch["none"],
                                                       "_prompt": batch["text"], "_prompt_kind": batch["kind"]})}
        batches = [{"text": text[i:i + b], "none": none[i:i + b], "kind": ["a1111"] * len(text[i:i + b])}
                   for i in range(0, n, b)]
        seconds, _ = compare(ways, batches)
        for way, s in seconds.items():
            rates.setdefault(f"tag stage, {way}", []).append(n / s)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"| way | images/s (median of {args.rounds}) |")
    print("|---|---|")
    for k, v in median.items():
        print(f"| {k} | {v:,.1f} |")
    for name in ("renders", "plain PNGs"):
        ratio = median[f"decode {name}, with prompts"] / median[f"decode {name}, without"]
        print(f"decode {name}: with prompts / without = {ratio:.3f}")
    print(f"tag stage: embedded prompt / tags column = "
          f"{median['tag stage, embedded prompt'] / median['tag stage, tags column']:.3f}")


if __name__ == "__main__":
    main()
