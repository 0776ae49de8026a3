"""Stable Diffusion prompts: the positive part of a generation-parameters text, and the prompt an image file
carries from the tool that rendered it.

Many character datasets are renders that keep their prompt. What the prompt says is evidence of what the image
shows, but only its positive part: the negative prompt lists what the render was steered *away* from (a render
whose negative prompt says ``sketch`` is not a sketch), and the settings line (``Steps: 30, Sampler: ...``) says
nothing about the picture. This module finds the positive prompt; what a prompt's tags mean is the tag parser's
job (:func:`charattr_hf.sources.tags.stage.split_tags`: weights ``(x:1.2)``, ``{x}``, ``[x]``, escapes ``\\(``,
``<lora:...>``, ``BREAK``, quality and score tags).

Layouts read
------------
:func:`parse_prompt` reads the text layout of AUTOMATIC1111's web UI (also written by Forge, SD.Next, Civitai and
the ComfyUI nodes that imitate it), read the way A1111 reads it back::

    best quality, 1girl, {bikini:1.3}, long_hair          <- positive prompt (one or more lines)
    Negative prompt: {worst quality:1.4}, sketch, ...    <- negative prompt (to the settings line)
    Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: 758691538, Size: 512x768, Model: ...

The last line is the settings line when it has at least three ``key: value`` pairs, one of them ``Steps``; a text
with neither a ``Negative prompt:`` line nor a settings line is a positive prompt as it is. Any tags or caption
text goes through :func:`positive_prompt` (a tags column or ``metadata.jsonl`` that holds the whole block is
common), so a negative prompt never counts as positive evidence.

:func:`embedded_prompt` finds the prompt in an opened image, looking in this order:

==================  ==========================================================================================
kind                where
==================  ==========================================================================================
``a1111``           PNG text chunk ``parameters`` in the layout above (A1111, Forge, SD.Next)
``fooocus``         PNG text chunk ``parameters`` holding Fooocus' JSON (``prompt``, ``negative_prompt``)
``novelai``         PNG text chunks ``Software: NovelAI``, ``Comment`` (JSON: ``prompt``, ``uc`` = negative) and
                    ``Description`` (the prompt, for images whose ``Comment`` has none)
``comfyui``         PNG text chunk ``prompt``: ComfyUI's API graph (see :func:`comfyui_prompts`); in WebP, EXIF
                    ``Model`` (0x0110) ``prompt:{graph}`` as ComfyUI's WebP saver writes it
``a1111``           EXIF ``UserComment`` (0x9286; JPEG, WebP, AVIF), with its 8-byte character-code prefix
                    (``UNICODE`` = UTF-16, ``ASCII``, ``JIS``, or none)
==================  ==========================================================================================

ComfyUI's ``workflow`` chunk (the editor's layout) is not read: the ``prompt`` graph beside it holds the same
nodes with their values. NovelAI's "stealth" metadata hidden in alpha bits, InvokeAI's ``invokeai_metadata`` and
other layouts are not read. A file whose metadata cannot be read (bad JSON, a broken EXIF block) gives no prompt;
reading never raises.

Pure Python and PIL-free (an image is only asked for ``info`` and ``getexif``): safe in the decode workers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

__all__ = [
    "Prompt",
    "parse_prompt",
    "positive_prompt",
    "looks_like_prompt",
    "reads_as_prose",
    "embedded_prompt",
    "comfyui_prompts",
    "PROMPT_COLUMN",
    "PROMPT_KIND_COLUMN",
    "PROMPTS_VERSION",
]

#: Working columns the decode stage writes when asked for prompts: the positive prompt and its kind.
PROMPT_COLUMN = "_prompt"
PROMPT_KIND_COLUMN = "_prompt_kind"
#: Bumped when what this module returns for the same input changes (part of stage fingerprints).
PROMPTS_VERSION = 1
#: Longest prompt kept (characters): a prompt is a few hundred; a text chunk may hold up to a megabyte.
MAX_PROMPT_CHARS = 20_000

_NEGATIVE = "Negative prompt:"
# one ``key: value`` of the settings line; a value is quoted (JSON string) or runs to the next comma (A1111's rule)
_SETTING = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_STEPS = re.compile(r"\d+")


@dataclass(frozen=True)
class Prompt:
    """A generation-parameters text split into its parts. ``negative`` is None when the text has no
    ``Negative prompt:`` line; ``settings`` is empty when it has no settings line."""

    positive: str
    negative: "str | None" = None
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_layout(self) -> bool:
        """Whether the text was a parameters block (a negative prompt or settings were split off)."""
        return self.negative is not None or bool(self.settings)


def _settings(line: str) -> dict[str, str]:
    """The ``key: value`` pairs of A1111's settings line, or ``{}`` when ``line`` is not one (fewer than three
    pairs, or no ``Steps: <number>``: tag lists such as ``artist:x, character:y, copyright:z`` are not)."""
    if "Steps" not in line:
        return {}
    pairs = {k.strip(): v.strip() for k, v in _SETTING.findall(line)}
    if len(pairs) < 3 or not _STEPS.fullmatch(pairs.get("Steps", "")):
        return {}
    return pairs


def parse_prompt(text: str) -> Prompt:
    """Split an A1111-style parameters text into positive prompt, negative prompt and settings (see the module
    docstring); a text in no such layout is all positive."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    settings = _settings(lines[-1])
    if settings:
        lines = lines[:-1]
    positive: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        (negative if in_negative else positive).append(line)
    return Prompt("\n".join(positive).strip(), "\n".join(negative).strip() if in_negative else None, settings)


