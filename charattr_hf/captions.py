"""Training captions in the conventions LoRA and fine-tuning trainers read, built one way for ``--write_captions``
and for ``recipes/export.py``.

A caption is one line of tokens joined by ``", "`` (kohya's sd-scripts splits on commas to shuffle and to keep
tokens; diffusers reads the line as it is). :class:`CaptionBuilder` makes it from an annotated row:

* order: the trigger word, the character tags (the tagger's ``tagger_characters``), the rating tag when asked for,
  the tags that carry the schema's attributes (``1girl``, ``blonde_hair``: any alias of a label, and the counting
  tags), then the rest; inside each group the person's own tokens come first (hand-written, in their order), then
  the tagger's by score, then the fused attributes by confidence. ``keep_tokens`` is the number of leading tokens
  the trainer holds in place while it shuffles the rest (sd-scripts' ``--keep_tokens``): the trigger and character
  tags lead so that they are the ones kept;
* sources (``caption_sources``): ``tagger`` (``tagger_tags``/``tagger_characters``), ``person`` (the ``tags`` and
  ``caption`` the data came with, e.g. kohya's ``foo.txt``), ``attributes`` (the fused labels as their first tag:
  ``hair_color = blonde`` -> ``blonde_hair``); ``auto`` takes the tagger and the person, and the attributes for
  rows the tagger did not tag. Tokens are compared in Danbooru's normal form, so a repeated ``long hair`` /
  ``long_hair`` is written once; an attribute tag is left out when another token already says that label
  (``blond hair`` from the person implies ``blonde_hair``); distinct tags are never merged (``long_hair`` drops
  nothing, not even ``very_long_hair``);
* rules (``caption_blacklist``): tags never written (``simple_background``, or ``*_background``) and replacements
  (``{old: new}``, applied first; ``new: ""`` removes), from a comma list or a YAML file;
* form: spaces instead of underscores unless ``underscores`` (WD's kaomoji tags such as ``^_^`` keep theirs, as
  in the WD tagger Space), ``(``/``)`` escaped as ``\\(``/``\\)`` (Stable Diffusion prompt syntax) unless
  ``--no-escape_parentheses``; rating, quality and date tags (``general``, ``masterpiece``, ``highres``) are left
  out unless ``caption_meta``. A caption never holds a newline, NUL or other control character.

:func:`write_captions` writes ``<name>.txt`` beside each image (``<dir>/sub/foo.txt`` for the row ``sub/foo.png``)
and records what it wrote in ``.charattr-captions.json`` (:mod:`charattr_hf.provenance`), so a later annotation of
the folder does not read the toolkit's captions as a person's tags. A caption file a person wrote (or edited
after the toolkit wrote it) is kept unless ``overwrite``; one the toolkit wrote and nobody touched is replaced.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping, Optional, Sequence

from .errors import UserError
from .kohya import clean_text, safe_path_part

__all__ = ["CaptionOptions", "CaptionRules", "CaptionBuilder", "CaptionReport", "check_caption_options",
           "load_caption_rules", "caption_sources", "caption_columns", "caption_name", "read_rows", "write_captions",
           "KAOMOJIS", "CAPTION_SOURCES", "CAPTION_COLUMNS"]

CAPTION_SOURCES = ("tagger", "person", "attributes")
#: Tags whose underscores are part of the face they draw (the WD tagger Space keeps them as they are).
KAOMOJIS = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o",
                      "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif", ".jxl"})
_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")
#: columns a caption is made from (plus the attributes and their confidences)
CAPTION_COLUMNS = ("id", "error", "tagger_tags", "tagger_characters", "tagger_rating", "tags", "caption", "trigger",
                   "class_token")
# groups after the trigger, in caption order
_CHARACTER, _RATING, _ATTRIBUTE, _REST = range(4)
# sources, in order of preference inside a group
_PERSON, _TAGGER, _ATTRIBUTES = range(3)


@dataclass
class CaptionOptions:
    """How captions are built (shared by ``recipes/annotate.py --write_captions`` and ``recipes/export.py``)."""

    trigger: Optional[str] = field(
        default=None,
        metadata={"help": "Trigger word: the first token of every caption. Default: the row's own trigger (from a "
                  "kohya folder name such as 10_trigger class), else none."},
    )
    class_token: Optional[str] = field(
        default=None,
        metadata={"help": "Class word of kohya's folder name <repeats>_<trigger> <class> (sd-scripts' class_tokens). "
                  "Default: the row's own class_token, else none."},
    )
    keep_tokens: int = field(
        default=0,
        metadata={"help": "Leading caption tokens the trainer keeps in place while it shuffles the rest (sd-scripts' "
                  "keep_tokens; written to the export's dataset.toml): the trigger and character tags lead.", "min": 0},
    )
    caption_sources: str = field(
        default="auto",
        metadata={"help": "Where caption tokens come from, comma-separated: tagger (the WD tagger's tags), person "
                  "(the tags/caption the data came with), attributes (the fused labels as tags: blonde_hair from "
                  "hair_color=blonde). auto: tagger and person, plus attributes for rows the tagger did not tag."},
    )
    caption_blacklist: Optional[str] = field(
        default=None,
        metadata={"help": "Tags never written: a comma-separated list (wildcards allowed: *_background) or a YAML "
                  "file with blacklist: [...] and replace: {old: new}."},
    )
    underscores: bool = field(
        default=False, metadata={"help": "Keep the tags' underscores (long_hair); default: spaces (long hair)."}
    )
    escape_parentheses: bool = field(
        default=True,
        metadata={"help": "Write ( and ) as \\( and \\) (Stable Diffusion prompt syntax); on by default, "
                  "--no-escape_parentheses writes them as they are."},
    )
    caption_meta: bool = field(
        default=False,
        metadata={"help": "Keep the rating tag (the tagger's rating) and quality/meta tags (masterpiece, highres...)."},
    )
    attribute_min_confidence: float = field(
        default=0.5,
        metadata={"help": "Lowest confidence of a fused attribute label written as a tag (caption source "
                  "attributes).", "min": 0},
    )
    caption_extension: str = field(
        default=".txt", metadata={"help": "Suffix of the caption files (sd-scripts' caption_extension)."}
    )


@dataclass(frozen=True)
class CaptionRules:
    """``blacklist``: normal-form tags or wildcard patterns; ``replace``: normal-form tag -> new tag ("" removes)."""

    blacklist: tuple[str, ...] = ()
    replace: Mapping[str, str] = field(default_factory=dict)

    def apply(self, key: str) -> str:
        """The tag ``key`` becomes after the rules ("" when it is not written)."""
        key = self.replace.get(key, key)
        if key and any(fnmatch.fnmatchcase(key, pattern) for pattern in self.blacklist):
            return ""
        return key


def _tag_key(text: str) -> str:
    """A tag as the user typed it (``Long Hair``) in normal form (``long_hair``)."""
    return "_".join(clean_text(text).lower().split())


def load_caption_rules(spec: str | None) -> CaptionRules:
    """``--caption_blacklist``: ``a, b, *_background`` or a YAML file (``blacklist: [...]``, ``replace: {old: new}``).
    Raises :class:`UserError` for a file that is not such a mapping."""
    if not spec:
        return CaptionRules()
    path = Path(spec).expanduser()
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file():
        import yaml

        if not path.is_file():
            raise UserError(f"--caption_blacklist {spec}: no such file; give a YAML file or a comma-separated list")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UserError(f"--caption_blacklist {spec}: cannot read it as YAML "
                            f"({str(exc).splitlines()[0]})") from None
        unknown = sorted(set(data) - {"blacklist", "replace"}) if isinstance(data, Mapping) else None
        if unknown is None or unknown:
            raise UserError(f"--caption_blacklist {spec}: expected a mapping with blacklist: [tags] and/or "
                            f"replace: {{old: new}}" + (f"; unknown key(s) {unknown}" if unknown else ""))
        blacklist, replace = data.get("blacklist") or [], data.get("replace") or {}
        if isinstance(blacklist, str):
            blacklist = [blacklist]
        if not isinstance(blacklist, list) or not all(isinstance(t, str) for t in blacklist):
            raise UserError(f"--caption_blacklist {spec}: blacklist must be a list of tags")
        if not isinstance(replace, Mapping) or not all(isinstance(k, str) and isinstance(v, (str, type(None)))
                                                       for k, v in replace.items()):
            raise UserError(f"--caption_blacklist {spec}: replace must map tags to tags (old: new; new may be empty)")
        rules = {_tag_key(k): _tag_key(v or "") for k, v in replace.items()}
        if any("," in k or "," in v for k, v in replace.items() if v):
            raise UserError(f"--caption_blacklist {spec}: a replace entry holds a comma; give one tag per side")
    else:
        blacklist, rules = spec.split(","), {}
    return CaptionRules(tuple(k for k in (_tag_key(t) for t in blacklist) if k), {k: v for k, v in rules.items() if k})


def caption_sources(spec: str) -> set[str] | None:
    """The sources named by ``--caption_sources`` (None for ``auto``). Raises :class:`UserError`."""
    names = [s.strip() for s in str(spec or "auto").split(",") if s.strip()]
    if names == ["auto"]:
        return None
    bad = [n for n in names if n not in CAPTION_SOURCES]
    if bad or not names:
        raise UserError(f"--caption_sources {spec}: unknown source(s) {bad or names}; give auto or a comma-separated "
                        f"list of {', '.join(CAPTION_SOURCES)}")
    return set(names)


def check_caption_options(options: CaptionOptions) -> None:
    """Everything about ``options`` that can be checked before any work. Raises :class:`UserError`."""
    for flag in ("trigger", "class_token"):
        value = getattr(options, flag)
        if value is None:
            continue
        if not clean_text(value) or clean_text(value) != str(value).strip():
            raise UserError(f"--{flag} {value!r}: give a word or phrase of printable characters on one line")
        if "," in value:
            raise UserError(f"--{flag} {value!r}: a comma splits it into two caption tokens; give it without commas")
        if not safe_path_part(value):
            raise UserError(f"--{flag} {value!r}: it must be usable in a folder name too; use letters or digits")
    if not _EXTENSION.match(options.caption_extension or "") or options.caption_extension.lower() in _IMAGE_SUFFIXES:
        raise UserError(f"--caption_extension {options.caption_extension!r}: give a suffix such as .txt or .caption")
    if options.keep_tokens < 0:
        raise UserError(f"--keep_tokens must be >= 0, got {options.keep_tokens}")
    caption_sources(options.caption_sources)
    load_caption_rules(options.caption_blacklist)


def _label_tag(label) -> str | None:
    """The tag that writes a label: its first Danbooru tag, else its first phrase in tag form (None: neither)."""
    if label.tags:
        return label.tags[0]
    return _tag_key(label.phrases[0]) if label.phrases else None


def _person_pieces(text: Any) -> list[str]:
    """The tokens a person wrote: a list's items; a comma/newline-separated text's parts; Danbooru's native
    ``1girl long_hair`` form (no comma, an underscore) split at spaces; anything else (a sentence, one tag) whole."""
    if isinstance(text, (list, tuple)):
        return [t for t in text if isinstance(t, str)]
    if not isinstance(text, str) or not text.strip():
        return []
    if "," in text or "\n" in text:
        return re.split(r"[,\n]", text)
    return text.split() if "_" in text else [text]


class CaptionBuilder:
    """Builds the caption of an annotated row (see the module docstring). ``schema``: the annotation's schema (its
    aliases say which tags carry attributes, its labels' tags write the fused attributes); ``None``: no attribute
    group and no attribute source."""

    def __init__(self, options: CaptionOptions | None = None, schema: Any = None):
        self.options = options or CaptionOptions()
        check_caption_options(self.options)
        self.sources = caption_sources(self.options.caption_sources)
        self.rules = load_caption_rules(self.options.caption_blacklist)
        self.aliases: dict[str, tuple[tuple[int, int], ...]] = {}
        self.label_tags: dict[str, tuple[str | None, ...]] = {}
        self.label_index: dict[str, dict[str, int]] = {}
        self.attribute_index: dict[str, int] = {}
        if schema is not None:
            from .schema import load_schema
            from .sources.tags.stage import alias_table

            schema = load_schema(schema)
            self.aliases = alias_table(schema)
            for ai, attr in enumerate(schema.attributes):
                self.attribute_index[attr.name] = ai
                self.label_tags[attr.name] = tuple(_label_tag(label) for label in attr.labels)
                self.label_index[attr.name] = {label.name: li for li, label in enumerate(attr.labels)}

    # -- the pieces ---------------------------------------------------------------------------------------------
    def trigger(self, row: Mapping[str, Any]) -> str | None:
        value = self.options.trigger or row.get("trigger")
        return (clean_text(str(value).replace(",", " ")) or None) if value else None

    def class_token(self, row: Mapping[str, Any]) -> str | None:
        value = self.options.class_token or row.get("class_token")
        return (clean_text(str(value).replace(",", " ")) or None) if value else None

    def person_text(self, row: Mapping[str, Any]) -> str | None:
        """The person's own tags of the row as one text (what a caption file recorded as theirs holds)."""
        tags = row.get("tags")
        if isinstance(tags, (list, tuple)):
            tags = ", ".join(t for t in tags if isinstance(t, str))
        return tags if isinstance(tags, str) and tags.strip() else None

    def _sources_of(self, row: Mapping[str, Any]) -> set[str]:
        if self.sources is not None:
            return self.sources
        tagged = row.get("tagger_tags") is not None or row.get("tagger_characters") is not None
        return {"tagger", "person"} | (set() if tagged else {"attributes"})

    def _person(self, row: Mapping[str, Any]) -> Iterator[tuple[str, bool]]:
        from .sources.tags.stage import split_tags

        for text in (row.get("tags"), row.get("caption")):
            for piece in _person_pieces(text):
                spaced = " " in piece.strip() and "_" not in piece
                for key in split_tags([piece], keep_meta=True):
                    yield key, spaced

    def _attributes(self, row: Mapping[str, Any]) -> list[tuple[float, str, tuple[int, int]]]:
        out = []
        floor = self.options.attribute_min_confidence
        for name, tags in self.label_tags.items():
            value, conf = row.get(name), row.get(f"{name}_confidence")
            if isinstance(value, (list, tuple)):
                pairs = list(zip(value, conf or [None] * len(value)))
            else:
                pairs = [(value, conf)]
            for label, c in pairs:
                li = self.label_index[name].get(label) if isinstance(label, str) else label
                if not isinstance(li, int) or not 0 <= li < len(tags) or tags[li] is None:
                    continue
                c = 1.0 if c is None else float(c)
                if c >= floor:
                    out.append((c, tags[li], (self.attribute_index[name], li)))
        out.sort(key=lambda x: -x[0])
        return out

    # -- the caption --------------------------------------------------------------------------------------------
    def tokens(self, row: Mapping[str, Any]) -> list[str]:
        """The caption's tokens, in order, as written."""
        from .sources.tags.stage import is_meta_tag, parse_count_tag

        sources = self._sources_of(row)
        meta = self.options.caption_meta
        # (group, source, position, key, spaced, implies): the best of each key is kept
        found: list[tuple[int, int, int, str, bool, tuple | None]] = []
        if "person" in sources:
            found += [(_REST, _PERSON, i, key, spaced, None) for i, (key, spaced) in enumerate(self._person(row))]
        if "tagger" in sources:
            chars = row.get("tagger_characters") or []
            found += [(_CHARACTER, _TAGGER, i, str(t), False, None) for i, t in enumerate(chars)]
            found += [(_REST, _TAGGER, i, str(t), False, None) for i, t in enumerate(row.get("tagger_tags") or [])]
            if meta and row.get("tagger_rating"):
                found.append((_RATING, _TAGGER, 0, str(row["tagger_rating"]), False, None))
        if "attributes" in sources:
            found += [(_REST, _ATTRIBUTES, i, key, False, label)
                      for i, (_, key, label) in enumerate(self._attributes(row))]

        found = [(g, s, p, self.rules.apply(k), spaced, label) for g, s, p, k, spaced, label in found]
        # a person's "long hair" is the tag long_hair: written as a tag when anything else names it so
        tags = {k for _, _, _, k, spaced, _ in found if not spaced} | set(self.aliases)
        trigger = self.trigger(row)
        taken = {_tag_key(trigger)} if trigger else set()
        kept = []
        for group, source, pos, key, spaced, label in sorted(found, key=lambda x: x[:3]):
            if not key or key in taken or (group != _RATING and not meta and is_meta_tag(key)):
                continue
            taken.add(key)
            spaced = spaced and key not in tags
            if group == _REST and (key in self.aliases or parse_count_tag(key) is not None):
                group = _ATTRIBUTE
            kept.append((group, source, pos, key, spaced, label))
        # a fused attribute's tag is implied when a tag from elsewhere already says its label
        said = {entry for t in kept if t[5] is None for entry in self.aliases.get(t[3], ())}
        kept = sorted((t for t in kept if t[5] is None or t[5] not in said), key=lambda x: x[:3])
        out = [self._render(trigger, True)] if trigger else []
        out += [self._render(key, spaced) for _, _, _, key, spaced, _ in kept]
        return [t for t in out if t]

    def _render(self, key: str, spaced: bool) -> str:
        text = key
        if key not in KAOMOJIS and (spaced or not self.options.underscores):
            text = key.replace("_", " ")
        if self.options.escape_parentheses:
            text = re.sub(r"(?<!\\)([()])", r"\\\1", text)
        return clean_text(text.replace(",", " "))

    def caption(self, row: Mapping[str, Any]) -> str:
        """The caption: one line, the tokens joined by ``", "``."""
        return ", ".join(self.tokens(row))


