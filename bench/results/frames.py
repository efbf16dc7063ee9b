"""Succeeded runs and their metrics, read from the store into tidy frames for tables and plots.

Each run gets a ``label``: its method name, plus the settings that distinguish it from the same
method's other runs on the same dataset and profile (e.g. ``simclr (init=random)``), so that runs
with different hyperparameters never share a leaderboard row. Replicate seeds share a label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.data.cards import DatasetCard, load_card
from bench.core.errors import BenchError
from bench.core.urls import mask_password
from bench.results.store import ResultStore

# Config entries that make runs different rows; the rest (seed, draw, shots...) vary per replicate.
VARIANT_CONFIG_PATHS = (("init",), ("params",), ("finetune",), ("pretrain", "engine"))
SECTION_KEYS = ("dataset", "profile")


@dataclass(frozen=True)
class Results:
    """Succeeded runs (one row each) and their metric rows, both with a ``label`` column."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    store_url: str  # password masked

    @property
    def empty(self) -> bool:
        return self.runs.empty or self.metrics.empty


def load_results(
    store: ResultStore,
    dataset: str | None = None,
    protocol: str | None = None,
    profile: str | None = None,
) -> Results:
    """Succeeded runs matching the filters (None: all) and their metric rows."""
    runs = store.runs_frame(status="succeeded", dataset=dataset, profile=profile)
    metrics = store.metrics_frame(dataset=dataset, profile=profile, protocol=protocol)
    runs = runs.assign(label=variant_labels(runs)) if not runs.empty else runs.assign(label=[])
    labels = runs.set_index("id")["label"]
    metrics = metrics.assign(label=metrics["run_id"].map(labels))
    return Results(runs=runs, metrics=metrics, store_url=mask_password(store.url))


def require_runs(results: Results, what: str) -> None:
    """BenchError (exit status 2) when nothing matched: there is nothing to tabulate or plot."""
    if results.empty:
        raise BenchError(
            f"no succeeded runs in {results.store_url}{what}: nothing to report. Run "
            "`python -m bench run` first, or point --store at another results store"
        )


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run: the method name, plus ``key=value`` for settings that vary within its section."""
    settings = runs["config"].map(_variant_settings)
    labels = runs["method"].copy()
    for _, group in runs.groupby(["method", *SECTION_KEYS], sort=False):
        varying = _varying_keys([settings[i] for i in group.index])
        if varying:
            for i in group.index:
                shown = ", ".join(f"{k}={settings[i].get(k, '–')}" for k in varying)
                labels[i] = f"{runs.at[i, 'method']} ({shown})"
    return labels


def shots_order(labels: pd.Series | list[str]) -> list[str]:
    """Shots labels sorted numerically, ``all`` last."""
    unique = pd.unique(pd.Series(list(labels), dtype=object))
    return sorted(unique, key=lambda s: (s == "all", int(s) if str(s).isdigit() else 0, str(s)))


def card_for(dataset: str) -> DatasetCard | None:
    """The card of a stored dataset name; None when that card no longer exists."""
    try:
        return load_card(dataset)
    except BenchError:
        return None


def _variant_settings(config: dict[str, Any]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for path in VARIANT_CONFIG_PATHS:
        value: Any = config
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        _flatten(value, ".".join(path), flat)
    return {k.removeprefix("params."): v for k, v in flat.items()}


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}", out)
    else:
        out[prefix] = value if isinstance(value, str) else json.dumps(value)


def _varying_keys(settings: list[dict[str, str]]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({s.get(k) for s in settings}) > 1]
