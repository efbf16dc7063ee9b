"""Succeeded runs and their metrics, read from the store into tidy frames for tables and plots.

Each run gets a ``label``: its method name, plus the settings that distinguish it from the same
method's other runs on the same dataset and profile (e.g. ``simclr (init=random)``), so that runs
with different hyperparameters never share a leaderboard row. Replicate seeds share a label.

Draws are counted by their shot images: a draw whose labeled images are those of an earlier draw
of the same (dataset, split, shots) is the same evidence, so its runs get that earlier draw's id
(``draw``; the stored id stays in ``draw_id``) and are averaged with it as replicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.core.errors import BenchError
from bench.core.urls import mask_password
from bench.data.cards import DatasetCard, load_card
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
    if runs.empty:
        runs = runs.assign(label=[], draw_id=[])
    else:
        runs = runs.assign(label=variant_labels(runs), draw_id=runs["draw"])
        runs = runs.assign(draw=distinct_draws(runs))
    by_id = runs.set_index("id")
    metrics = metrics.assign(
        label=metrics["run_id"].map(by_id["label"]),
        draw_id=metrics["draw"],
        draw=metrics["run_id"].map(by_id["draw"]).fillna(metrics["draw"]).astype(int),
    )
    return Results(runs=runs, metrics=metrics, store_url=mask_password(store.url))


def distinct_draws(runs: pd.DataFrame) -> pd.Series:
    """Per run: the lowest draw id of its (dataset, split, shots) with the same shot images."""
    images = runs["images"].map(lambda stems: "\n".join(sorted(map(str, stems or []))))
    keyed = runs.assign(_images=images)
    first = keyed.groupby(["dataset", "split", "shots_label", "_images"])["draw"].transform("min")
    return first.astype(int)


def repeated_draws(runs: pd.DataFrame) -> list[str]:
    """'split, N shots: draw 3 = draw 1' for every stored draw counted as an earlier one."""
    moved = runs[runs["draw"] != runs["draw_id"]]
    pairs = moved.drop_duplicates(["dataset", "split", "shots_label", "draw_id"])
    return [
        f"{r.split}, {shots_text(r.shots_label)}: draw {r.draw_id} = draw {r.draw}"
        for r in pairs.sort_values(["split", "shots_label", "draw_id"]).itertuples()
    ]


def require_runs(results: Results, what: str) -> None:
    """BenchError (exit status 2) when nothing matched: there is nothing to tabulate or plot."""
    if results.empty:
        raise BenchError(
            f"no succeeded runs in {results.store_url}{what}: nothing to report. Run "
            "`python -m bench run` first, or point --store at another results store"
        )


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run: the method name (``simclr · tuned 50`` when its parameters come from a 50-trial
    ``bench tune``), plus ``key=value`` for settings that vary within its section."""
    tuned = [(c or {}).get("tuned") for c in runs["config"]]
    base = pd.Series(
        [f"{m} · tuned {int(t)}" if t else m for m, t in zip(runs["method"], tuned, strict=True)],
        index=runs.index,
    )
    settings = runs["config"].map(_variant_settings)
    labels = base.copy()
    for _, group in runs.assign(_base=base).groupby(["_base", *SECTION_KEYS], sort=False):
        varying = _varying_keys([settings[i] for i in group.index])
        if varying:
            for i in group.index:
                shown = ", ".join(f"{k}={settings[i].get(k, '–')}" for k in varying)
                labels[i] = f"{base[i]} ({shown})"
    return labels


def shots_order(labels: pd.Series | list[str]) -> list[str]:
    """Shots labels sorted numerically, ``all`` last."""
    unique = pd.unique(pd.Series(list(labels), dtype=object))
    return sorted(unique, key=lambda s: (s == "all", int(s) if str(s).isdigit() else 0, str(s)))


def shots_text(shots: str) -> str:
    """'1 shot', '4 shots', 'all labeled'."""
    if shots == "all":
        return "all labeled"
    return f"{shots} shot" if str(shots) == "1" else f"{shots} shots"


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