# ---------------------------------------------------------------------------------------------------- reading
def read_rows(source: Any, split: str = "train", columns: Sequence[str] | None = None,
              batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """The rows of an annotated dataset (an output folder, a list of Parquet files, a ``datasets.Dataset`` or a list
    of dicts), only ``columns`` where given, with class labels as their names. Streams Parquet in batches."""
    from datasets import ClassLabel, Features, List

    def decoder(features) -> dict[str, tuple[bool, list[str]]]:
        out = {}
        for name, feat in features.items():
            if isinstance(feat, ClassLabel):
                out[name] = (False, feat.names)
            elif isinstance(feat, List) and isinstance(feat.feature, ClassLabel):
                out[name] = (True, feat.feature.names)
        return out

    def decode(rows: list[dict], labels) -> Iterator[dict]:
        for row in rows:
            for name, (multi, names) in labels.items():
                value = row.get(name)
                if value is None:
                    continue
                row[name] = [names[v] if v is not None else None for v in value] if multi else names[value]
            yield row

    if isinstance(source, (str, Path)) or (isinstance(source, list) and source and isinstance(source[0], Path)):
        import pyarrow.parquet as pq

        files = sorted(Path(source, "data").glob(f"{split}-*.parquet")) if isinstance(source, (str, Path)) else source
        if not files:
            raise FileNotFoundError(f"{source}: no data/{split}-*.parquet (an annotated dataset folder?)")
        for f in files:
            pf = pq.ParquetFile(f)
            labels = decoder(Features.from_arrow_schema(pf.schema_arrow))
            names = pf.schema_arrow.names
            wanted = [c for c in columns if c in names] if columns is not None else None
            for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
                yield from decode(batch.to_pylist(), labels)
    elif hasattr(source, "features") and hasattr(source, "select_columns"):
        ds = source.select_columns([c for c in columns if c in source.column_names]) if columns is not None else source
        labels = decoder(ds.features)
        for batch in ds.iter(batch_size=batch_size):
            n = len(next(iter(batch.values()))) if batch else 0
            yield from decode([{k: v[i] for k, v in batch.items()} for i in range(n)], labels)
    else:
        yield from (dict(row) for row in source)


def caption_columns(schema: Any) -> list[str]:
    """The columns :class:`CaptionBuilder` reads for ``schema``'s attributes."""
    out = list(CAPTION_COLUMNS)
    if schema is not None:
        from .schema import load_schema

        for attr in load_schema(schema).attributes:
            out += [attr.name, f"{attr.name}_confidence"]
    return out


# ---------------------------------------------------------------------------------------------------- writing
@dataclass
class CaptionReport:
    written: int = 0
    unchanged: int = 0
    skipped_existing: int = 0
    skipped_rows: int = 0


def caption_name(row_id: str | None, index: int, extension: str = ".txt") -> PurePosixPath:
    """The caption file's path (relative to the output folder) for a row: its id's path with the caption suffix in
    place of an image suffix, every part made safe (no ``..``, no absolute path, nothing outside the folder)."""
    key = str(row_id) if row_id not in (None, "") else f"{index:08d}"
    parts = [safe_path_part(p) for p in PurePosixPath(key.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    parts = [p for p in parts if p] or [f"{index:08d}"]
    name = PurePosixPath(*parts)
    if name.suffix.lower() in _IMAGE_SUFFIXES:
        return name.with_suffix(extension)
    return name.with_name(name.name + extension)


def write_captions(source: Any, out_dir: str | Path, split: str = "train", overwrite: bool = False,
                   options: CaptionOptions | None = None, schema: Any = None,
                   batch_rows: int = 1000) -> CaptionReport:
    """Write a caption file for each row of ``source`` (an annotated dataset folder, a ``datasets.Dataset`` or rows)
    into ``out_dir`` and record them in each folder's manifest (see the module docstring). Rows with an ``error``
    get no file."""
    from .provenance import file_sha256, record_written, written_entry

    options = options or CaptionOptions()
    builder = CaptionBuilder(options, schema)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = CaptionReport()
    used: set[str] = set()
    manifests: dict = {}
    pending: list[tuple[Path, str, str | None]] = []

    def flush() -> None:
        by_folder: dict[Path, dict] = {}
        for path, text, person in pending:
            by_folder.setdefault(path.parent, {})[path.name] = {"sha256": file_sha256(text.encode("utf-8")),
                                                                "person": person}
        for folder, entries in by_folder.items():  # recorded first: a crash leaves entries, never unmarked files
            folder.mkdir(parents=True, exist_ok=True)
            record_written(folder, entries)
            manifests.pop(str(folder), None)
        for path, text, _ in pending:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(text.encode("utf-8"))
            tmp.replace(path)
        report.written += len(pending)
        pending.clear()

    for index, row in enumerate(read_rows(source, split, caption_columns(schema))):
        if row.get("error"):
            report.skipped_rows += 1
            continue
        name = caption_name(row.get("id"), index, options.caption_extension)
        if name.as_posix().casefold() in used:  # two rows, one name: keep both
            name = name.with_name(f"{name.stem}-{index}{options.caption_extension}")
        used.add(name.as_posix().casefold())
        text = builder.caption(row)
        path = out.joinpath(*name.parts)
        if path.exists():
            data = path.read_bytes() if path.is_file() else None
            if data is None:
                report.skipped_existing += 1
                continue
            if data == text.encode("utf-8"):
                report.unchanged += 1
                continue
            # a person's caption (or one they edited since the toolkit wrote it): theirs to keep
            if written_entry(path, data, manifests) is None and not overwrite:
                report.skipped_existing += 1
                continue
        pending.append((path, text, builder.person_text(row)))
        if len(pending) >= batch_rows:
            flush()
    flush()
    return report
