"""BLIP-2 question answering as an evidence source: ``probs_blip2``.

For every image and every attribute of the schema the model is asked a question in the BLIP-2 VQA format
(``"Question: what color is the character's hair? Answer:"``), and the candidate answers are *scored*, not
generated:

- single-label attribute: one question; each label's answer text (``label.text``) is scored by the language
  model's log-likelihood given image + question, and a softmax over the labels gives the distribution;
- multi-label attribute: one yes/no question per label (``"is the character wearing glasses?"``); the
  presence probability is ``P(yes) / (P(yes) + P(no))``.

Scoring instead of free generation gives a probability for every label (generation gives one string, which
may not match any label), and it is deterministic.

How the answers are scored, and why it is cheap
-----------------------------------------------
An answer is scored by its full token sequence, ``" " + text + answer_suffix``, where the suffix (default a
newline, the end-of-answer marker BLIP-2 OPT was trained with) makes the score the probability that the
answer is *exactly* that text. Full-sequence scoring is exact where labels share a prefix: ``" a shirt"``
and ``" a dress"`` share their first token, and ``"black"`` is a prefix of ``"black and white"``; first-token
scoring would tie the first pair and, without the end marker, the second would always favour the shorter
text.

All questions and answers of the schema are laid out as a token trie (shared prefixes such as
``"</s>Question: what color is the character's"`` and ``" a"`` appear once) and packed, behind the image's
query embeddings, into **one** language-model sequence per image. A 4-D attention mask lets each trie node see
only the image and its own ancestors, and its position id is its depth in its own branch, so every answer
is scored exactly as if its question were asked alone (the tests check this against a plain forward pass),
while each shared token is computed once. The vision encoder and Q-Former run once per image; the language
model runs once per image batch and pack (one pack for the default schema), and only the positions that
predict an answer token are projected onto the vocabulary (``logits_to_keep``).

Inputs: a pixel column written by the shared decode stage (uint8 RGB, ``pixel_shape`` = (H, W), the processor's
image size, see :meth:`Blip2Source.expected_pixel_shape` and :meth:`Blip2Source.pixel_spec`), so that BLIP-2
sees each image exactly as decoded for every other source (size limit, EXIF, 16-bit, transparency, remote
files): the decode stage is the only code that reads images.

The checkpoint's files are found by :func:`charattr_hf.loading.resolve_model` (a folder, or a Hub repository at the
commit its revision points to; safetensors weights only).

A row whose pixels cannot be used keeps everything the other sources found: its ``probs_blip2`` is null and its
``flags`` gain ``"blip2_failed"`` (with no ``flags`` column, standalone, the message goes to ``error``).

Only BLIP-2 checkpoints with a decoder-only language model (the OPT family) are supported; the Flan-T5
variants are refused with a clear error.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ...schema import Attribute, Schema, load_schema, probs_column
from ...stages.base import ERROR, FLAGS, Stage
from ...stages.pixels import PixelSpec

logger = logging.getLogger(__name__)

__all__ = ["Blip2Source", "Question", "DEFAULT_MODEL_ID", "DEFAULT_PROMPT", "DEFAULT_QUESTIONS", "default_question"]

DEFAULT_MODEL_ID = "Salesforce/blip2-opt-2.7b"
#: The VQA prompt format BLIP-2 was evaluated with; "{}" takes the question.
DEFAULT_PROMPT = "Question: {} Answer:"

#: Questions for the attributes of the shipped schema. Multi-label questions take each label's text in "{}".
DEFAULT_QUESTIONS: dict[str, str] = {
    "character_count": "how many characters are in the picture?",
    "gender_presentation": "is the character a girl or a boy?",
    "age_group": "how old does the character look?",
    "hair_color": "what color is the character's hair?",
    "hair_length": "how long is the character's hair?",
    "eye_color": "what color are the character's eyes?",
    "clothing": "is the character wearing {}?",
    "top_color": "what color are the character's clothes?",
    "accessories": "is the character wearing {}?",
    "expression": "what is the character's facial expression?",
    "art_style": "what kind of picture is this?",
}


def default_question(attr: Attribute) -> str:
    """The question asked when neither the caller nor the schema gives one.

    Known attribute names use :data:`DEFAULT_QUESTIONS`; others get a generic question built from the name
    (single-label) or a generic presence question (multi-label).
    """
    if attr.name in DEFAULT_QUESTIONS:
        return DEFAULT_QUESTIONS[attr.name]
    if attr.multi_label:
        return "does the picture show {}?"
    return f"what is the character's {attr.name.replace('_', ' ')}?"


@dataclass(frozen=True)
class Question:
    """One prompt put to the model, with the answers it is scored on.

    ``label`` is None for a single-label attribute (the answers are the label texts, in label order) and the
    label index for one yes/no question of a multi-label attribute (the answers are ``(yes, no)``).
    """

    attribute: str
    label: int | None
    prompt: str
    answers: tuple[str, ...]


# ---------------------------------------------------------------------------------------------- process caches
# Loaded models, processors and token layouts live here, keyed by what determines them, so that the stage
# object itself stays small and picklable and a model is loaded once per process.
_LOCK = threading.Lock()
_PROCESSORS: dict[tuple, Any] = {}
_MODELS: dict[tuple, Any] = {}
_PLANS: dict[tuple, "_Plan"] = {}


class Blip2Source(Stage):
    """Evidence source ``probs_blip2`` from BLIP-2 visual question answering (see the module docstring).

    Args:
        schema: the attribute schema (a :class:`Schema`, a shipped name or a YAML path).
        model_id: a Hub id or a local folder with a BLIP-2 checkpoint and its processor.
        revision: the Hub revision (a commit hash pins the annotations); None for the default branch.
        questions: per-attribute question overriding the schema's ``question`` and the defaults; a multi-label
            question must contain "{}" (each label's text), a single-label one must not. None or "" turns the
            attribute off (its column entry is None).
        prompt_template: the VQA prompt; "{}" takes the question.
        answer_suffix: appended to every answer before scoring (the end-of-answer marker); "" scores the
            answer as a prefix of whatever the model would say.
        yes, no: the answers compared for multi-label presence questions.
        length_normalize: score answers by mean instead of total token log-likelihood (favours long label
            texts less, at the cost of no longer being the probability of the answer string).
        pixel_shape: (H, W) of the pixel column; None: the processor's size.
        pixels_column: the decode stage's column of :meth:`pixel_spec` (default: the spec's own name).
        dtype: "float16", "bfloat16" or "float32"; default float16 with CUDA, float32 without.
        batch_size: images per forward pass (memory only; does not change the numbers).
        max_pack_tokens: upper bound on the text tokens packed into one language-model sequence; a schema
            whose questions and answers need more is split into several packs (one forward pass each).
    """

    name = "blip2"
    isolate_rows = False  # image read failures are handled per row inside; anything else is systemic
    cpu_bound = False

    def __init__(
        self,
        schema: "Schema | str | None" = None,
        model_id: str = DEFAULT_MODEL_ID,
        revision: str | None = None,
        questions: Mapping[str, str | None] | None = None,
        prompt_template: str = DEFAULT_PROMPT,
        answer_suffix: str = "\n",
        yes: str = "yes",
        no: str = "no",
        length_normalize: bool = False,
        pixel_shape: Sequence[int] | None = None,
        dtype: str | None = None,
        batch_size: int = 16,
        max_pack_tokens: int = 1024,
        pixels_column: str | None = None,
    ):
        import torch  # imported here so that building a stage description never needs torch at import time

        self.schema = load_schema(schema)
        self.model_id = str(model_id)
        self.revision = revision
        if "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' for the question, got {prompt_template!r}")
        self.prompt_template = prompt_template
        self.answer_suffix = answer_suffix or ""
        self.yes, self.no = str(yes), str(no)
        if not self.yes.strip() or not self.no.strip() or self.yes == self.no:
            raise ValueError(f"yes/no answers must be two different non-empty strings, got {yes!r}, {no!r}")
        self.length_normalize = bool(length_normalize)
        if pixel_shape is not None:
            if len(pixel_shape) != 2 or min(int(s) for s in pixel_shape) <= 0:
                raise ValueError(f"pixel_shape must be (height, width), got {pixel_shape!r}")
            pixel_shape = (int(pixel_shape[0]), int(pixel_shape[1]))
        self.pixel_shape: tuple[int, int] | None = pixel_shape  # type: ignore[assignment]
        self.pixels_column = pixels_column
        self.dtype = dtype or ("float16" if torch.cuda.is_available() else "float32")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {self.dtype!r}")
        if batch_size < 1 or max_pack_tokens < 1:
            raise ValueError("batch_size and max_pack_tokens must be positive")
        self.batch_size = int(batch_size)
        self.max_pack_tokens = int(max_pack_tokens)
        self.questions: dict[str, str | None] = self._resolve_questions(questions or {})
        if not any(self.questions.values()):
            raise ValueError("no attribute has a question: nothing for BLIP-2 to answer")

    # ------------------------------------------------------------------------------------------ description
    def _resolve_questions(self, overrides: Mapping[str, str | None]) -> dict[str, str | None]:
        unknown = set(overrides) - set(self.schema.attribute_names)
        if unknown:
            raise KeyError(
                f"questions for unknown attributes {sorted(unknown)}; the schema has {self.schema.attribute_names}"
            )
        out: dict[str, str | None] = {}
        for attr in self.schema:
            if attr.name in overrides:
                q = overrides[attr.name]
            else:
                # An optional ``question`` on the schema's attribute ("" turns the attribute off).
                q = getattr(attr, "question", None)
                if q is None:
                    q = default_question(attr)
            q = (q or "").strip() or None
            if q is not None:
                if attr.multi_label and "{}" not in q:
                    raise ValueError(
                        f"question for multi-label attribute {attr.name!r} must contain '{{}}' (each label's "
                        f"text, asked as a yes/no question), got {q!r}"
                    )
                if not attr.multi_label and "{}" in q:
                    raise ValueError(
                        f"question for single-label attribute {attr.name!r} is asked once and answered by the "
                        f"label texts; it must not contain '{{}}', got {q!r}"
                    )
            out[attr.name] = q
        return out

    def queries(self) -> list[Question]:
        """Every prompt the model is asked per image, with its candidate answers (in schema order)."""
        out: list[Question] = []
        for attr in self.schema:
            q = self.questions[attr.name]
            if q is None:
                continue
            if attr.multi_label:
                for i, label in enumerate(attr.labels):
                    prompt = self.prompt_template.replace("{}", q.replace("{}", label.text))
                    out.append(Question(attr.name, i, prompt, (self.yes, self.no)))
            else:
                prompt = self.prompt_template.replace("{}", q)
                out.append(Question(attr.name, None, prompt, tuple(label.text for label in attr.labels)))
        return out

    def params(self) -> dict:
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "dtype": self.dtype,
            "schema": self.schema.fingerprint(),
            "questions": self.questions,
            "prompt_template": self.prompt_template,
            "answer_suffix": self.answer_suffix,
            "yes_no": [self.yes, self.no],
            "length_normalize": self.length_normalize,
            "pixel_shape": list(self.pixel_shape) if self.pixel_shape else None,
        }

    def features(self) -> dict:
        return {probs_column(self.name): self.schema.probs_feature()}

    def input_columns(self) -> list[str]:
        return [self.pixels_column or self.pixel_spec().column]

    def pixel_spec(self) -> PixelSpec:
        """What the decode stage must write for this source: the processor's size, squashed (as the processor
        resizes) with its filter; normalised by the processor on the device side."""
        proc = self.processor().image_processor
        resample = getattr(proc, "resample", None)
        names = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
        return PixelSpec(self.pixel_shape or self.expected_pixel_shape(), "squash",
                         names.get(int(resample) if resample is not None else 3, "bicubic"),
                         mean=tuple(getattr(proc, "image_mean", None) or (0.0, 0.0, 0.0)),
                         std=tuple(getattr(proc, "image_std", None) or (1.0, 1.0, 1.0)))

    def _files(self) -> Any:
        """The checkpoint's folder (a Hub repository fetched once, at its revision's commit)."""
        from ...loading import ModelRef, resolve_model

        ref = ModelRef.parse(self.model_id, self.revision, what="BLIP-2 model", flag="--blip2")
        return resolve_model(ref, required=("config.json", ("model.safetensors", "model.safetensors.index.json")),
                             optional=("*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "vocab*",
                                       "merges*", "spiece*")).folder

    # ------------------------------------------------------------------------------------------ loading
    def _model_key(self) -> tuple:
        return (self.model_id, self.revision, self.dtype, str(self._device()))

    @staticmethod
    def _device():
        from ...distributed import get_state

        return get_state().device

    def processor(self) -> Any:
        """The checkpoint's processor (loaded once per process; no model weights)."""
        key = (self.model_id, self.revision)
        with _LOCK:
            if key not in _PROCESSORS:
                from transformers import AutoProcessor

                proc = AutoProcessor.from_pretrained(self._files(), trust_remote_code=False)
                if not (hasattr(proc, "image_processor") and hasattr(proc, "tokenizer")):
                    raise TypeError(
                        f"{self.model_id!r}: expected a BLIP-2 processor with an image processor and a tokenizer, "
                        f"got {type(proc).__name__}"
                    )
                _PROCESSORS[key] = proc
            return _PROCESSORS[key]

    def expected_pixel_shape(self) -> tuple[int, int]:
        """(H, W) the model takes: what the decode stage should produce in ``_pixels`` for this source."""
        size = self.processor().image_processor.size
        size = size if isinstance(size, Mapping) else vars(size)
        if size.get("height") and size.get("width"):
            return int(size["height"]), int(size["width"])
        if size.get("shortest_edge"):
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        raise ValueError(f"{self.model_id!r}: cannot tell the image size from the processor's size {size}")

    def load(self) -> None:
        try:
            self.setup()
        except NotImplementedError as exc:  # a Flan-T5 checkpoint: the message says what to use instead
            from ...errors import ModelLoadError

            raise ModelLoadError(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 - whatever it is, the model did not load: one clear line
            from ...loading import model_load_error

            raise model_load_error("BLIP-2 model", self.model_id, exc) from exc

    def setup(self) -> None:
        """Load the model, processor and token layout once per process (idempotent)."""
        self._model()
        self._plan()

    def _model(self) -> Any:
        key = self._model_key()
        with _LOCK:
            model = _MODELS.get(key)
        if model is not None:
            return model
        import torch
        from transformers import Blip2ForConditionalGeneration

        self.processor()
        logger.info("loading %s (revision %s, %s) on %s", self.model_id, self.revision, self.dtype, key[-1])
        model = Blip2ForConditionalGeneration.from_pretrained(self._files(), dtype=getattr(torch, self.dtype))
        if not model.config.use_decoder_only_language_model:
            raise NotImplementedError(
                f"{self.model_id!r} uses an encoder-decoder language model ({model.config.text_config.model_type}); "
                "the BLIP-2 source supports the decoder-only (OPT) checkpoints, e.g. Salesforce/blip2-opt-2.7b"
            )
        model = model.to(self._device()).eval()
        with _LOCK:
            return _MODELS.setdefault(key, model)

    def _plan(self) -> "_Plan":
        key = (self.model_id, self.revision, self.fingerprint(), self.max_pack_tokens)
        with _LOCK:
            plan = _PLANS.get(key)
        if plan is None:
            plan = _Plan.build(self.queries(), self.processor().tokenizer, self.answer_suffix, self.max_pack_tokens)
            with _LOCK:
                plan = _PLANS.setdefault(key, plan)
        return plan

    def num_lm_passes(self) -> int:
        """Language-model forward passes per image batch (the number of packs)."""
        return len(self._plan().packs)

    # ------------------------------------------------------------------------------------------ execution
    def process(self, batch: dict[str, list]) -> dict[str, list]:
        import torch

        n = len(next(iter(batch.values()))) if batch else 0
        errors = list(batch.get(ERROR) or [None] * n)
        flags = [list(f or []) for f in batch[FLAGS]] if FLAGS in batch else None
        out: list[dict | None] = [None] * n
        images: list[np.ndarray] = []
        rows: list[int] = []
        failed = 0
        for i in range(n):
            if errors[i]:
                continue
            try:
                images.append(self._row_image(batch, i))
                rows.append(i)
            except Exception as exc:  # noqa: BLE001 - a bad image spoils this source's result for its row only
                failed += 1
                if flags is not None:  # the row keeps what the other sources found
                    flags[i].append(f"{self.name}_failed")
                else:
                    errors[i] = f"{self.name}: cannot read image: {type(exc).__name__}: {exc}"
                if failed == 1:
                    logger.warning("%s: cannot read the image of a row: %s: %s", self.name, type(exc).__name__, exc)
        if rows:
            model, plan = self._model(), self._plan()
            queries = self.queries()
            with torch.inference_mode():
                for start in range(0, len(rows), self.batch_size):
                    chunk = images[start : start + self.batch_size]
                    logp = self._answer_logprobs(model, plan, chunk)  # (n_chunk, n_answers) float64
                    for j, row in enumerate(rows[start : start + self.batch_size]):
                        out[row] = self._to_probs(queries, plan, logp[j])
        result = {probs_column(self.name): out, ERROR: errors}
        if flags is not None:
            result[FLAGS] = flags
        return result

    def _row_image(self, batch: dict[str, list], i: int) -> np.ndarray:
        """Row ``i`` as a uint8 RGB array at the processor's image size."""
        column = self.input_columns()[0]
        pixels = batch.get(column)
        if pixels is None or pixels[i] is None:
            raise ValueError(f"row has no pixels in {column}")
        h, w = self.pixel_shape or self.expected_pixel_shape()
        buf = np.frombuffer(pixels[i], dtype=np.uint8)
        if buf.size != h * w * 3:
            raise ValueError(f"{column} holds {buf.size} bytes, expected {h}x{w}x3 = {h * w * 3}")
        return self._resize(buf.reshape(h, w, 3).copy())  # writable: torch refuses read-only buffers

    def _resize(self, arr: np.ndarray) -> np.ndarray:
        """Resize one image to the model size with the processor's filter (a no-op when already there).

        Done per image, not by the processor on the batch, so that a row's numbers never depend on which
        other rows share its batch.
        """
        target = self.expected_pixel_shape()
        if arr.shape[:2] == target:
            return arr
        from PIL import Image

        resample = getattr(self.processor().image_processor, "resample", None)
        resample = int(resample) if resample is not None else Image.Resampling.BICUBIC
        return np.array(Image.fromarray(arr).resize((target[1], target[0]), resample=resample))

    def _answer_logprobs(self, model: Any, plan: "_Plan", images: list[np.ndarray]) -> np.ndarray:
        """Log-likelihood of every answer of :meth:`queries`, per image: (n_images, n_answers)."""
        import torch

        device = model.device
        proc = self.processor().image_processor
        pixel_values = proc(images, do_resize=False, return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(device=device, dtype=model.dtype)
        prefix = _image_prefix(model, pixel_values)  # (n, Q, D): vision encoder + Q-Former, once per image
        total = torch.empty(len(images), plan.num_answers, dtype=torch.float64)
        for pack in plan.packs:
            total[:, pack.answer_ids] = pack.score(model.language_model, prefix).double().cpu()
        if self.length_normalize:
            total = total / torch.as_tensor(plan.answer_lengths, dtype=torch.float64)
        return total.numpy()

    def _to_probs(self, queries: list[Question], plan: "_Plan", logp: np.ndarray) -> dict[str, list[float] | None]:
        result: dict[str, list[float] | None] = {attr.name: None for attr in self.schema}
        for q, (a0, a1) in zip(queries, plan.answer_slices):
            scores = logp[a0:a1]
            if q.label is None:
                z = np.exp(scores - scores.max())
                result[q.attribute] = [float(v) for v in (z / z.sum()).astype(np.float32)]
            else:
                if result[q.attribute] is None:
                    result[q.attribute] = [0.0] * self.schema[q.attribute].num_labels
                p_yes = 1.0 / (1.0 + np.exp(-(scores[0] - scores[1])))  # P(yes) / (P(yes) + P(no))
                result[q.attribute][q.label] = float(np.float32(p_yes))  # type: ignore[index]
        return result


def _image_prefix(model: Any, pixel_values: Any) -> Any:
    """The language-model input embeddings of the image: vision encoder, Q-Former, projection."""
    feats = model.get_image_features(pixel_values=pixel_values)
    if hasattr(feats, "pooler_output"):  # transformers >= 5: a ModelOutput whose pooler_output is projected
        return feats.pooler_output
    return feats[0] if isinstance(feats, (tuple, list)) else feats


# ---------------------------------------------------------------------------------------------- token layout
class _Pack:
    """Questions and answers laid out as a token trie, scored in one language-model pass per image batch.

    Text nodes come after the image's ``Q`` query embeddings. Node ``i`` attends to the query embeddings and
    to its ancestors and itself; its position id is ``Q + depth``. An answer's log-likelihood is the sum, over
    its tokens, of the log-probability of the token at its parent node.
    """

    def __init__(self, tokens: list[int], parents: list[int], depths: list[int], answer_paths: list[list[int]],
                 answer_ids: list[int]):
        import torch

        self.tokens = torch.tensor(tokens, dtype=torch.long)
        self.depths = torch.tensor(depths, dtype=torch.long)
        n = len(tokens)
        allowed = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            j = i
            while j >= 0:
                allowed[i, j] = True
                j = parents[j]
        self.allowed = allowed
        # Scored tokens: (node whose output predicts it, token id, answer it belongs to)
        pred_nodes, tok_ids, owner = [], [], []
        for k, path in enumerate(answer_paths):
            for node in path:
                pred_nodes.append(parents[node])
                tok_ids.append(tokens[node])
                owner.append(k)
        keep = sorted(set(pred_nodes))
        where = {node: r for r, node in enumerate(keep)}
        self.keep = torch.tensor(keep, dtype=torch.long)
        self.keep_row = torch.tensor([where[p] for p in pred_nodes], dtype=torch.long)
        self.tok_ids = torch.tensor(tok_ids, dtype=torch.long)
        self.owner = torch.tensor(owner, dtype=torch.long)
        self.answer_ids = torch.tensor(answer_ids, dtype=torch.long)
        self._device_cache: dict[tuple, tuple] = {}

    def __len__(self) -> int:
        return int(self.tokens.numel())

    def _on(self, device: Any, dtype: Any, q: int) -> tuple:
        """Mask, positions and indices on ``device`` for ``q`` query embeddings (built once)."""
        import torch

        key = (str(device), dtype, q)
        if key not in self._device_cache:
            n = len(self)
            allowed = torch.zeros(q + n, q + n, dtype=torch.bool)
            allowed[:q, :q] = torch.ones(q, q, dtype=torch.bool).tril()  # query embeddings: causal, as in BLIP-2
            allowed[q:, :q] = True
            allowed[q:, q:] = self.allowed
            bias = torch.zeros(q + n, q + n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
            positions = torch.cat([torch.arange(q), q + self.depths])
            self._device_cache[key] = (
                bias.to(device),
                positions.to(device),
                self.tokens.to(device),
                (q + self.keep).to(device),
                self.keep_row.to(device),
                self.tok_ids.to(device),
                self.owner.to(device),
            )
        return self._device_cache[key]

    def score(self, lm: Any, prefix: Any) -> Any:
        """Log-likelihood of each answer of the pack given each image prefix: (n_images, n_answers_in_pack)."""
        import torch

        n, q, _ = prefix.shape
        bias, positions, tokens, keep, keep_row, tok_ids, owner = self._on(prefix.device, prefix.dtype, q)
        text = lm.get_input_embeddings()(tokens).to(prefix.dtype)
        embeds = torch.cat([prefix, text.unsqueeze(0).expand(n, -1, -1)], dim=1)
        out = lm(
            inputs_embeds=embeds,
            attention_mask=bias[None, None].expand(n, 1, -1, -1),
            position_ids=positions.unsqueeze(0).expand(n, -1),
            use_cache=False,
            logits_to_keep=keep,
        )
        logits = out.logits.float()  # (n, K, V)
        logz = torch.logsumexp(logits, dim=-1)  # (n, K)
        tok_lp = logits[:, keep_row, tok_ids] - logz[:, keep_row]  # (n, scored tokens)
        result = torch.zeros(n, len(self.answer_ids), dtype=torch.float32, device=logits.device)
        return result.index_add_(1, owner, tok_lp)


@dataclass
class _Plan:
    """All packs for a list of questions, and where each question's answers sit in the answer vector."""

    packs: list[_Pack]
    answer_slices: list[tuple[int, int]]
    answer_lengths: list[int]

    @property
    def num_answers(self) -> int:
        return len(self.answer_lengths)

    @classmethod
    def build(cls, queries: list[Question], tokenizer: Any, suffix: str, max_tokens: int) -> "_Plan":
        encoded: list[tuple[list[int], list[list[int]]]] = []
        for q in queries:
            prompt_ids = list(tokenizer(q.prompt).input_ids)
            answers = []
            for a in q.answers:
                ids = list(tokenizer(" " + a + suffix, add_special_tokens=False).input_ids)
                if not ids:
                    raise ValueError(f"answer {a!r} of {q.attribute!r} tokenizes to nothing")
                answers.append(ids)
            encoded.append((prompt_ids, answers))
        # Greedy packing by an upper bound of each question's size (sharing only makes packs smaller).
        groups: list[list[int]] = []
        size = 0
        for k, (prompt_ids, answers) in enumerate(encoded):
            need = len(prompt_ids) + sum(len(a) for a in answers)
            if not groups or size + need > max_tokens:
                groups.append([])
                size = 0
            groups[-1].append(k)
            size += need
        slices, lengths = [], []
        for _, answers in encoded:
            slices.append((len(lengths), len(lengths) + len(answers)))
            lengths += [len(a) for a in answers]
        packs = []
        for group in groups:
            tokens: list[int] = []
            parents: list[int] = []
            depths: list[int] = []
            children: dict[tuple[int, int], int] = {}

            def node(parent: int, tok: int) -> int:
                key = (parent, tok)
                if key not in children:
                    children[key] = len(tokens)
                    tokens.append(tok)
                    parents.append(parent)
                    depths.append(0 if parent < 0 else depths[parent] + 1)
                return children[key]

            paths, ids = [], []
            for k in group:
                prompt_ids, answers = encoded[k]
                end = -1
                for tok in prompt_ids:
                    end = node(end, tok)
                for a, ans in enumerate(answers):
                    cur, path = end, []
                    for tok in ans:
                        cur = node(cur, tok)
                        path.append(cur)
                    paths.append(path)
                    ids.append(slices[k][0] + a)
            packs.append(_Pack(tokens, parents, depths, paths, ids))
        return cls(packs, slices, lengths)
