"""The fusion benchmark on real pipeline output: synthetic characters annotated by the annotate pipeline with
three sources whose reliability depends on the image, then ``benchmarks/fusion.py`` on the result.

    python benchmarks/fusion_pipeline.py --images 6000 --output_dir runs/fusion-bench

How reliability depends on the image (documented in ``charattr_hf.synthetic``, preset ``mixed``):

- **tagger** (the shipped demo WD-layout tagger, ``--tagger demo``): trained on flat synthetic drawings like the
  demo CLIP, so it sees colours where CLIP does and is fooled by the coloured light of ``lit`` images too;
- **clip** (the shipped demo CLIP, zero-shot): sees colours in the flat, chibi, watercolor and pixel styles;
  blind to colour in the grayscale sketch style (it knows it: its colour confidence stays near chance there);
  confidently wrong about colours (and often expressions) in the ``lit`` style, a flat drawing under a blue
  night or orange sunset light, which it never saw in training;
- **tags** (the danbooru tag parser on the generated tag strings and captions): fairly reliable on flat, chibi
  and lit images (they name the character's own colours whatever the light), reliable on sketches (the artist
  knows the colours), very noisy on watercolor, missing entirely on pixel art (only captions there);
- **blip2** (robustness check only): the real BLIP-2 source running a tiny BLIP-2 with random weights
  (``--noise_init_range`` sets how sure of itself it is): a real source that is pure noise. Nobody would deploy
  it, so it is not part of the headline comparison (``fusion.md``, the real sources only); a second report
  (``fusion_with_noise.md``) shows how each method copes when it is added.

The six styles are drawn in equal shares (``synthetic.ALL_STYLES``).

Ground truth (``truth``) and the style (``style``) come with the synthetic images; the benchmark splits images
by id into train and test and compares each source alone, mean / confidence-weighted / majority-vote fusion,
and the learned policy trained from labels and from simulated reviewer feedback.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=6000)
    p.add_argument("--seed", type=int, default=7, help="synthetic images (the demo CLIP was trained on seed 0)")
    p.add_argument("--output_dir", default="runs/fusion-bench")
    p.add_argument("--num_proc", type=int, default=2)
    p.add_argument("--chunk_size", type=int, default=1024)
    p.add_argument("--tagger", default="demo", help="the tagger source ('demo': the shipped demo tagger; '' for none)")
    p.add_argument("--noise_init_range", type=float, default=1.0,
                   help="weight init std of the random BLIP-2 (larger: more confident noise)")
    p.add_argument("--keep_embedding", action="store_true",
                   help="store the demo CLIP's image embedding in the output (policy context; fusion.py uses it "
                   "unless --fusion_args --no-embedding)")
    p.add_argument("--fusion_args", nargs=argparse.REMAINDER, default=[], help="passed on to benchmarks/fusion.py")
    return p.parse_args()


def main() -> int:
    args = parse()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    from charattr_hf import synthetic
    from charattr_hf.api import annotate_to_disk
    from charattr_hf.cli import configure_torch_threads
    from charattr_hf.sources.clip.model import ClipSpec
    from charattr_hf.pipeline import PipelineOptions
    from charattr_hf.sources.clip import spec_schema as _model_schema
    from charattr_hf.schema import load_schema
    from charattr_hf.sources.blip2.stage import Blip2Source
    from charattr_hf.testing import build_tiny_blip2

    schema_path = _model_schema(ClipSpec.parse("demo"))
    schema = load_schema(schema_path)
    noise_dir = out / f"random-blip2-{args.noise_init_range:g}"
    if not (noise_dir / "config.json").is_file():
        probe = Blip2Source(schema, model_id="unused")
        texts = [q.prompt for q in probe.queries()] + [a for q in probe.queries() for a in q.answers]
        build_tiny_blip2(noise_dir, texts, seed=args.seed, init_range=args.noise_init_range, max_positions=1024)

    t0 = time.perf_counter()
    images = synthetic.generate(args.images, seed=args.seed, styles=synthetic.ALL_STYLES, noise="mixed",
                                num_proc=args.num_proc)
    configure_torch_threads(0)
    result, pipeline = annotate_to_disk(
        images,
        out / "annotated",
        options=PipelineOptions(model="demo", tagger=args.tagger or None, blip2=str(noise_dir), use_cache=False,
                                keep_embedding=args.keep_embedding),
        chunk_size=args.chunk_size,
        num_proc=args.num_proc,
    )
    if not result.complete:
        sys.exit("annotation incomplete; rerun to resume")
    annotate_seconds = time.perf_counter() - t0
    print(f"annotated {result.rows} images in {annotate_seconds:.0f} s; sources {pipeline.sources}")

    import fusion

    real = [s for s in pipeline.sources if s != "blip2"]
    command = "python benchmarks/fusion_pipeline.py " + shlex.join(sys.argv[1:])
    for name, sources in (("fusion", real), ("fusion_with_noise", [*real, "blip2"])):
        fusion.main(["--dataset", str(out / "annotated"), "--schema", os.path.relpath(schema_path),
                     "--sources", ",".join(sources), "--output", str(out / f"{name}.md"),
                     "--json", str(out / f"{name}.json"), *args.fusion_args])
        report = out / f"{name}.md"
        note = (f"Made by `{command}`: {args.images} synthetic images (seed {args.seed}, styles "
                f"{', '.join(synthetic.ALL_STYLES)}, tag noise `mixed`) annotated in {annotate_seconds:.0f} s by "
                f"{', '.join(pipeline.sources)} (blip2: random weights, init std {args.noise_init_range:g}); "
                f"compared here: {', '.join(sources)}.\n\n")
        head, rest = report.read_text().split("\n\n", 1)
        report.write_text(f"{head}\n\n{note}{rest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