def looks_like_prompt(text: str) -> bool:
    """Whether ``text`` is a parameters block: it has a ``Negative prompt:`` line or a settings line."""
    if _NEGATIVE not in text and "Steps" not in text:
        return False
    return parse_prompt(text).is_layout


def positive_prompt(text: str) -> str:
    """The positive prompt of a parameters block; any other text as it is. Cheap for text that is not one (two
    substring tests), so every tags and caption text goes through it."""
    if _NEGATIVE not in text and "Steps" not in text:
        return text
    parsed = parse_prompt(text)
    return parsed.positive if parsed.is_layout else text


_PROSE_WORDS = 4


def reads_as_prose(text: str) -> bool:
    """Whether a prompt is written as sentences (``a photo of a girl with long blonde hair standing on a beach``,
    the usual Flux / SDXL style) rather than as a tag list (``1girl, long hair, blonde hair, beach``): most of its
    words stand in comma-separated parts of at least four words. Prose is read as a caption, tags as tags."""
    long_words = total = 0
    for part in re.split(r"[,\n]", text):
        words = len(part.split())
        total += words
        if words >= _PROSE_WORDS:
            long_words += words
    return total > 0 and long_words * 2 > total


# ------------------------------------------------------------------------------------------------ ComfyUI
#: Inputs of a text-encode node that hold prompt text (CLIPTextEncode, ...SDXL, ...Flux, ...SD3, ...).
_TEXT_INPUTS = frozenset({"text", "text_g", "text_l", "clip_l", "clip_g", "t5xxl", "prompt"})
#: Inputs of a node that feeds text into an encoder (string literals, concatenations, primitives).
_STRING_INPUTS = _TEXT_INPUTS | {"string", "value", "text_a", "text_b", "text_c", "text_d", "string_a", "string_b"}


