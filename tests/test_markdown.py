"""The one Markdown table helper."""

import pytest

from charattr_hf.markdown import format_cell, markdown_table


def test_table_layout_alignment_and_cells():
    text = markdown_table(["name", "n", "score"], [["a|b", 3, 0.12345], ["c", None, 1.0]], align="lrr")
    assert text.splitlines() == [
        "| name | n | score |",
        "|---|---:|---:|",
        "| a\\|b | 3 | 0.123 |",  # a pipe inside a cell cannot split the row
        "| c | - | 1.000 |",
    ]


def test_short_rows_are_padded_and_options_apply():
    text = markdown_table(["a", "b", "c"], [["x"]], align="c", digits=1, missing="")
    assert text.splitlines()[1:] == ["|:---:|:---:|:---:|", "| x |  |  |"]
    assert format_cell(2.25, digits=1) == "2.2" and format_cell("", missing="?") == ""


@pytest.mark.parametrize(
    "header, rows, align, message",
    [([], [], None, "at least one column"), (["a"], [[1, 2]], None, "2 cells for 1 columns"),
     (["a"], [], "lr", "2 letters for 1 columns"), (["a"], [], "x", "l, r or c")],
)
def test_bad_tables_are_refused(header, rows, align, message):
    with pytest.raises(ValueError, match=message):
        markdown_table(header, rows, align=align)
