"""What a controls run writes: ``controls.json`` (settings, commit, per-draw scores, tests),
``controls.md`` (the table and what it means) and ``controls.png`` (per-draw differences with
the mean and its interval)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from bench.controls.experiment import BASELINE, CONTROLS, ControlsOutcome
from bench.controls.pretrain import DESCRIPTION
from bench.core.provenance import collect_versions

METHOD = "supervised pretraining (encoder + linear head), encoder kept"
MODE = "probe"


def control_rows(outcome: ControlsOutcome) -> list[dict[str, Any]]:
    """One row per control: what was compared, over how many draws, and the test's outcome."""
    rows = []
    for control in CONTROLS:
        test = outcome.tests[control.name]
        rows.append(
            {
                "control": control.name,
                "method": describe(outcome, control.treated),
                "baseline": describe(outcome, control.baseline),
                "mode": MODE,
                "metric": "mIoU (honest protocol, validation-selected step)",
                "n_draws": test.n,
                "mean_diff": test.mean_diff,
                "ci95": [test.ci_low, test.ci_high],
                "p": test.p_value,
                "wins": test.wins,
                "expect": control.expect,
                "passed": control.passed(test),
            }
        )
    return rows


def describe(outcome: ControlsOutcome, encoder: str) -> str:
    """What an encoder of the outcome is, in words."""
    if encoder == BASELINE:
        return BASELINE
    return f"{METHOD}, on {pool_label(outcome, encoder)}"


def pool_label(outcome: ControlsOutcome, pool: str) -> str:
    cfg = outcome.config
    if pool == "noise":
        return f"{cfg.pool} {cfg.noise}-noise images"
    if pool == "noise repeat":
        return f"{cfg.pool} other {cfg.noise}-noise images (a second draw)"
    return f"{cfg.pool} generated micrographs"


def verdict(passed: bool | None) -> str:
    return "—" if passed is None else "yes" if passed else "NO"


def to_json(outcome: ControlsOutcome, commit: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "controls": control_rows(outcome),
        "test": "exact two-sided sign-flip permutation test over all 2^n sign patterns of the "
        "per-draw differences; 95% Student-t interval of the mean difference",
        "pretraining": DESCRIPTION,
        "settings": dataclasses.asdict(outcome.config),
        "draws": [list(d) for d in outcome.draws],
        "scores": outcome.scores,
        "commit": commit,
        "versions": collect_versions(),
        **extra,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")


def to_markdown(data: dict[str, Any], command: str) -> str:
    cfg = data["settings"]
    lines = [
        "# Controls: can the probe see a pretraining effect?",
        "",
        f"Command: `{command}` (commit `{data['commit']}`, {data.get('wall_s', math.nan):.0f} s "
        f"on {data.get('device', '?')}).",
        "",
        f"Frozen-encoder probe ({MODE} mode) on generated {cfg['size']}² micrographs, "
        f"{cfg['shots']} shots per draw, {cfg['draws']} distinct draws, "
        f"{cfg['test']} test images, {cfg['val']} validation images; {cfg['encoder']} encoder. "
        f"Every pretraining starts from the {BASELINE} encoder, with the same recipe, budget and "
        "seed. The negative control repeats the noise pretraining on other noise: training on "
        "noise does change what a frozen encoder gives the probe (the `training` row, reported "
        "without a verdict), so the null known to hold is that two such encoders do not differ.",
        "",
        "| control | encoder | against | n draws | mean Δ mIoU | 95% CI | p (sign-flip) | wins | "
        "expected | passed |",
        "|---|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    for row in data["controls"]:
        low, high = row["ci95"]
        lines.append(
            f"| {row['control']} | {row['method']} | {row['baseline']} | {row['n_draws']} | "
            f"{100 * row['mean_diff']:+.1f} | [{100 * low:+.1f}, {100 * high:+.1f}] | "
            f"{row['p']:.4f} | {row['wins']}/{row['n_draws']} | {row['expect']} | "
            f"{verdict(row['passed'])} |"
        )
    means = {name: 100 * float(np.mean(v)) for name, v in data["scores"].items()}
    lines += [
        "",
        "Mean probe mIoU: " + ", ".join(f"{name} {m:.1f}" for name, m in means.items()) + ".",
        "",
        f"Pretraining: {data['pretraining']}",
        "",
        f"Test: {data['test']}.",
        "",
        "![controls](controls.png)",
        "",
    ]
    return "\n".join(lines)


def plot(outcome: ControlsOutcome) -> Figure:
    """Per-draw differences (dots), their mean and 95% interval, per control."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    ax = figure.add_subplot()
    for i, control in enumerate(CONTROLS):
        treated = np.asarray(outcome.scores[control.treated])
        diffs = 100 * (treated - np.asarray(outcome.scores[control.baseline]))
        test = outcome.tests[control.name]
        jitter = np.linspace(-0.12, 0.12, diffs.size)
        ax.scatter(i + jitter, diffs, s=14, alpha=0.6, color=f"C{i}")
        ax.errorbar(
            [i + 0.3],
            [100 * test.mean_diff],
            yerr=[[100 * (test.mean_diff - test.ci_low)], [100 * (test.ci_high - test.mean_diff)]],
            fmt="D",
            color="black",
            capsize=4,
        )
        ax.annotate(
            f"p = {test.p_value:.3g}",
            (i + 0.34, 100 * test.ci_high),
            fontsize=8,
            va="bottom",
        )
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(CONTROLS)))
    ax.set_xticklabels([f"{c.name}\n{c.treated} − {c.baseline}" for c in CONTROLS])
    ax.set_xlim(-0.5, len(CONTROLS) - 0.3)
    ax.set_ylabel("Δ probe mIoU (points)")
    ax.set_title(f"Controls: per-draw paired differences, n = {len(outcome.draws)}", fontsize=10)
    return figure
