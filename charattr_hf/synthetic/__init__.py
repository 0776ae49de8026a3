"""Procedural characters with known attributes: the embedded sample data, the test fixtures and the
accuracy benchmark.

Every image is drawn from a :class:`Character` whose attributes are sampled independently, so accuracy
per attribute is measurable and no attribute can be guessed from another. Nuisance factors vary on
purpose: background (white, flat colour, gradient, blocky noise), skin tone, position (+-8% of the
side), size (0.85-1.1), and the colours of the hat, bow and scarf.

Attributes (label names are those of ``schemas/default.yaml``; the subset drawn here is
``schemas/synthetic.yaml``, load it with ``load_schema("synthetic")``):

==============  ===========================================================================
hair_color      black brown blonde red orange pink purple blue green white
hair_length     short (ends at the ears), medium (to the shoulders), long (down past the
                bottom of the picture, framing the body, with locks over the shoulders)
eye_color       brown red yellow green blue purple pink (large anime eyes)
top_color       black white red yellow green blue purple pink
accessories     multi-label: glasses hat hair_bow scarf (each independent)
expression      neutral smile (open mouth) sad (frown and a tear) surprised (open "O" mouth)
art_style       from the style, see below
==============  ===========================================================================

Styles (``style`` column) and their ``art_style`` label:

* ``flat`` -> ``anime``: cel shading, dark outlines, hair highlight.
* ``chibi`` -> ``chibi``: flat colours, a head about 1.35x larger on a small body.
* ``sketch`` -> ``sketch``: grayscale line drawing. Colours are *genuinely invisible*: every region gets a
  gray drawn at random, independent of its colour, so hair, eye and top colours (and their brightness)
  cannot be read from the pixels. A sketch of a black-haired and a white-haired character drawn with the
  same random generator are byte-identical. Ground truth still holds the colours (the artist knows them).
* ``watercolor`` -> ``watercolor``: soft edges (blurred), hues shifted up to +-9 degrees per image,
  slightly washed-out colours, thin lines and paper texture. Colours stay recognisable, less reliably.
* ``pixel`` -> ``pixel_art``: drawn on a coarse grid (``max(32, size // 4)`` cells across) without
  anti-aliasing or inner outlines, scaled up with nearest neighbour.

An extra style, drawn only when named (``styles=[..., "lit"]``; not in :data:`STYLES`, the default mix, so not
in the demo model's training data):

* ``lit`` -> ``anime``: a ``flat`` drawing under coloured light, a blue night or an orange sunset cast
  (per-channel gain and offset, 85-100% strength) over the whole picture. Every colour in the pixels changes
  while tags and captions still name the character's own colours: a colour read from the pixels is wrong,
  often confidently.

Tags are danbooru-style strings (``"solo, long_hair, blonde_hair, blue_eyes, glasses, smile, ..."``):
a tag of each truth label (sometimes an alias that is true of the drawing: ``blond_hair``,
``round_eyewear``, ``:d``), plus filler tags that are true but carry no attribute (``looking_at_viewer``,
``white_background``, ``closed_mouth``, ...), shuffled, ``solo`` first. No filler tag is a tag of
``default.yaml`` except ``solo`` (true of every image), so parsing the tags with the default schema never
contradicts the truth. Noise is a :class:`TagNoise`; named presets (:data:`TAG_NOISE_PRESETS`):

* ``"clean"``: every truth tag, nothing wrong, nothing missing.
* ``"noisy"``: the same moderate noise for every style: 30% of attribute tags dropped, 15% replaced by a
  tag of another label of the same attribute, 5% spurious accessory tags, 5% of images without tags,
  30% of tag strings written with spaces instead of underscores.
* ``"mixed"``: source reliability depends on the image, for benchmarking a fusion policy:
  ``sketch`` tags are reliable (5% dropped, 2% wrong: the artist knows the colours the pixels hide);
  ``flat`` and ``chibi`` moderately reliable (15% dropped, 10% wrong, 2% without tags); ``watercolor``
  very noisy (35% dropped, 40% wrong, 15% spurious, 5% without tags); ``pixel`` images have no tags at
  all (``None``); ``lit`` (an extra style, see :data:`EXTRA_STYLE_LABELS`) as ``flat``.

Captions are free text mentioning a random subset (1-5) of the attributes in varied phrasings
(``"a pencil sketch of a girl with long hair, wearing glasses"``, ``"blonde hair, blue eyes, smiling"``),
sometimes with a negative (``"without a hat"``). Sketch captions never mention a colour.
:func:`describe` also returns the facts a caption asserts, for multi-positive contrastive training.

Datasets (:func:`generate`, :func:`build_benchmark`, :func:`sample_dataset`) have the columns ``id``
(``synth-<seed>-<index>``), ``image`` (``datasets.Image()``, PNG bytes; cast to ``Image(decode=False)``
for the pipeline), ``tags`` (string or null), ``caption``, ``style`` and ``truth`` (a struct typed by
``synthetic_schema().truth_feature()``: a ClassLabel per attribute, a list of them for accessories).

Determinism: every random choice for item ``i`` of seed ``s`` comes from generators keyed by
``(s, i, stream)``, one stream each for the attributes (then the style), the drawing, and the text (the
caption, then the tags). The same seed gives byte-identical PNGs whatever ``num_proc`` is (with the same
Pillow, numpy and zlib), changing the tag noise changes neither images nor captions, and
``generate(10)`` is the first 10 rows of ``generate(100)``.

Benchmark splits (:func:`build_benchmark`) are index ranges of one seed, so they are disjoint by
construction and do not move when another split's size changes: ``train`` starts at index 0,
``validation`` at 1e9, ``test`` at 2e9, ``test_<style>`` (one style only) at 3e9 + 1e8 * k, k the
position of the style in :data:`ALL_STYLES` (the default styles, then ``lit``).

Speed: about 2,000 images per CPU-second at 64 px (drawn at 2x, box-downsampled); ``num_proc`` splits
the work over processes. Typical use::

    from charattr_hf import synthetic
    ds = synthetic.generate(1000, seed=0, size=64, noise="noisy", num_proc=2)
    bench = synthetic.build_benchmark(seed=0, noise="mixed")   # train, validation, test, test_<style>
    ch = synthetic.sample_attributes(rng); img = synthetic.render(ch, "sketch", rng, size=224)

Modules, along the seams of the work: :mod:`.character` (palettes, styles, :class:`Character`, sampling),
:mod:`.drawing` (:func:`render`), :mod:`.text` (tags and captions), :mod:`.datasets` (:func:`generate`,
:func:`build_benchmark`, :func:`sample_dataset`); every public name is importable from this package.
They use PIL and numpy only (they run in ``datasets`` worker processes; no torch).
"""

