"""Numbers reported in the literature (``results/reported.csv``), kept apart from measured ones.

One row per reported number: ``source`` (row label: "reported, <source>"), ``citation``, ``table``
(where in the source), ``protocol`` and ``dataset`` (the harness names it is comparable under),
``shots`` (a shots label), ``method`` (as the source names it), ``value`` (a fraction, like the
store) and ``note``. A row is shown only in sections whose protocol matches and whose dataset has
the same card name (``ebc1`` also matches ``ebc1:binary``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.paths import PROJECT_ROOT

REPORTED_CSV = PROJECT_ROOT / "results" / "reported.csv"
COLUMNS = ("source", "citation", "table", "protocol", "dataset", "shots", "method", "value", "note")


def load_reported(path: Path | None = None) -> pd.DataFrame:
    """The reported numbers; an empty frame when the default file is absent."""
    csv = path or REPORTED_CSV
    if not csv.is_file():
        if path is not None:
            raise BenchError(f"reported-results file {csv} does not exist")
        return pd.DataFrame(columns=list(COLUMNS))
    frame = pd.read_csv(csv, dtype={"shots": str}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise BenchError(
            f"{csv}: missing column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}"
        )
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    return frame[list(COLUMNS)]


def reported_for(reported: pd.DataFrame, dataset: str, protocol: str) -> pd.DataFrame:
    """The rows comparable with a section of ``dataset`` (full name) under ``protocol``."""
    base = dataset.partition(":")[0]
    keep = (reported["dataset"] == base) & (reported["protocol"] == protocol)
    return reported[keep].reset_index(drop=True)


def row_label(source: str, method: str) -> str:
    return f"reported, {source}: {method}"
