"""Terminal tables that never cut a number or a name, whatever the console's width.

Left to itself rich fits a table by wrapping and then cutting cells (``good_…``, ``-0.26…``):
at 80 columns (a CI log, a non-TTY; rich reads COLUMNS) the regression table was unreadable
exactly where it is read. ``print_fitted`` measures the widest cell of every column with
``cell_len`` and prints the first of these layouts in which every cell stays whole:

1. the full table (a header may wrap at its words, never a cell);
2. a reduced table: columns with a ``drop`` rank leave, the highest rank first (one rank
   leaves as a group);
3. stacked records: one block per row, its key columns as the heading and one
   ``header: value`` line per other column, soft-wrapped (a value longer than the terminal is
   folded by the terminal, never cut by us).

Layouts 2 and 3 say so in one dim line that points to the full table (the report, ``--json``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from rich.cells import cell_len
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from gatebench.render.escape import rich_text as escape  # markup literal, no control codes

Justify = Literal["left", "right", "center"]
Layout = Literal["table", "reduced", "records"]


@dataclass(frozen=True)
class Col:
    """One column: its header (rich markup, as the cells), its alignment, and whether it may
    leave a narrow table."""

    header: str
    justify: Justify = "left"
    drop: int = 0          # 0: always shown; > 0: left out when narrow, the highest rank first


@dataclass(frozen=True)
class Fitted:
    """Which layout ``print_fitted`` chose and which columns it showed."""

    layout: Layout
    headers: tuple[str, ...]       # every column of the data
    shown: tuple[str, ...]         # the columns shown (all of them unless "reduced")

    def note(self, where: str) -> str | None:
        """The pointer to the full table; None when the full table was printed."""
        if self.layout == "table":
            return None
        if self.layout == "records":
            return f"one block per row (narrow terminal); the full table is in {where}"
        left_out = [h for h in self.headers if h not in self.shown]
        return (f"{len(self.shown)} of {len(self.headers)} columns (narrow terminal; "
                f"{', '.join(left_out)} left out); the full table is in {where}")


def print_fitted(console: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]], *,
                 title: str = "", where: str | None = None, key_columns: int = 1,
                 show_edge: bool = True) -> Fitted:
    """Print ``rows`` (rich markup cells) as the widest layout that keeps every cell whole.

    ``key_columns``: how many leading columns head a stacked record. ``where``: where the full
    table is; when given, a reduced or stacked layout ends with ``Fitted.note(where)``.
    """
    cells = [[Text.from_markup(cell) for cell in row] for row in rows]
    keep = list(range(len(columns)))
    ranks = sorted({c.drop for c in columns if c.drop > 0}, reverse=True)
    while True:
        widths = _fit(console, columns, cells, keep, show_edge)
        if widths is not None:
            table = Table(title=title or None, title_justify="left", show_edge=show_edge)
            for i, width in zip(keep, widths, strict=True):
                table.add_column(columns[i].header, justify=columns[i].justify, width=width)
            for row in rows:
                table.add_row(*(row[i] for i in keep))
            console.print(table)
            layout: Layout = "table" if len(keep) == len(columns) else "reduced"
            break
        if not ranks:
            _print_records(console, columns, rows, title, key_columns)
            layout, keep = "records", list(range(len(columns)))
            break
        rank = ranks.pop(0)
        keep = [i for i in keep if columns[i].drop != rank]
    fitted = Fitted(layout, tuple(c.header for c in columns),
                    tuple(columns[i].header for i in keep))
    note = fitted.note(where) if where is not None else None
    if note:
        console.print(f"[dim]{escape(note)}[/dim]", soft_wrap=True, highlight=False)
    return fitted


def _fit(console: Console, columns: Sequence[Col], cells: list[list[Text]], keep: list[int],
         show_edge: bool) -> list[int] | None:
    """Column widths (without padding) that keep every cell of ``keep`` whole in the console,
    widened toward unwrapped headers while room is left; None when they cannot fit."""
    need, natural = [], []
    for i in keep:
        widest = max((row[i].cell_len for row in cells), default=0)
        header = Text.from_markup(columns[i].header).plain
        need.append(max(widest, *(cell_len(word) for word in header.split() or [""])))
        natural.append(max(widest, cell_len(header)))
    room = console.width - _table_width(console, need, show_edge)
    if room < 0:
        return None
    widths = list(need)
    for j in sorted(range(len(widths)), key=lambda j: natural[j] - need[j]):
        grow = natural[j] - need[j]
        if 0 < grow <= room:          # a whole header on one line, or left as it wraps
            widths[j] += grow
            room -= grow
    return widths


def _table_width(console: Console, widths: list[int], show_edge: bool) -> int:
    """The printed width of a table with these fixed column widths (padding and borders as
    rich draws them), measured by rich itself on an unconstrained console."""
    table = Table(show_edge=show_edge)
    for width in widths:
        table.add_column(width=width)
    options = console.options.update_width(sum(widths) + 4 * len(widths) + 8)
    return Measurement.get(console, options, table).maximum


def _print_records(console: Console, columns: Sequence[Col], rows: Sequence[Sequence[str]],
                   title: str, key_columns: int) -> None:
    """One block per row: the key columns as the heading, then ``header: value`` lines."""
    if title:
        console.print(Text.from_markup(title, style="italic"))
    for row in rows:
        heading = [row[0], *(f"{columns[i].header} {row[i]}"
                             for i in range(1, min(key_columns, len(columns))))]
        console.print(f"[bold]{' · '.join(heading)}[/bold]", soft_wrap=True, highlight=False)
        for i in range(max(1, key_columns), len(columns)):
            console.print(f"  {columns[i].header}: {row[i]}", soft_wrap=True,
                          highlight=False)
