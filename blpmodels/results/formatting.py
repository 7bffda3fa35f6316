"""Text helpers shared by the results' reports: statsmodels tables sized to their contents,
one width for the header and the parameter table, and notes wrapped to that width.

:meth:`blpmodels.results.BLPResults.summary` builds its ``Summary`` with these; they read and
change statsmodels ``SimpleTable`` objects only, never the results.
"""

from __future__ import annotations

import textwrap
from typing import Any

from statsmodels.iolib.summary import Summary

__all__ = ["SUMMARY_WIDTH", "fit_width", "pad_columns", "strip_cells", "table_width", "wrap_notes"]

SUMMARY_WIDTH = 80


def strip_cells(table: Any) -> None:
    """Let a statsmodels SimpleTable size its columns to their contents."""
    for row in table:
        for cell in row:
            cell.data = str(cell.data).strip()
    text = table.output_formats["txt"]
    text.update(colwidths=None, data_fmts=["%s"], stub_fmt="%s")


def fit_width(summary: Summary, limit: int) -> bool:
    """Shrink the summary's tables to at most ``limit`` characters; True when the parameter
    table had to lose its confidence-interval columns to fit."""
    header, params = summary.tables[0], summary.tables[1]
    strip_cells(params)
    params.output_formats["txt"]["colsep"] = "  "
    dropped = False
    if table_width(params) > limit:
        for row in params:
            del row[-2:]
        params._colwidths.clear()  # statsmodels caches the widths of the columns it had
        dropped = True
    strip_cells(header)
    for row in header:
        if len(row) > 2:
            row[2].data = "  " + row[2].data
    # Pad the narrower table so that both share one width (at most the wider's).
    target = max(table_width(params), table_width(header))
    pad_columns(header, target, [1, 3])
    pad_columns(params, target, [0])
    return dropped


def pad_columns(table: Any, target: int, columns: list[int]) -> None:
    """Widen ``columns`` of a table until it is ``target`` characters wide."""
    widths = [max(len(str(row[k])) for row in table.data) for k in range(len(table.data[0]))]
    for _ in range(2):  # the second pass corrects for padding the table itself adds
        spare = target - table_width(table)
        if spare <= 0:
            return
        for position, column in enumerate(columns):
            widths[column] += spare // len(columns) + (position < spare % len(columns))
        table.output_formats["txt"]["colwidths"] = list(widths)


def table_width(table: Any) -> int:
    """Characters in the widest line of a table's text."""
    return max(len(line) for line in table.as_text().splitlines())


def wrap_notes(notes: list[str], width: int) -> list[str]:
    """Notes wrapped to ``width`` columns, continuation lines indented.

    Examples
    --------
    >>> wrap_notes(["one two three", "  four five"], 9)
    ['one two', '  three', '  four', '    five']
    """
    lines: list[str] = []
    for note in notes:
        indent = " " * (len(note) - len(note.lstrip()))
        lines.extend(
            textwrap.wrap(
                note,
                width=width,
                subsequent_indent=indent + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [""]
        )
    return lines
