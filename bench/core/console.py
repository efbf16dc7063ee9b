"""Shared rich consoles (results on stdout, progress and errors on stderr) and progress bars.

Text from users (paths, card contents, error messages, run labels) is never read as rich markup:
``say`` escapes the values it fills into a markup template, ``error`` prints a message as plain
text, and progress labels and fields are rendered without markup. Build table cells from user text
as ``rich.text.Text`` (or pass them through ``escape``).
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

__all__ = ["console", "err_console", "error", "escape", "progress", "say"]


def _width() -> int | None:
    """Rich assumes 80 columns when output is not a terminal; tables need more than that."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140


console = Console(width=_width())
err_console = Console(stderr=True)


def say(template: str, *values: object, to: Console | None = None) -> None:
    """Print ``template`` (rich markup written by the project, ``{}`` placeholders) with
    ``values`` filled in escaped, so no value is ever interpreted as markup."""
    text = template.format(*(escape(str(v)) for v in values))
    (to or console).print(text, highlight=False, soft_wrap=True)


def error(message: str, label: str = "error:") -> None:
    """``label`` in bold red, then ``message`` as plain text, on stderr."""
    err_console.print(
        Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True
    )


def progress(*extra: str) -> Progress:
    """A progress bar with count, elapsed time and ETA; ``extra`` names task fields to show.
    Descriptions and fields are shown as plain text."""
    fields = [TextColumn(f"{{task.fields[{name}]}}", markup=False) for name in extra]
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
