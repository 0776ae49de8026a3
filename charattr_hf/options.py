"""The options of an annotation run, as dataclasses: the library takes them as they are and the recipes parse
them from the command line and YAML (:mod:`charattr_hf.cli`): each ``field(metadata={"help": ...})`` is one
option, written once. This module imports nothing heavy, so ``--help`` is fast.

- :class:`InputSpec`: where the images come from and which columns mean what (``charattr_hf.inputs``).
- :class:`~charattr_hf.sources.PipelineOptions`: sources, schema, fusion (:class:`~charattr_hf.sources.SharedOptions`)
  and every built-in source's options, assembled by the sources' registry (``charattr_hf.pipeline``).
- :class:`RunOptions`: output folder, chunks, workers, progress (``charattr_hf.api.annotate_to_disk``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .sources import PipelineOptions, SharedOptions
from .sources.clip import REAL_MODEL_HINT

__all__ = ["InputSpec", "PipelineOptions", "SharedOptions", "RunOptions", "DEMO_MODEL_WARNING", "DEMO_TAGGER_WARNING",
           "REAL_MODEL_HINT", "demo_warnings"]

DEMO_MODEL_WARNING = (
    "the demo model (--model demo, the default) was trained only on synthetic drawings and its labels on real "
    f"images are confident nonsense; for real images use a real CLIP checkpoint, e.g. {REAL_MODEL_HINT}"
)
DEMO_TAGGER_WARNING = (
    "the demo tagger (--tagger demo) was trained only on synthetic drawings and its tags on real images are "
    "confident nonsense; for real images use a real WD tagger, e.g. --tagger SmilingWolf/wd-vit-tagger-v3"
)


def demo_warnings(options: "SharedOptions", sources: Sequence[str] | None = None) -> list[str]:
    """The warnings owed to whoever reads labels of real images made by the shipped demo models in ``options``
    (the demo CLIP and the demo tagger know only the synthetic drawings they were trained on); ``sources``: the
    sources that run (default: as if each named model ran)."""
    out = []
    if getattr(options, "model", None) == "demo" and (sources is None or "clip" in sources):
        out.append(DEMO_MODEL_WARNING)
    if getattr(options, "tagger", None) == "demo" and (sources is None or "tagger" in sources):
        out.append(DEMO_TAGGER_WARNING)
    return out


@dataclass
class InputSpec:
    """Where the images come from and which columns mean what."""

    dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Images to annotate: a local image folder, Parquet/Arrow file(s) or folder, a folder saved with "
            "save_to_disk, or a Hub dataset id. Default: the embedded synthetic sample."
        },
    )
    split: str = field(default="train", metadata={"help": "Split to annotate."})
    config: Optional[str] = field(
        default=None, metadata={"help": "Config (subset) name of a Hub dataset.", "flag": "dataset_config"}
    )
    revision: Optional[str] = field(
        default=None, metadata={"help": "Revision (branch, tag, commit) of a Hub dataset.", "flag": "dataset_revision"}
    )
    image_column: str = field(default="image", metadata={"help": "Column holding images (or paths/bytes)."})
    tags_column: Optional[str] = field(
        default=None, metadata={"help": "Column of danbooru-style tags. Default: 'tags' or similar when present."}
    )
    caption_column: Optional[str] = field(
        default=None, metadata={"help": "Column of free-text captions. Default: 'caption'/'text' when present."}
    )
    id_column: Optional[str] = field(
        default=None,
        metadata={"help": "Column holding a stable row id. Default: 'id' when present, else the path, else the index."},
    )
    keep_columns: Sequence[str] = field(
        default_factory=tuple,
        metadata={"help": "Extra input columns to copy into the output (truth/style are kept when present)."},
    )
    image_root: Sequence[str] = field(
        default_factory=tuple,
        metadata={"help": "Folders (or URL prefixes) where image files named by the rows may also be read. By "
                  "default a row may only name files inside the input's own folder or Hub repository (a path "
                  "elsewhere is an error row, never read)."},
    )
    read_written_captions: bool = field(
        default=False,
        metadata={"help": "Read the caption files charattr-hf wrote (--write_captions, an export; listed in the "
                  "folder's .charattr-captions.json and not edited since) as a person's tags too. By default they are "
                  "not, so the tagger's own output is never counted twice."},
    )
    streaming: bool = field(
        default=False, metadata={"help": "Stream the input instead of downloading/preparing it first."}
    )
    limit: Optional[int] = field(default=None, metadata={"help": "Annotate only the first N rows.", "min": 0})
    sample_size: int = field(
        default=256, metadata={"help": "Rows of the synthetic sample when no --dataset is given.", "min": 1}
    )
    sample_image_size: int = 64


@dataclass
class RunOptions:
    """Where the output goes and how the work is cut and shared."""

    output_dir: str = field(default="outputs/annotated", metadata={"help": "Where the annotated dataset is written."})
    chunk_size: int = field(default=1024, metadata={"help": "Rows per work unit (the unit of resume).", "min": 1})
    num_proc: Optional[int] = field(
        default=None,
        metadata={"help": "Worker processes for decoding and tag parsing. Default: cores per process.", "min": 1},
    )
    max_shard_rows: int = field(default=100_000, metadata={"help": "Rows per output Parquet file.", "min": 1})
    prefetch: str = field(
        default="auto",
        metadata={
            "help": "Decode the next chunk while the model works on this one: auto (on with a GPU), on or off.",
            "choices": ("auto", "on", "off"),
        },
    )
    torch_threads: int = field(
        default=0, metadata={"help": "torch threads per process on CPU; 0: cores / local processes.", "min": 0}
    )
    quiet: bool = field(default=False, metadata={"help": "No progress bars (none at all, datasets' included)."})

    @property
    def prefetch_flag(self) -> Optional[bool]:
        return {"auto": None, "on": True, "off": False}[self.prefetch]
