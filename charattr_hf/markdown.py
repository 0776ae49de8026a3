"""Markdown tables: one helper for every report, summary, benchmark and card that prints one."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["markdown_table", "format_cell"]


def format_cell(value: Any, digits: int = 3, missing: str = "-") -> str:
    """A table cell: ``missing`` for None, floats with ``digits`` decimals, anything else as
    ``str``; a ``|`` inside a cell is escaped so that it cannot split the row."""
    if value is None:
        return missing
    if isinstance(value, float):
        text = f"{value:.{digits}f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(
    header: Sequence[Any],
    rows: Sequence[Sequence[Any]],
    align: str | Sequence[str] | None = None,
    digits: int = 3,
    missing: str = "-",
) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline).

    ``align``: one letter per column, ``l`` (default), ``r`` or ``c``, as a string (``"lrr"``) or a sequence;
    a shorter one is padded with its last letter. Cells are formatted by :func:`format_cell` (``digits``,
    ``missing``); a row shorter than the header is padded with ``missing`` cells, a longer one is an error.
    """
    width = len(header)
    if width == 0:
        raise ValueError("a table needs at least one column")
    letters = list(align or "l")
    if len(letters) > width:
        raise ValueError(f"align has {len(letters)} letters for {width} columns")
    letters += [letters[-1]] * (width - len(letters))
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    unknown = sorted(set(letters) - set(marks))
    if unknown:
        raise ValueError(f"align letters must be l, r or c, got {unknown}")
    lines = ["| " + " | ".join(format_cell(h, digits, missing) for h in header) + " |",
             "|" + "|".join(marks[a] for a in letters) + "|"]
    for i, row in enumerate(rows):
        cells = list(row)
        if len(cells) > width:
            raise ValueError(f"row {i} has {len(cells)} cells for {width} columns")
        cells += [None] * (width - len(cells))
        lines.append("| " + " | ".join(format_cell(c, digits, missing) for c in cells) + " |")
    return "\n".join(lines)