from .character import (
    ACCESSORIES,
    ALL_STYLES,
    BACKGROUNDS,
    EXPRESSIONS,
    EXTRA_STYLE_LABELS,
    EYE_COLORS,
    HAIR_COLORS,
    HAIR_LENGTHS,
    STYLE_LABELS,
    STYLES,
    TOP_COLORS,
    Character,
    item_rng,
    sample_attributes,
    synthetic_schema,
)
from .datasets import (
    GENERATOR_VERSION,
    SPLIT_OFFSETS,
    build_benchmark,
    encode_png,
    features,
    generate,
    labels_from_truth,
    make_item,
    sample_dataset,
    tags_of,
)
from .drawing import Geometry, render, render_with_geometry
from .text import (
    TAG_NOISE_PRESETS,
    Caption,
    TagNoise,
    caption,
    describe,
    filler_tags,
    make_caption,
    make_tags,
)

__all__ = [
    "STYLES",
    "STYLE_LABELS",
    "EXTRA_STYLE_LABELS",
    "ALL_STYLES",
    "HAIR_COLORS",
    "HAIR_LENGTHS",
    "EYE_COLORS",
    "TOP_COLORS",
    "ACCESSORIES",
    "EXPRESSIONS",
    "BACKGROUNDS",
    "TAG_NOISE_PRESETS",
    "SPLIT_OFFSETS",
    "Character",
    "Geometry",
    "TagNoise",
    "Caption",
    "synthetic_schema",
    "sample_attributes",
    "render",
    "render_with_geometry",
    "make_tags",
    "filler_tags",
    "make_caption",
    "caption",
    "describe",
    "features",
    "make_item",
    "encode_png",
    "tags_of",
    "labels_from_truth",
    "generate",
    "build_benchmark",
    "sample_dataset",
    "item_rng",
    "GENERATOR_VERSION",
]
