"""Danbooru-style tags and free-text captions as a source of attribute evidence (``probs_tags``).

Many image datasets already carry text about each image: booru tag strings (``1girl long_hair blue_eyes``),
tagger outputs and Stable Diffusion prompts (``masterpiece, (blonde hair:1.2), 1girl``), or captions
(``a girl with long blonde hair wearing glasses``). That text is cheap, often more reliable than a
zero-shot model on the attributes it mentions, and silent on the rest. This stage turns it into the same
shape every source emits: per attribute, a probability vector over the schema's labels, or ``None``
where the text says nothing.

How text becomes evidence
-------------------------
* :func:`split_tags` normalises any of the tag-list dialects to Danbooru's form (lower case, spaces to
  underscores), strips prompt syntax (weights ``(x:1.2)`` ``{x:1.15}`` ``[x]`` ``((x))``, escapes ``\\(``,
  LoRA and embedding calls ``<lora:x:0.8>``, ``BREAK``/``AND``, prompt editing ``[from:to:0.5]`` (``to`` is
  kept), alternation ``[a|b]`` (both), NovelAI's ``1.2::x::``) and drops rating/quality tags
  (``rating:general``, ``score_9``, ``masterpiece``), which say nothing about the character.
* A text in Stable Diffusion's parameters layout (positive prompt, ``Negative prompt:`` line, ``Steps: ...``
  settings line; :mod:`charattr_hf.prompts`), as a tags or caption column may hold it, is read for its
  positive prompt only: the negative prompt says what the image is *not*.
* Rows without tags or caption text are read from the prompt embedded in the image file, when the decode
  stage found one (see :class:`TagStage`).
* Each tag is looked up in an alias table built once from the schema: every label's ``tags`` and
  ``phrases``. Unknown tags (artists, characters, copyrights, anything outside the schema) are ignored.
* Counting tags (``1girl``, ``2boys``, ``6+girls``, ``multiple_girls``, ``1other``, ``solo``,
  ``solo_focus``, ``no_humans``) are interpreted, not looked up: how many girls, boys and others the
  image shows gives ``character_count`` (one/two/group) and ``gender_presentation`` (feminine and/or
  masculine; both present means the main character is one of them, so the evidence is split).
* Captions are tokenised into words; word n-grams and "modifier ... noun" skip-grams joined with
  underscores (``long blonde hair`` -> ``long_hair``, ``blonde_hair``) are matched against the same table.
  Simple negation (``no glasses``, ``without a hat``, ``not wearing glasses``) is absence evidence for
  multi-label attributes. Person nouns with number words (``two girls``, ``a woman and a man``) feed the
  same counting logic. Captions are weaker evidence than tags (lower confidence).

The probability model (all numbers are constructor parameters; they feed the fingerprint)
-----------------------------------------------------------------------------------------
* Single-label attribute with evidence for labels ``E`` (hit counts ``w``): with one evidenced label it
  gets confidence ``c`` and the ``L - 1`` others share ``1 - c`` uniformly; with several, each label
  outside ``E`` keeps that same ``(1 - c) / (L - 1)`` and ``E`` shares the rest in proportion to ``w``
  (so the labels the text names always outrank those it does not). ``c`` is ``tag_confidence`` for tag evidence, else
  ``caption_confidence``; tags win over the caption for an attribute when both speak. Tags that make an
  attribute ambiguous (``multicolored_hair``, ``gradient_hair``, ``heterochromia``, ...) multiply ``c``
  by ``mixed_factor``. No evidence: ``None``.
* Multi-label attribute: a label that is mentioned gets ``tag_present`` (``caption_present`` from a
  caption); an explicit absence (``no_headwear``, ``no_shirt``, "without a hat") gets ``tag_negated``
  (``caption_negated``). A label that is not mentioned gets ``tag_absent`` when the row is "well tagged"
  (at least ``min_tags_for_absence`` recognised tags: exhaustive booru tagging makes silence
  informative), else ``unknown`` (0.5, "no information" for a log-odds fusion). An attribute with no
  mention at all in a row that is not well tagged is ``None``.

Conventions worth knowing
-------------------------
* ``closed_eyes`` gives no eye-colour evidence and does not suppress eye-colour tags: Danbooru tags eye
  colour only when it is visible, so a colour tag next to ``closed_eyes`` (one eye open, a flashback
  inset) is still the best evidence available.
* ``no_humans`` alone gives no count or gender evidence (the subject may be a creature or an object);
  it is overridden by any explicit counting tag.
* A string without commas is read as Danbooru's native space-separated form, so ``long hair`` alone is
  two unknown tags; use commas (``long hair, blue eyes``) or underscores.

The stage is pure Python (no torch), so it is safe in forked ``num_proc`` workers; all tables are built
in ``__init__`` and travel with the pickled stage. Throughput on this machine: see ``benchmarks/``.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from datasets import Value

from charattr_hf.prompts import PROMPT_COLUMN, PROMPT_KIND_COLUMN, PROMPTS_VERSION, positive_prompt, reads_as_prose
from charattr_hf.schema import Attribute, Schema, load_schema, probs_column
from charattr_hf.stages.base import Stage, stable_hash

#: The output column naming where a row's tags text came from (see :class:`TagStage`).
TAGS_FROM = "tags_from"

__all__ = [
    "TagStage",
    "TAGS_FROM",
    "alias_table",
    "split_tags",
    "normalize_tag_text",
    "is_meta_tag",
    "parse_count_tag",
    "caption_segments",
    "COUNT_TAGS",
    "DEFAULT_MIXED_TAGS",
    "ABSENCE_SYNONYMS",
]

# ---------------------------------------------------------------------------------------------------
# Tables (module constants; their content is hashed into every TagStage fingerprint)
# ---------------------------------------------------------------------------------------------------

#: Standalone tags that are ratings when they appear in a tag list (Danbooru, e621, Pony, NovelAI styles).
_RATING_TAGS = frozenset(
    {"general", "sensitive", "questionable", "explicit", "safe", "nsfw", "sfw", "suggestive"}
)
#: Quality, aesthetic and date tags of generation prompts and tagger datasets; they describe the image's
#: quality or age, never the character.
_QUALITY_TAGS = frozenset(
    {
        "masterpiece", "best_quality", "high_quality", "good_quality", "great_quality", "amazing_quality",
        "normal_quality", "medium_quality", "average_quality", "low_quality", "worst_quality",
        "bad_quality", "very_aesthetic", "aesthetic", "displeasing", "very_displeasing",
        "highres", "absurdres", "incredibly_absurdres", "lowres", "ultra_detailed", "extremely_detailed",
        "highly_detailed", "very_detailed", "detailed", "ultra-detailed", "8k", "4k", "hd", "uhd",
        "best_aesthetic", "great_aesthetic", "normal_aesthetic", "bad_aesthetic", "worst_aesthetic", "very_awa",
        "exceptional", "extremely_detailed_cg", "extremely_detailed_cg_unity_8k_wallpaper",
        "newest", "recent", "mid", "early", "oldest", "source_anime", "source_cartoon", "source_furry",
        "source_pony", "official_art", "commentary", "commentary_request", "translated",
        "translation_request", "bad_id", "bad_pixiv_id", "md5_mismatch",
    }
)
_META_PATTERN = re.compile(r"^(?:rating[:_].*|score_\d+(?:_up)?|year_\d{4})$")

#: Danbooru tag prefixes seen in some exports (``artist:name``); only ``general:`` keeps its tag.
_CATEGORY_PREFIXES = frozenset({"general", "artist", "character", "copyright", "meta", "species", "by", "embedding"})

#: Counting tags that are not of the ``<n>girls`` form: (kind, lower bound).
COUNT_TAGS: Mapping[str, tuple[str, int]] = {
    "multiple_girls": ("girl", 2),
    "multiple_boys": ("boy", 2),
    "multiple_others": ("other", 2),
}
_COUNT_FLAGS = frozenset({"solo", "solo_focus", "no_humans"})
_COUNT_RE = re.compile(r"^(\d+)(\+?)_?(girl|boy|other)s?$")

#: Tags that make an attribute ambiguous: its confidence is multiplied by ``mixed_factor``.
DEFAULT_MIXED_TAGS: Mapping[str, str] = {
    "multicolored_hair": "hair_color",
    "two-tone_hair": "hair_color",
    "gradient_hair": "hair_color",
    "streaked_hair": "hair_color",
    "colored_inner_hair": "hair_color",
    "split-color_hair": "hair_color",
    "colored_tips": "hair_color",
    "rainbow_hair": "hair_color",
    "heterochromia": "eye_color",
    "multicolored_eyes": "eye_color",
    "two-tone_eyes": "eye_color",
    "gradient_eyes": "eye_color",
}

#: Absence tags whose name does not follow ``no_<tag>``: they are rewritten before the generic rule.
ABSENCE_SYNONYMS: Mapping[str, str] = {"no_headwear": "no_hat", "no_eyewear": "no_glasses"}

# Caption vocabulary.
_NEGATION_CUES = frozenset({"no", "without", "not", "never", "nor", "lacking", "w/o", "none"})
_NEGATION_WINDOW = 4
_SCOPE_BREAKERS = frozenset({"and", "but", "with", "while", "although", "though", "yet", "however"})
_GAP_BLOCKERS = frozenset(
    {"with", "without", "no", "not", "wearing", "in", "on", "of", "at", "has", "have", "having", "holding",
     "is", "are", "was", "were", "a", "an", "the", "her", "his", "their", "its", "to", "by", "from", "for"}
)
#: Unigrams that are tags but too ambiguous in free text ("a 20 year old woman", "baby blue eyes").
_CAPTION_STOPWORDS = frozenset({"old", "baby"})
_PERSON_NOUNS: Mapping[str, tuple[str, bool]] = {
    "girl": ("girl", False), "girls": ("girl", True), "woman": ("girl", False), "women": ("girl", True),
    "lady": ("girl", False), "ladies": ("girl", True),
    "boy": ("boy", False), "boys": ("boy", True), "man": ("boy", False), "men": ("boy", True),
    "guy": ("boy", False), "guys": ("boy", True), "gentleman": ("boy", False), "gentlemen": ("boy", True),
    "person": ("other", False), "people": ("other", True), "persons": ("other", True),
    "character": ("other", False), "characters": ("other", True),
    "kid": ("other", False), "kids": ("other", True), "child": ("other", False), "children": ("other", True),
}
#: Number words before a person noun: (count, exact). Group words give a lower bound.
_NUMBER_WORDS: Mapping[str, tuple[int, bool]] = {
    "a": (1, True), "an": (1, True), "one": (1, True), "single": (1, True), "lone": (1, True),
    "another": (1, True), "1": (1, True), "two": (2, True), "2": (2, True), "both": (2, True),
    "pair": (2, True), "couple": (2, True), "three": (3, True), "3": (3, True), "four": (4, True),
    "4": (4, True), "five": (5, True), "5": (5, True), "six": (6, True), "seven": (7, True),
    "eight": (8, True), "nine": (9, True), "ten": (10, True),
    "several": (3, False), "many": (3, False), "numerous": (3, False), "group": (3, False),
    "crowd": (3, False), "bunch": (3, False), "multiple": (2, False), "some": (2, False),
    "various": (2, False),
}
_DEFINITE = frozenset({"the", "this", "that", "these", "those", "her", "his", "their", "my", "your", "its"})
_SOLO_WORDS = frozenset({"alone", "solo"})
_AGE_UNITS = frozenset({"year", "years", "yr", "yrs", "month", "months", "week", "weeks", "day", "days"})
_PERSON_KINDS = ("girl", "boy", "other")

_TABLES_VERSION = stable_hash(
    sorted(_RATING_TAGS), sorted(_QUALITY_TAGS), _META_PATTERN.pattern, sorted(COUNT_TAGS.items()),
    sorted(_COUNT_FLAGS), _COUNT_RE.pattern, sorted(ABSENCE_SYNONYMS.items()), sorted(_NEGATION_CUES),
    _NEGATION_WINDOW, sorted(_SCOPE_BREAKERS), sorted(_GAP_BLOCKERS), sorted(_CAPTION_STOPWORDS),
    sorted(_PERSON_NOUNS.items()), sorted(_NUMBER_WORDS.items()), sorted(_DEFINITE), sorted(_SOLO_WORDS),
    sorted(_AGE_UNITS), "parser-v2", PROMPTS_VERSION,
)

# ---------------------------------------------------------------------------------------------------
# Tag-list splitting
# ---------------------------------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<[^<>]*>")  # <lora:name:0.8>, <hypernet:x:1>, <embedding:x>
# A1111 prompt editing: [from:to:when] draws "to" for the rest of the steps, [from::when] drops "from"
_PROMPT_EDIT = re.compile(r"\[([^\[\]:|]*):([^\[\]:|]*):\s*(?:\d+\.?\d*|\.\d+)\s*\]")
# NovelAI v4 numeric emphasis: 1.5::blue hair:: and -1::hat::
_NAI_WEIGHT = re.compile(r"(?<![\w.:])-?(?:\d+\.?\d*|\.\d+)::|::")
# a weight of zero or below asks the renderer to leave the text out, as a negative prompt does: (hat:-1),
# {x:0}, -1::hat::
_NON_POSITIVE = re.compile(
    r"[(\[{][^()\[\]{}]*:\s*(?:-\s*(?:\d+\.?\d*|\.\d+)|0*\.?0+)\s*[)\]}]"
    r"|(?<![\w.:])(?:-\s*(?:\d+\.?\d*|\.\d+)|0*\.?0+)::[^:]*(?:::|$)"
)
_WEIGHT = re.compile(r"(?<=[^\s,:(\[{|])\s*:\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*(?=[)\]},|\n]|$)")
_KEYWORD_SEPARATORS = re.compile(r"\b(?:BREAK|AND)\b")
_TRAILING_DOTS = re.compile(r"(?<=[a-z0-9)])\.+$")


def is_meta_tag(tag: str) -> bool:
    """Rating, quality, score or date tag (normalised form): ignored as evidence."""
    if tag in _QUALITY_TAGS or tag in _RATING_TAGS:
        return True
    return tag.startswith(("rating", "score_", "year_")) and _META_PATTERN.match(tag) is not None


_NEEDS_NORMALIZING = re.compile(r"[\s\"'`.:]")
_NEEDS_NORMALIZING_TEXT = re.compile(r"[\"'`.:]")


def normalize_tag_text(tag: str) -> str:
    """One tag to Danbooru's normal form: lower case, inner whitespace to ``_``, outer whitespace,
    quotes and trailing full stops removed, a ``general:`` prefix dropped (``artist:x`` and the like
    give ``""``: such tags never describe the character)."""
    tag = tag.lower()
    if _NEEDS_NORMALIZING.search(tag) is None:
        return tag
    tag = "_".join(tag.strip().strip("\"'`").split())
    if tag.endswith("."):
        tag = _TRAILING_DOTS.sub("", tag)
    if ":" in tag:
        prefix, _, rest = tag.partition(":")
        if prefix in _CATEGORY_PREFIXES and rest:
            return rest if prefix == "general" else ""
    return tag


_BRACKET_TOKENS = re.compile(r"\\.|[()\[\]{}]")
_SEPARATOR_COMMA = re.compile(r"[,\n]")


def _strip_brackets(text: str, comma_mode: bool) -> str:
    """Remove prompt-weight brackets, keep Danbooru qualifier parentheses (``watercolor_(medium)``).

    A ``(`` that opens after text inside the same tag is a qualifier; one at the start of a tag (or of a
    bracket group) is weight syntax. ``\\(`` and ``\\)`` are always literal. ``[``/``]``, ``{``/``}`` are
    always syntax (attention brackets of A1111 and NovelAI). Only the special characters are visited,
    so plain text costs one regex scan.
    """
    out: list[str] = []
    stack: list[bool] = []  # True: a literal "(" was emitted and its ")" must be kept
    pos = 0
    has_text = False  # the current tag already has text before the special character
    for m in _BRACKET_TOKENS.finditer(text):
        start = m.start()
        if start > pos:
            plain = text[pos:start]
            out.append(plain)
            # does the current tag have text before the special character that follows?
            if not comma_mode:
                has_text = not plain[-1].isspace()
            else:
                cut = max(plain.rfind(","), plain.rfind("\n"))
                if cut >= 0:
                    has_text = bool(plain[cut + 1 :].strip())
                elif plain.strip():
                    has_text = True
        tok = m.group()
        pos = m.end()
        if tok[0] == "\\":
            out.append(tok[1])
            has_text = True
        elif tok == "(":
            stack.append(has_text)
            if has_text:
                out.append("(")
        elif tok == ")":
            if stack and stack.pop():
                out.append(")")
                has_text = True
        # "[", "]", "{", "}": attention syntax, dropped
    out.append(text[pos:])
    return "".join(out)


def split_tags(text: "str | Sequence[str] | None", *, keep_meta: bool = False) -> list[str]:
    """Split a tag string into normalised tags, in order, without duplicates.

    Accepts comma-separated lists (``1girl, long hair, blue eyes``), Danbooru's native space-separated
    form (``1girl long_hair blue_eyes``; used when the text has no comma or newline), Stable Diffusion
    prompts (``(blonde hair:1.2)``, ``[hat]``, ``{smile}``, ``\\(cosplay\\)``, ``<lora:x:0.7>``,
    ``BREAK``), or an already-split list of tags (each item one tag, spaces allowed). Rating and quality
    tags are dropped unless ``keep_meta``.
    """
    if text is None:
        return []
    if not isinstance(text, str):
        out: list[str] = []
        seen: set[str] = set()
        for item in text:
            for tag in _split(item, keep_meta, True) if isinstance(item, str) else ():
                if tag not in seen:
                    seen.add(tag)
                    out.append(tag)
        return out
    return _split(text, keep_meta, False)


def _split(text: str, keep_meta: bool, one_tag_per_item: bool) -> list[str]:
    if not text:
        return []
    text = positive_prompt(text)  # a whole parameters block: its negative prompt and settings are no evidence
    if "<" in text:
        text = _EXTRA_NETWORK.sub(",", text)
    if ":" in text:
        if "-" in text or "0" in text:
            text = _NON_POSITIVE.sub(",", text)
        if "[" in text:
            text = _PROMPT_EDIT.sub(r"\2", text)
    if "::" in text:
        text = _NAI_WEIGHT.sub(",", text)
    if "|" in text:  # alternation [a|b]: the render mixes both
        text = text.replace("|", ",")
    if "BREAK" in text or "AND" in text:
        text = _KEYWORD_SEPARATORS.sub(",", text)
    comma_mode = one_tag_per_item or "," in text or "\n" in text
    if ":" in text:
        text = _WEIGHT.sub("", text)
    if "(" in text or "[" in text or "{" in text or "\\" in text or ")" in text:
        text = _strip_brackets(text, comma_mode)
    text = text.lower()
    if _NEEDS_NORMALIZING_TEXT.search(text) is None:  # the common case: no quotes, dots or colons
        if comma_mode:
            parts = ["_".join(part.split()) for part in _SEPARATOR_COMMA.split(text)]
        else:
            parts = text.split()
    else:
        parts = [
            normalize_tag_text(part) for part in (_SEPARATOR_COMMA.split(text) if comma_mode else text.split())
        ]
    out = []
    seen = set()
    for tag in parts:
        if not tag or tag in seen or (not keep_meta and is_meta_tag(tag)):
            continue
        seen.add(tag)
        out.append(tag)
    return out


def parse_count_tag(tag: str) -> "tuple[str, int, bool] | None":
    """``3girls`` -> ("girl", 3, True); ``6+boys`` -> ("boy", 6, False); ``multiple_others`` ->
    ("other", 2, False); anything else -> None. The boolean says whether the count is exact."""
    if tag and tag[0].isdigit():
        m = _COUNT_RE.match(tag)
        if m:
            return m.group(3), int(m.group(1)), not m.group(2)
        return None
    hit = COUNT_TAGS.get(tag)
    if hit is not None:
        return hit[0], hit[1], False
    return None


# ---------------------------------------------------------------------------------------------------
# Caption tokenising
# ---------------------------------------------------------------------------------------------------

_CAPTION_TOKEN = re.compile(r"[a-z0-9+]+(?:['\-/][a-z0-9]+)*|[.,;:!?()\[\]\"]")
_PUNCT = frozenset(".,;:!?()[]\"")
_CONTRACTIONS = {"ca": "can", "wo": "will", "sha": "shall"}


def caption_segments(text: str) -> list[list[str]]:
    """Lower-cased word tokens of a caption, split into clauses at punctuation.

    ``blonde-haired`` becomes ``blonde hair`` and ``blue-eyed`` becomes ``blue eyes`` (so they match the
    ``*_hair``/``*_eyes`` tags); possessive ``'s`` is dropped; ``n't`` becomes ``not``.
    """
    segments: list[list[str]] = []
    current: list[str] = []
    for tok in _CAPTION_TOKEN.findall(text.lower()):
        if tok in _PUNCT:
            if current:
                segments.append(current)
                current = []
            continue
        if tok.endswith("'s"):
            tok = tok[:-2]
        if tok.endswith("n't"):
            stem = _CONTRACTIONS.get(tok[:-3], tok[:-3])
            if stem:
                current.append(stem)
            current.append("not")
            continue
        if tok.endswith("-haired") and len(tok) > 7:
            current.extend((tok[:-7], "hair"))
        elif tok.endswith("-eyed") and len(tok) > 5:
            current.extend((tok[:-5], "eyes"))
        elif tok:
            current.append(tok)
    if current:
        segments.append(current)
    return segments


def _singular(word: str) -> str | None:
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        if word.endswith("sses") or word.endswith("xes") or word.endswith("ches") or word.endswith("shes"):
            return word[:-2]
        return word[:-1]
    return None


# ---------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------


class _Counter:
    """How many girls, boys and others a row mentions: exact counts and lower bounds per kind."""

    __slots__ = ("exact", "lower", "ref", "solo", "solo_focus", "no_humans", "additive")

    def __init__(self, additive: bool) -> None:
        self.exact: dict[str, int] = {}
        self.lower: dict[str, int] = {}
        self.ref: set[str] = set()
        self.solo = self.solo_focus = self.no_humans = False
        # Tags state each count once (take the max); captions mention people one by one (add up).
        self.additive = additive

    def add(self, kind: str, n: int, exact: bool) -> None:
        if exact:
            if self.additive:
                self.exact[kind] = self.exact.get(kind, 0) + n
            elif n > self.exact.get(kind, -1):
                self.exact[kind] = n
        elif n > self.lower.get(kind, 0):
            self.lower[kind] = n

    def add_tag(self, tag: str) -> bool:
        """Consume a counting tag; False if ``tag`` is not one."""
        parsed = parse_count_tag(tag)
        if parsed is not None:
            self.add(*parsed)
            return True
        if tag in _COUNT_FLAGS:
            if tag == "solo":
                self.solo = True
            elif tag == "solo_focus":
                self.solo_focus = True
            else:
                self.no_humans = True
            return True
        return False

    def resolve(self) -> "tuple[int, int | None, dict[str, int]] | None":
        """(total lower bound, total upper bound or None if open, per-kind lower bounds); None when the
        row says nothing about how many characters it shows."""
        kinds: dict[str, int] = {}
        all_exact = True
        for kind in _PERSON_KINDS:
            e = self.exact.get(kind)
            lo = self.lower.get(kind, 0)
            if e is not None:
                kinds[kind] = max(e, lo)
                all_exact = all_exact and lo <= e
            elif lo:
                kinds[kind] = lo
                all_exact = False
            elif kind in self.ref:
                kinds[kind] = 1
            else:
                kinds[kind] = 0
        total = sum(kinds.values())
        if total > 0:
            hi: int | None = total if all_exact else None
        elif self.solo:
            total, hi = 1, 1
        elif self.solo_focus:
            total, hi = 2, None
        else:
            return None
        if self.solo_focus and total < 2:
            total, hi = 2, None
        return total, hi, kinds


# ---------------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------------

class _Evidence:
    """Evidence gathered from one text field of one row."""

    __slots__ = ("single", "present", "negated", "mixed", "recognised", "counter", "binary")

    def __init__(self, from_caption: bool) -> None:
        # Tags: each tag is a separate statement, so two tags for one label weigh twice (white_shirt,
        # white_jacket vs black_skirt). Captions: a label is mentioned or not; phrasing repeats words.
        self.binary = from_caption
        self.single: dict[int, dict[int, float]] = {}
        self.present: dict[int, set[int]] = {}
        self.negated: dict[int, set[int]] = {}
        self.mixed: set[int] = set()
        self.recognised = 0
        self.counter = _Counter(additive=from_caption)


class TagStage(Stage):
    """Evidence from the ``tags`` and ``caption`` columns, else from the prompt embedded in the image, as
    ``probs_tags``; where the text came from, as ``tags_from``.

    Per row, the input's own text wins: the tags and/or caption columns when either has text (a tags column may
    come from ``--tags_column``, ``metadata.jsonl`` or the ``.txt`` files beside the images), else the positive
    prompt the decode stage found in the image file (:func:`charattr_hf.prompts.embedded_prompt`; working columns
    ``_prompt`` and ``_prompt_kind``), read as tags, or as a caption when it is written as sentences
    (:func:`~charattr_hf.prompts.reads_as_prose`). ``tags_from`` is ``tags``, ``caption``, ``tags+caption``, the
    prompt's kind (``a1111``, ``fooocus``, ``novelai``, ``comfyui``), or null when the row had no text at all.

    Parameters are described in the module docstring; every one of them is returned by
    :meth:`params` and so changes the fingerprint. ``count_attribute``/``gender_attribute`` name the
    attributes the counting tags feed (skipped when the schema lacks them; set to ``None`` to disable);
    ``count_labels`` maps each label of the count attribute to the smallest number of characters it
    covers (the last one is open-ended), ``gender_labels`` maps "girl"/"boy" to labels of the gender
    attribute.
    """

    name = "tags"
    cpu_bound = True

    def __init__(
        self,
        schema: "Schema | str | None" = None,
        *,
        tags_column: str = "tags",
        caption_column: str = "caption",
        tag_confidence: float = 0.9,
        caption_confidence: float = 0.65,
        mixed_factor: float = 0.75,
        tag_present: float = 0.95,
        tag_absent: float = 0.1,
        tag_negated: float = 0.05,
        caption_present: float = 0.8,
        caption_negated: float = 0.1,
        unknown: float = 0.5,
        min_tags_for_absence: int = 5,
        count_attribute: "str | None" = "character_count",
        count_labels: Sequence[tuple[str, int]] = (("one", 1), ("two", 2), ("group", 3)),
        gender_attribute: "str | None" = "gender_presentation",
        gender_labels: Sequence[tuple[str, str]] = (("girl", "feminine"), ("boy", "masculine")),
        mixed_tags: "Mapping[str, str] | None" = None,
    ) -> None:
        self.schema = load_schema(schema)
        self.tags_column = tags_column
        self.caption_column = caption_column
        probs = {
            "tag_confidence": tag_confidence, "caption_confidence": caption_confidence,
            "mixed_factor": mixed_factor, "tag_present": tag_present, "tag_absent": tag_absent,
            "tag_negated": tag_negated, "caption_present": caption_present,
            "caption_negated": caption_negated, "unknown": unknown,
        }
        for key, value in probs.items():
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"TagStage: {key} must be a probability in [0, 1], got {value!r}")
        for key in ("tag_confidence", "caption_confidence", "mixed_factor"):
            if float(probs[key]) <= 0.0:
                raise ValueError(f"TagStage: {key} must be > 0, got {probs[key]!r}")
        if int(min_tags_for_absence) < 1:
            raise ValueError(f"TagStage: min_tags_for_absence must be >= 1, got {min_tags_for_absence!r}")
        self.tag_confidence = float(tag_confidence)
        self.caption_confidence = float(caption_confidence)
        self.mixed_factor = float(mixed_factor)
        self.tag_present = float(tag_present)
        self.tag_absent = float(tag_absent)
        self.tag_negated = float(tag_negated)
        self.caption_present = float(caption_present)
        self.caption_negated = float(caption_negated)
        self.unknown = float(unknown)
        self.min_tags_for_absence = int(min_tags_for_absence)
        self.count_attribute = count_attribute
        self.count_labels = tuple((str(a), int(b)) for a, b in count_labels)
        self.gender_attribute = gender_attribute
        self.gender_labels = tuple((str(a), str(b)) for a, b in gender_labels)
        self.mixed_tags = dict(DEFAULT_MIXED_TAGS if mixed_tags is None else mixed_tags)
        self._build_tables()

    # -- description ------------------------------------------------------------------------
    @property
    def output_column(self) -> str:
        return probs_column(self.name)

    def params(self) -> dict:
        return {
            "schema": self.schema.fingerprint(),
            "tables": _TABLES_VERSION,
            "tags_column": self.tags_column,
            "caption_column": self.caption_column,
            "tag_confidence": self.tag_confidence,
            "caption_confidence": self.caption_confidence,
            "mixed_factor": self.mixed_factor,
            "tag_present": self.tag_present,
            "tag_absent": self.tag_absent,
            "tag_negated": self.tag_negated,
            "caption_present": self.caption_present,
            "caption_negated": self.caption_negated,
            "unknown": self.unknown,
            "min_tags_for_absence": self.min_tags_for_absence,
            "count_attribute": self.count_attribute,
            "count_labels": [list(x) for x in self.count_labels],
            "gender_attribute": self.gender_attribute,
            "gender_labels": [list(x) for x in self.gender_labels],
            "mixed_tags": sorted(self.mixed_tags.items()),
        }

    def features(self) -> dict:
        return {self.output_column: self.schema.probs_feature(), TAGS_FROM: Value("string")}

    def input_columns(self) -> list[str]:
        return [self.tags_column, self.caption_column, PROMPT_COLUMN, PROMPT_KIND_COLUMN]

    def __repr__(self) -> str:  # the full params are long; the fingerprint identifies them
        return f"TagStage(schema={self.schema.name!r}, fingerprint={self.fingerprint()!r})"

    # -- tables -----------------------------------------------------------------------------
    def _build_tables(self) -> None:
        attrs: tuple[Attribute, ...] = self.schema.attributes
        self._names = [a.name for a in attrs]
        self._sizes = [a.num_labels for a in attrs]
        self._multi = [a.multi_label for a in attrs]

        self._count_ai, self._count_bins = self._resolve_count(attrs)
        self._gender_ai, self._gender_li = self._resolve_gender(attrs)
        counting_ais = {ai for ai in (self._count_ai, self._gender_ai) if ai is not None}
        self._counting = bool(counting_ais)

        # key -> ((attribute index, label index), ...); keys are tags and phrases in tag form.
        # Counting tags of the counting attributes are interpreted, not looked up.
        self._aliases: dict[str, tuple[tuple[int, int], ...]] = alias_table(self.schema, skip_counting=counting_ais)

        # Absence: "no_<key>" for every key of a multi-label label, plus named synonyms.
        absence: dict[str, tuple[tuple[int, int], ...]] = {}
        for key, entries in self._aliases.items():
            multi = tuple(e for e in entries if self._multi[e[0]])
            if multi:
                absence["no_" + key] = multi
        for tag, target in ABSENCE_SYNONYMS.items():
            if target in absence:
                absence[tag] = absence[target]
        self._absence = absence

        name_to_ai = {a.name: i for i, a in enumerate(attrs)}
        self._mixed = {
            tag: name_to_ai[attr] for tag, attr in self.mixed_tags.items()
            if attr in name_to_ai and not self._multi[name_to_ai[attr]]
        }

        # One dict for the tag path: tag -> (alias entries, absence entries, mixed attribute, is count tag).
        # Counting tags of other forms ("7girls") fall back to the regex in _from_tags.
        info: dict[str, tuple] = {}
        keys = set(self._aliases) | set(self._absence) | set(self._mixed) | set(COUNT_TAGS) | _COUNT_FLAGS
        keys |= {f"{n}{kind}{'s' if n > 1 else ''}" for n in range(1, 6) for kind in _PERSON_KINDS}
        keys |= {f"6+{kind}s" for kind in _PERSON_KINDS}
        for key in keys:
            is_count = self._counting and (key in _COUNT_FLAGS or parse_count_tag(key) is not None)
            entry = (self._aliases.get(key), self._absence.get(key), self._mixed.get(key), is_count)
            if entry != (None, None, None, False):
                info[key] = entry
        self._tag_info = info

        # Caption matching: the keys, their word prefixes (to stop extending an n-gram early), the
        # longest key in words, and the words that end multi-word keys ("heads").
        self._caption_keys = frozenset(self._aliases) | frozenset(self._mixed)
        self._key_prefixes = frozenset(
            "_".join(words[:k]) for words in (key.split("_") for key in self._caption_keys)
            for k in range(1, len(words))
        )
        self._max_words = min(max((k.count("_") + 1 for k in self._caption_keys), default=1), 6)
        # A head is a noun-like word: more often the last word of a key (blonde_hair, white_shirt) than
        # the first (white is first in white_hair, last only in black_and_white: not a head).
        last: dict[str, int] = {}
        first: dict[str, int] = {}
        for key in list(self._aliases) + list(self._mixed):
            if "_" in key:
                words = key.split("_")
                last[words[-1]] = last.get(words[-1], 0) + 1
                first[words[0]] = first.get(words[0], 0) + 1
        self._heads = frozenset(w for w, c in last.items() if c > first.get(w, 0))

    def _resolve_count(self, attrs) -> tuple["int | None", tuple[tuple[int, int, "int | None"], ...]]:
        if not self.count_attribute or self.count_attribute not in self.schema:
            return None, ()
        attr = self.schema[self.count_attribute]
        if attr.multi_label:
            raise ValueError(f"TagStage: count_attribute {attr.name!r} must be single-label")
        missing = [name for name, _ in self.count_labels if name not in attr.label_names]
        if missing or not self.count_labels:
            raise ValueError(
                f"TagStage: count_labels {missing or '(empty)'} not in {attr.name!r} (labels "
                f"{attr.label_names}); pass count_labels=[(label, min_count), ...] or count_attribute=None"
            )
        ordered = sorted(self.count_labels, key=lambda x: x[1])
        bins = []
        for k, (name, lo) in enumerate(ordered):
            hi = ordered[k + 1][1] - 1 if k + 1 < len(ordered) else None
            bins.append((attr.index(name), lo, hi))
        return self.schema.attribute_names.index(attr.name), tuple(bins)

    def _resolve_gender(self, attrs) -> tuple["int | None", dict[str, int]]:
        if not self.gender_attribute or self.gender_attribute not in self.schema:
            return None, {}
        attr = self.schema[self.gender_attribute]
        if attr.multi_label:
            raise ValueError(f"TagStage: gender_attribute {attr.name!r} must be single-label")
        bad = [kind for kind, _ in self.gender_labels if kind not in ("girl", "boy", "other")]
        missing = [name for _, name in self.gender_labels if name not in attr.label_names]
        if bad or missing:
            raise ValueError(
                f"TagStage: gender_labels must map 'girl'/'boy'/'other' to labels of {attr.name!r} "
                f"({attr.label_names}); bad kinds {bad}, unknown labels {missing}"
            )
        return (self.schema.attribute_names.index(attr.name),
                {kind: attr.index(name) for kind, name in self.gender_labels})

    # -- evidence ---------------------------------------------------------------------------
    def _hit(self, ev: _Evidence, entries: Iterable[tuple[int, int]], negated: bool = False) -> None:
        for ai, li in entries:
            if self._multi[ai]:
                (ev.negated if negated else ev.present).setdefault(ai, set()).add(li)
            elif not negated:
                w = ev.single.setdefault(ai, {})
                w[li] = 1.0 if ev.binary else w.get(li, 0.0) + 1.0

    def _from_tags(self, tags: "str | Sequence[str]") -> _Evidence:
        ev = _Evidence(from_caption=False)
        info_get = self._tag_info.get
        counting = self._counting
        for tag in split_tags(tags):
            info = info_get(tag)
            if info is None:
                # rare counting spellings ("7girls", "2_girls"); everything else is unknown: ignored
                if counting and tag[:1].isdigit() and ev.counter.add_tag(tag):
                    ev.recognised += 1
                continue
            entries, neg, mixed_ai, is_count = info
            if entries is not None:
                self._hit(ev, entries)
            if neg is not None:
                self._hit(ev, neg, negated=True)
            if mixed_ai is not None:
                ev.mixed.add(mixed_ai)
            if is_count:
                ev.counter.add_tag(tag)
            ev.recognised += 1
        return ev

    def _longest_key(self, words: Sequence[str], i: int) -> "tuple[str, int] | None":
        """The longest table key made of words[i:j] (the last word may be a plural), and its end j.

        Extends word by word only while the words so far start some key, so most positions cost a
        single set lookup.
        """
        keys, prefixes = self._caption_keys, self._key_prefixes
        best: "tuple[str, int] | None" = None
        prefix = ""
        for j in range(i + 1, min(len(words), i + self._max_words) + 1):
            word = words[j - 1]
            cand = prefix + "_" + word if prefix else word
            if cand in keys:
                if j > i + 1 or word not in _CAPTION_STOPWORDS:
                    best = (cand, j)
            else:
                sing = _singular(word)
                if sing is not None:
                    cand_s = prefix + "_" + sing if prefix else sing
                    if cand_s in keys:
                        best = (cand_s, j)
            if cand not in prefixes:
                break
            prefix = cand
        return best

    def _use_key(self, ev: _Evidence, key: str, negated: bool) -> None:
        entries = self._aliases.get(key)
        if entries is not None:
            self._hit(ev, entries, negated)
        ai = self._mixed.get(key)
        if ai is not None and not negated:
            ev.mixed.add(ai)

    def _from_caption(self, text: str) -> _Evidence:
        ev = _Evidence(from_caption=True)
        heads = self._heads
        for seg in caption_segments(text):
            n = len(seg)
            negated = _negation_mask(seg)
            if self._counting:
                _caption_counts(seg, negated, ev.counter)
            # contiguous n-grams, greedy longest match: "old man" is old_man, not also "man"
            i = 0
            while i < n:
                word = seg[i]
                if word in _NEGATION_CUES or (word == "old" and i and seg[i - 1] in _AGE_UNITS):
                    i += 1  # "a 20 year old woman" is not old_woman
                    continue
                found = self._longest_key(seg, i)
                if found is None:
                    i += 1
                else:
                    self._use_key(ev, found[0], negated[i])
                    i = found[1]
            # "modifier ... head" skip-grams: long blonde hair -> long_hair; very long wavy hair
            for j in range(2, n):
                head = seg[j]
                if head not in heads:
                    s = _singular(head)
                    if s is None or s not in heads:
                        continue
                    head = s
                for gap in (1, 2):
                    for m in (1, 2):
                        i = j - gap - m
                        if i < 0:
                            continue
                        between = seg[i + m : j]
                        if any(w in heads or w in _GAP_BLOCKERS or w in _NEGATION_CUES for w in between):
                            continue
                        key = "_".join(seg[i : i + m]) + "_" + head
                        if key in self._caption_keys:
                            self._use_key(ev, key, negated[i])
        return ev

    # -- probabilities ----------------------------------------------------------------------
    def _count_evidence(self, ev: _Evidence) -> None:
        """Turn the counter into weights of the count and gender attributes."""
        resolved = ev.counter.resolve()
        if resolved is None:
            return
        total, hi, kinds = resolved
        if self._count_ai is not None:
            w = ev.single.setdefault(self._count_ai, {})
            for li, lo_b, hi_b in self._count_bins:
                if (hi is None or lo_b <= hi) and (hi_b is None or total <= hi_b):
                    w[li] = w.get(li, 0.0) + 1.0
            if not w:
                del ev.single[self._count_ai]
        if self._gender_ai is not None:
            # Both kinds present: the main character is one of them; counts do not say which.
            present = [self._gender_li[k] for k in _PERSON_KINDS if kinds.get(k) and k in self._gender_li]
            if present:
                w = ev.single.setdefault(self._gender_ai, {})
                for li in present:
                    w[li] = w.get(li, 0.0) + 1.0

    def _single(self, ai: int, weights: Mapping[int, float], confidence: float, mixed: bool) -> list[float]:
        """Distribution for a single-label attribute evidenced on ``weights`` (label -> hit count).

        With one evidenced label it gets ``c`` and the others share ``1 - c``. Each label without
        evidence keeps that same share, ``(1 - c) / (L - 1)``, however many labels are evidenced, and
        the evidenced ones split the rest by weight: so an evidenced label never ends up below one that
        was not (which "spread 1 - c over the rest" would do for 2 of 3 labels at c = 0.65).
        """
        size = self._sizes[ai]
        c = confidence * (self.mixed_factor if mixed else 1.0)
        total = sum(weights.values())
        k = len(weights)
        other = (1.0 - c) / (size - 1) if k < size else 0.0
        mass = 1.0 - other * (size - k)
        out = [other] * size
        for li, w in weights.items():
            out[li] = mass * w / total
        return out

    def row(
        self, tags: "str | Sequence[str] | None" = None, caption: "str | Sequence[str] | None" = None
    ) -> dict[str, Any]:
        """The ``probs_tags`` value for one row: {attribute: list of floats or None}.

        ``tags`` is a tag string or a list of tags; ``caption`` a string or a list of captions (read as
        one text). Anything else (``None``, a float NaN from pandas) counts as missing.
        """
        if not isinstance(tags, str):
            tags = [t for t in tags if isinstance(t, str)] if isinstance(tags, (list, tuple)) else None
        if isinstance(caption, (list, tuple)):
            caption = ". ".join(c for c in caption if isinstance(c, str))
        if isinstance(caption, str):
            caption = positive_prompt(caption)
        tag_ev = self._from_tags(tags) if tags else None
        cap_ev = self._from_caption(caption) if isinstance(caption, str) and caption.strip() else None
        if tag_ev is not None and self._counting:
            self._count_evidence(tag_ev)
        if cap_ev is not None and self._counting:
            self._count_evidence(cap_ev)
        well_tagged = tag_ev is not None and tag_ev.recognised >= self.min_tags_for_absence
        mixed = (tag_ev.mixed if tag_ev else set()) | (cap_ev.mixed if cap_ev else set())
        out: dict[str, Any] = {}
        for ai, name in enumerate(self._names):
            if not self._multi[ai]:
                if tag_ev is not None and ai in tag_ev.single:
                    out[name] = self._single(ai, tag_ev.single[ai], self.tag_confidence, ai in mixed)
                elif cap_ev is not None and ai in cap_ev.single:
                    out[name] = self._single(ai, cap_ev.single[ai], self.caption_confidence, ai in mixed)
                else:
                    out[name] = None
                continue
            layers = []  # lowest priority first
            if cap_ev is not None:
                layers.append((cap_ev.negated.get(ai), self.caption_negated))
                layers.append((cap_ev.present.get(ai), self.caption_present))
            if tag_ev is not None:
                layers.append((tag_ev.negated.get(ai), self.tag_negated))
                layers.append((tag_ev.present.get(ai), self.tag_present))
            mentioned = any(labels for labels, _ in layers)
            if not mentioned and not well_tagged:
                out[name] = None
                continue
            vec = [self.tag_absent if well_tagged else self.unknown] * self._sizes[ai]
            for labels, p in layers:
                if labels:
                    for li in labels:
                        vec[li] = p
            out[name] = vec
        return out

    # -- execution --------------------------------------------------------------------------
    @staticmethod
    def texts(tags: Any, caption: Any, prompt: Any = None, kind: Any = None) -> tuple[Any, Any, "str | None"]:
        """``(tags, caption, tags_from)`` a row is read from: its own tags/caption when either has text, else its
        embedded ``prompt`` (as tags, or as the caption when it is prose), else nothing."""
        has_tags, has_caption = _has_text(tags), _has_text(caption)
        if has_tags or has_caption:
            return tags, caption, "tags+caption" if has_tags and has_caption else "tags" if has_tags else "caption"
        if isinstance(prompt, str) and prompt.strip():
            origin = kind if isinstance(kind, str) and kind else "prompt"
            return (None, prompt, origin) if reads_as_prose(prompt) else (prompt, None, origin)
        return None, None, None

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        n = len(next(iter(batch.values()))) if batch else 0
        none = [None] * n
        columns = [batch.get(c) or none for c in self.input_columns()]
        probs, origins = [], []
        for t, c, p, k in zip(*columns):
            t, c, origin = self.texts(t, c, p, k)
            probs.append(self.row(t, c))
            origins.append(origin)
        return {self.output_column: probs, TAGS_FROM: origins}


def _has_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    return isinstance(value, (list, tuple)) and any(isinstance(v, str) and v.strip() for v in value)


def alias_table(
    schema: "Schema | str | None", skip_counting: Iterable[int] = ()
) -> dict[str, tuple[tuple[int, int], ...]]:
    """The schema's alias table: tag (or phrase in tag form) -> ``((attribute index, label index), ...)``.

    Built from every label's ``tags`` and ``phrases``; the one table the tag parser and the tagger source
    (:mod:`charattr_hf.sources.tagger`) read. Counting tags (``1girl``, ``solo``, ...) listed under the attributes
    whose indices are in ``skip_counting`` are left out (the tag parser interprets them instead)."""
    schema = load_schema(schema)
    skip = set(skip_counting)
    aliases: dict[str, list[tuple[int, int]]] = {}
    for ai, attr in enumerate(schema.attributes):
        for li, label in enumerate(attr.labels):
            keys = list(label.tags) + [_phrase_key(p) for p in label.phrases]
            for key in keys:
                if not key:
                    continue
                if ai in skip and (parse_count_tag(key) or key in _COUNT_FLAGS):
                    continue
                entry = aliases.setdefault(key, [])
                if (ai, li) not in entry:
                    entry.append((ai, li))
    return {k: tuple(v) for k, v in aliases.items()}


def _phrase_key(phrase: str) -> str:
    """A schema phrase in tag form: words joined with underscores (``silver hair`` -> ``silver_hair``)."""
    return "_".join(w for seg in caption_segments(phrase) for w in seg)


def _negation_mask(seg: Sequence[str]) -> list[bool]:
    """Which words of a clause fall in the scope of a negation cue (the next few words, up to a
    conjunction such as "and"/"but"/"with")."""
    mask = [False] * len(seg)
    until = -1
    for idx, word in enumerate(seg):
        if word in _NEGATION_CUES:
            until = idx + _NEGATION_WINDOW
            continue
        if word in _SCOPE_BREAKERS:
            until = -1
        elif idx <= until:
            mask[idx] = True
    return mask


def _caption_counts(seg: Sequence[str], negated: Sequence[bool], counter: _Counter) -> None:
    """Person nouns and their number words in one clause ("two girls and a boy")."""
    for idx, word in enumerate(seg):
        if word in _SOLO_WORDS:
            counter.solo = True
            continue
        if word[:1].isdigit() and counter.add_tag(word):  # "1girl" written in a caption
            continue
        hit = _PERSON_NOUNS.get(word)
        if hit is None or negated[idx]:
            continue
        kind, plural = hit
        number: "tuple[int, bool] | None" = None
        definite = False
        for back in range(idx - 1, max(-1, idx - 4), -1):
            w = seg[back]
            if w == "of":  # "a group of girls", "a pair of boys"
                continue
            if w in _NUMBER_WORDS:
                number = _NUMBER_WORDS[w]
                break
            if w in _DEFINITE:
                definite = True
                break
            if w in _PERSON_NOUNS or w in _SCOPE_BREAKERS or w in _GAP_BLOCKERS:
                break
        if plural:
            if number is not None and (number[0] >= 2 or not number[1]):
                counter.add(kind, max(number[0], 2), number[1])
            else:
                counter.add(kind, 2, False)
        elif number is not None and number[1] and not definite:
            counter.add(kind, 1, True)
        else:
            counter.ref.add(kind)
