"""Shared rich consoles (results on stdout, progress and errors on stderr) and progress bars."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _width() -> int | None:
    """Rich assumes 80 columns when output is not a terminal; tables need more than that."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140


console = Console(width=_width())
err_console = Console(stderr=True)


def progress(*extra: str) -> Progress:
    """A progress bar with count, elapsed time and ETA; ``extra`` names task fields to show."""
    fields = [TextColumn(f"{{task.fields[{name}]}}") for name in extra]
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )
