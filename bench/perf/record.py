"""The JSON record of a ``bench perf`` run: ``<out>/<device-slug>-<YYYY-MM-DD>.json``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def output_path(record: dict[str, Any], out_dir: Path) -> Path:
    return out_dir / f"{slug(record['device'])}-{record['date']}.json"


def write_record(record: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = output_path(record, out_dir)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)