def comfyui_prompts(graph: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``(positive texts, negative texts)`` of a ComfyUI API graph (``{node id: {"class_type", "inputs"}}``; an
    input that is ``[node id, output slot]`` links to another node's output).

    Positive and negative prompts are both ``CLIPTextEncode`` nodes; they differ only by where they lead. The
    graph is followed back from every ``positive`` and ``negative`` input (a sampler's, a guider's, a ControlNet
    node's) through conditioning inputs (``ConditioningCombine``, ``ConditioningSetArea``, ``unCLIPConditioning``,
    ...) to the encoders and into the nodes that give an encoder its text. A node that passes both on
    (``ControlNetApplyAdvanced``) is followed by the output slot the link comes from (0 positive, 1 negative). A
    text reached from a negative input is never positive, even if also reached from a positive one. A graph with
    no ``positive`` input anywhere (Flux's ``BasicGuider``) has every encoder's text not reached from a negative
    input as positive.
    """
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, Mapping)}

    def inputs_of(node_id: str) -> Mapping[str, Any]:
        inputs = nodes[node_id].get("inputs")
        return inputs if isinstance(inputs, Mapping) else {}

    def link(value: Any) -> "tuple[str, int] | None":
        if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and str(value[0]) in nodes:
            return str(value[0]), value[1]
        return None

    def strings(node_id: str, names: frozenset, out: list[str], seen: set) -> None:
        """Text given to a text input: literal strings, and those of the nodes linked to it."""
        for name, value in inputs_of(node_id).items():
            if name not in names:
                continue
            ref = link(value)
            if isinstance(value, str):
                if value.strip():
                    out.append(value.strip())
            elif ref is not None and ref not in seen:
                seen.add(ref)
                strings(ref[0], _STRING_INPUTS, out, seen)

    def follow(ref: "tuple[str, int]", out: list[str], seen: set) -> None:
        """Texts of the encoders that the conditioning output ``ref`` comes from."""
        if ref in seen:
            return
        seen.add(ref)
        node_id, slot = ref
        inputs = inputs_of(node_id)
        both = link(inputs.get("positive")), link(inputs.get("negative"))
        if both[0] is not None and both[1] is not None:
            follow(both[0] if slot == 0 else both[1], out, seen)
            return
        if "TextEncode" in str(nodes[node_id].get("class_type", "")):
            strings(node_id, _TEXT_INPUTS, out, seen)
        for name, value in inputs.items():
            ref_in = link(value)
            if ref_in is not None and ("conditioning" in name or name in ("cond", "positive")):
                follow(ref_in, out, seen)

    positive: list[str] = []
    negative: list[str] = []
    seen_pos: set = set()
    seen_neg: set = set()
    for node_id in nodes:
        inputs = inputs_of(node_id)
        for name, out, seen in (("positive", positive, seen_pos), ("negative", negative, seen_neg)):
            ref = link(inputs.get(name))
            if ref is not None:
                follow(ref, out, seen)
    if not seen_pos:  # no positive input anywhere: every encoder's text that is not negative
        for node_id, node in nodes.items():
            if "TextEncode" in str(node.get("class_type", "")):
                strings(node_id, _TEXT_INPUTS, positive, set())
    negatives = set(negative)
    return _unique(t for t in positive if t not in negatives), _unique(negative)


def _unique(texts: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(texts))


# ------------------------------------------------------------------------------------------------ images
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_EXIF_MODEL = 0x0110


def embedded_prompt(image: Any) -> "tuple[str, str] | None":
    """``(positive prompt, kind)`` of the prompt an opened PIL image carries (see the module docstring for the
    kinds and where each is read), or None. Call it after the image is loaded: PNG text chunks after the pixel
    data are only read then. Never raises; the text is cut at :data:`MAX_PROMPT_CHARS`."""
    try:
        found = _embedded(image)
    except Exception:  # noqa: BLE001 - metadata is the file author's: whatever it holds, the row goes on
        return None
    if found is None:
        return None
    text, kind = found
    text = text.strip()[:MAX_PROMPT_CHARS]
    return (text, kind) if text else None


def _text(value: Any) -> "str | None":
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return value if isinstance(value, str) and value.strip() else None


def _json(value: "str | None") -> Any:
    if not value or value.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


def _embedded(image: Any) -> "tuple[str, str] | None":
    info = getattr(image, "info", None) or {}
    params = _text(info.get("parameters"))
    if params is not None:
        data = _json(params)
        if isinstance(data, dict):
            if isinstance(data.get("prompt"), str):  # Fooocus (metadata_scheme "fooocus")
                return data["prompt"], "fooocus"
        elif data is None:
            return parse_prompt(params).positive, "a1111"
    comment = _json(_text(info.get("Comment")))
    software = _text(info.get("Software")) or ""
    if software.startswith("NovelAI") or (isinstance(comment, dict) and "uc" in comment):
        prompt = comment.get("prompt") if isinstance(comment, dict) else None
        prompt = prompt if isinstance(prompt, str) and prompt.strip() else _text(info.get("Description"))
        if prompt is not None:
            return prompt, "novelai"
    graph = _json(_text(info.get("prompt")))
    if isinstance(graph, dict):
        return "\n".join(comfyui_prompts(graph)[0]), "comfyui"
    if "exif" in info:
        exif = image.getexif()
        model = _text(exif.get(_EXIF_MODEL))
        if model is not None and model.startswith("prompt:"):
            graph = _json(model[len("prompt:"):])
            if isinstance(graph, dict):
                return "\n".join(comfyui_prompts(graph)[0]), "comfyui"
        comment_text = _user_comment(exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT))
        if comment_text is not None:
            return parse_prompt(comment_text).positive, "a1111"
    return None


def _user_comment(value: Any) -> "str | None":
    """EXIF UserComment: an 8-byte character code, then the text. ``UNICODE`` is UTF-16 in either byte order
    (A1111 writes big-endian through piexif; some writers follow the file's byte order), told apart by where
    the zero bytes of ASCII characters fall."""
    if isinstance(value, str):
        return _text(value)
    if not isinstance(value, (bytes, bytearray)) or len(value) <= 8:
        return None
    code, body = bytes(value[:8]), bytes(value[8:])
    if code.startswith(b"UNICODE"):
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", errors="replace")
        else:
            even_zeros = body[0::2].count(0)
            odd_zeros = body[1::2].count(0)
            text = body.decode("utf-16-be" if even_zeros >= odd_zeros else "utf-16-le", errors="replace")
    elif code.startswith(b"JIS"):
        text = body.decode("shift_jis", errors="replace")
    else:  # ASCII, undefined (zeros), or a writer that left the code out: UTF-8 reads all of them
        body = value if not (code.startswith(b"ASCII") or code == b"\0" * 8) else body
        text = bytes(body).decode("utf-8", errors="replace")
    return _text(text.rstrip("\0"))
