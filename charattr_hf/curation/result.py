"""What a curation run returns (apart from the module that runs it, so that the card can name it without an
import circle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CurateResult"]


@dataclass
class CurateResult:
    output_dir: Path
    rows: int
    train: int
    quarantine: int
    removed_by: dict[str, int] = field(default_factory=dict)
    groups: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, list[Path]] = field(default_factory=dict)
    #: steps of the config the dataset could not take: (step, why)
    skipped: list[tuple[str, str]] = field(default_factory=list)
