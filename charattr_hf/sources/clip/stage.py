"""CLIP zero-shot scoring with open_clip: per-attribute probabilities from prompt-ensemble label embeddings.

- The model is loaded lazily, once per process, and kept in a module-level registry, so the stage object
  that ``datasets`` pickles and fingerprints stays small.
- Label embeddings are computed once per (model, schema) and reused for every batch.
- Images come pre-decoded and pre-resized from the shared decode stage (the column of :attr:`ClipZeroShot.pixel_spec`,
  uint8); normalisation runs on the device (4x less host-to-device traffic than float input).
- Images already seen (same sha256, same model, same schema) are read from the :class:`FeatureCache`.
- On CUDA the next micro-batch is prepared on the host while the device computes the current one.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from typing import Any, Sequence

import numpy as np
from datasets import List, Value

from ...cache import FeatureCache
from ...schema import Schema, load_schema, probs_column
from ...stages.base import Stage, code_version, stable_hash
from ...stages.decode import DecodeStage
from .model import ClipSpec, PreprocessConfig, label_embeddings, load_model, preprocess_config

logger = logging.getLogger(__name__)

__all__ = ["ClipZeroShot"]

_REGISTRY: dict[str, Any] = {}


class ClipZeroShot(Stage):
    name = "clip"
    cpu_bound = False
    isolate_rows = False  # uniform tensors in: a failure is never one image's fault

    def __init__(
        self,
        schema: "Schema | str | None",
        spec: ClipSpec,
        batch_size: int = 32,
        precision: str = "auto",
        embedding: bool = False,
        cache: FeatureCache | None = None,
        device: str | None = None,
        pixels_column: str | None = None,
    ):
        self.schema = load_schema(schema)
        self.spec = spec
        self.batch_size = int(batch_size)
        self.precision = precision
        self.embedding = embedding
        self.device = device
        self.preprocess: PreprocessConfig = preprocess_config(spec)
        self.model_fingerprint = spec.fingerprint()
        #: what the model reads, made by the shared decode stage into ``pixels_column``
        self.pixel_spec = self.preprocess.pixel_spec()
        self.pixels_column = pixels_column or self.pixel_spec.column
        self.cache = cache
        if cache is not None and cache.namespace != self.cache_namespace():
            raise ValueError("cache namespace does not match this stage")

    # -- description --------------------------------------------------------------------------
    def params(self) -> dict:
        return {
            "schema": self.schema.fingerprint(),
            "model": self.model_fingerprint,
            "precision": self._precision_name(),
            "preprocess": self.preprocess.__dict__,
            # how the decode stage made the pixels: part of what a cached output depends on
            "pixels": {**self.pixel_spec.geometry(), "decode": DecodeStage.VERSION},
        }

    def cache_namespace(self) -> str:
        """Where cached outputs of this exact model + schema + preprocessing, made by this version of the package,
        live."""
        return f"clip-{stable_hash(code_version(), self.params())}"

    def input_columns(self) -> list[str]:
        return [self.pixels_column, "sha256"]

    @cached_property
    def embed_dim(self) -> int:
        folder = self.spec.local_dir()
        if folder is not None:
            import json

            raw = json.loads((folder / "open_clip_config.json").read_text())
            return int(raw.get("model_cfg", raw)["embed_dim"])
        import open_clip

        return int(open_clip.get_model_config(self.spec.model)["embed_dim"])

    def features(self) -> dict:
        feats: dict = {probs_column("clip"): self.schema.probs_feature()}
        if self.embedding:
            feats["embedding"] = List(Value("float16"), length=self.embed_dim)
        return feats

    def _precision_name(self) -> str:
        if self.precision != "auto":
            return self.precision
        import torch

        cuda = (self.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        return "fp16" if cuda else "fp32"

    # -- model ----------------------------------------------------------------------------------
    def _key(self) -> str:
        return stable_hash(self.params(), self.device)

    def load(self) -> None:
        try:
            self.setup()
        except Exception as exc:  # noqa: BLE001 - whatever it is, the model did not load: one clear line
            from ...loading import model_load_error

            raise model_load_error("CLIP model", self.spec.describe(), exc) from exc

    def setup(self) -> None:
        key = self._key()
        if key in _REGISTRY:
            return
        import torch

        device = self.device
        if device is None:
            from ...distributed import get_state

            device = str(get_state().device)
        model, tokenizer = load_model(self.spec, device, self._precision_name())
        dtype = next(model.parameters()).dtype
        prompt_sets, slices, start = [], {}, 0
        for attr in self.schema:
            sets = [lab.prompts for lab in attr.labels]
            if attr.multi_label:
                sets += [lab.negative_prompts for lab in attr.labels]
            prompt_sets += sets
            slices[attr.name] = (start, start + len(sets))
            start += len(sets)
        text = self._cached_label_embeddings(model, tokenizer, prompt_sets, device)
        text = text.to(device=device, dtype=dtype)
        scale = model.logit_scale.exp().float().item()
        mean = torch.tensor(self.preprocess.mean, device=device, dtype=dtype).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.preprocess.std, device=device, dtype=dtype).view(1, 3, 1, 1) * 255
        _REGISTRY[key] = {
            "model": model,
            "text": text,
            "slices": slices,
            "scale": scale,
            "mean": mean,
            "std": std,
            "device": torch.device(device),
            "dtype": dtype,
        }
        logger.info("loaded %s on %s (%s)", self.spec.describe(), device, dtype)

    def _cached_label_embeddings(self, model, tokenizer, prompt_sets, device):
        """Label embeddings, read from the feature cache folder when an earlier run computed them.

        Encoding every prompt of a schema costs seconds to a minute on CPU for a ViT-B text tower, once per
        process; the file (keyed like the feature cache: model, schema, precision) makes later runs and
        other ranks start at once.
        """
        from safetensors.torch import load_file, save_file

        path = self.cache.directory / "label_embeddings.safetensors" if self.cache is not None else None
        if path is not None and path.is_file():
            try:
                emb = load_file(str(path))["embeddings"]
                if emb.shape[0] == len(prompt_sets):
                    return emb
            except Exception as exc:  # noqa: BLE001 - a damaged file is recomputed
                logger.warning("ignoring unreadable %s: %s", path, exc)
        emb = label_embeddings(model, tokenizer, prompt_sets, device).float().cpu()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
                save_file({"embeddings": emb.contiguous()}, str(tmp))
                os.replace(tmp, path)
            except OSError as exc:  # the cache is an accelerator, never a point of failure
                logger.warning("could not store label embeddings in %s: %s", path, exc)
        return emb

    # -- processing -----------------------------------------------------------------------------
    def _num_probs(self) -> int:
        return sum(a.num_labels for a in self.schema)

    def process(self, batch: dict[str, list]) -> dict[str, list]:
        pixels: Sequence[bytes | None] = batch[self.pixels_column]
        shas: Sequence[str | None] = batch["sha256"]
        errors = batch.get("error") or [None] * len(pixels)
        n = len(pixels)
        todo = [i for i in range(n) if errors[i] is None and pixels[i] is not None]

        cached: dict[str, bytes] = {}
        if self.cache is not None and todo:
            cached = self.cache.get_many(shas[i] for i in todo if shas[i])
        # one forward per distinct image: duplicates within a batch share the result
        first_of: dict[Any, int] = {}
        compute = []
        for i in todo:
            key = shas[i] or ("row", i)
            if key in cached or key in first_of:
                continue
            first_of[key] = i
            compute.append(i)

        computed = self._forward([pixels[i] for i in compute]) if compute else []
        results: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
        fresh: dict[str, bytes] = {}
        for i, res in zip(compute, computed):
            key = shas[i] or ("row", i)
            results[key] = res
            if shas[i]:
                fresh[shas[i]] = self._pack(*res)
        for key, blob in cached.items():
            results[key] = self._unpack(blob)
        if self.cache is not None and fresh:
            self.cache.put_many(fresh)

        probs_out: list[dict | None] = []
        emb_out: list[list | None] = []
        wanted = set(todo)
        for i in range(n):
            res = results.get(shas[i] or ("row", i)) if i in wanted else None
            if res is None:
                probs_out.append(None)
                emb_out.append(None)
                continue
            flat, emb = res
            probs_out.append(self._split(flat))
            emb_out.append(emb.tolist())
        out: dict[str, list] = {probs_column("clip"): probs_out}
        if self.embedding:
            out["embedding"] = emb_out
        return out

    def _split(self, flat: np.ndarray) -> dict[str, list]:
        row, start = {}, 0
        for attr in self.schema:
            row[attr.name] = flat[start : start + attr.num_labels].tolist()
            start += attr.num_labels
        return row

    def _pack(self, flat: np.ndarray, emb: np.ndarray) -> bytes:
        return flat.astype(np.float32).tobytes() + emb.astype(np.float16).tobytes()

    def _unpack(self, blob: bytes) -> tuple[np.ndarray, np.ndarray]:
        k = self._num_probs() * 4
        return np.frombuffer(blob[:k], dtype=np.float32), np.frombuffer(blob[k:], dtype=np.float16)

    def _forward(self, pixel_blobs: list[bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Model outputs for decoded images, in micro-batches; host work overlaps device work on CUDA."""
        import torch

        reg = _REGISTRY[self._key()]
        h, w = self.preprocess.image_size
        cuda = reg["device"].type == "cuda"

        def to_device(blobs):
            arr = np.stack([np.frombuffer(b, dtype=np.uint8) for b in blobs]).reshape(len(blobs), h, w, 3)
            t = torch.from_numpy(arr)
            if cuda:
                t = t.pin_memory().to(reg["device"], non_blocking=True)
            return t

        out: list[tuple[np.ndarray, np.ndarray]] = []
        parts = [pixel_blobs[s : s + self.batch_size] for s in range(0, len(pixel_blobs), self.batch_size)]
        with torch.inference_mode():
            pending = None
            nxt = to_device(parts[0])
            for k in range(len(parts)):
                cur = nxt
                x = cur.permute(0, 3, 1, 2).to(reg["dtype"]).sub_(reg["mean"]).div_(reg["std"])
                img = reg["model"].encode_image(x, normalize=True)
                result = self._scores(img, reg)
                if k + 1 < len(parts):
                    nxt = to_device(parts[k + 1])  # host work while the device runs (CUDA is async)
                if pending is not None:
                    out.extend(_to_numpy(*pending))
                pending = result
            if pending is not None:
                out.extend(_to_numpy(*pending))
        return out

    def _scores(self, img, reg):
        import torch

        logits = reg["scale"] * (img.float() @ reg["text"].float().T)
        parts = []
        for attr in self.schema:
            a, b = reg["slices"][attr.name]
            block = logits[:, a:b]
            if attr.multi_label:
                k = attr.num_labels
                parts.append(torch.sigmoid(block[:, :k] - block[:, k:]))
            else:
                parts.append(torch.softmax(block, dim=-1))
        return torch.cat(parts, dim=1), img


def _to_numpy(probs, emb) -> list[tuple[np.ndarray, np.ndarray]]:
    p = probs.float().cpu().numpy()
    e = emb.float().cpu().numpy()
    return [(p[i], e[i]) for i in range(p.shape[0])]
