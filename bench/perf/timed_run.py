"""Time the main command from an empty store and cache, per precision, and compare the scores.

    python -m bench.perf.timed_run [--precision auto|fp32|bf16[,...]] [--out FILE] [-- RUN ARGS]

runs ``python -m bench run --precision P RUN ARGS`` once per listed precision, each in a fresh
temporary store and cache (``BENCH_STORE``, ``BENCH_CACHE_DIR``; the data root comes from
``BENCH_DATA_ROOT`` or ``--data-root`` among the run arguments), and prints for every run the wall
time of the whole command, the stages the run record keeps (pretraining, fine-tuning steps,
evaluations; the rest is start-up, data loading and storing) and the load average before and
after. With two precisions it pairs the runs by (shots, draw) and prints the honest test score of
each, their differences, and the spread across draws of each precision (the draw noise the
differences are to be read against). A measurement, not a test: the figures depend on the
machine and its load.

Examples: ``python -m bench.perf.timed_run`` (the main command as shipped: auto precision);
``python -m bench.perf.timed_run --precision fp32,bf16 -- --shots 1 --draws 5`` (the paired
fp32/bf16 comparison on MetalDAM quick, 1 shot, 5 draws).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.core.precision import precision_list
from bench.results.store import ResultStore


def timed_run(precision: str, run_args: list[str], folder: Path) -> dict[str, Any]:
    """One ``bench run`` in ``folder``'s empty store and cache: wall time, stages, scores."""
    store = f"sqlite:///{folder / 'bench.sqlite'}"
    env = {**os.environ, "BENCH_STORE": store, "BENCH_CACHE_DIR": str(folder / "cache")}
    command = [sys.executable, "-m", "bench", "run", "--precision", precision, *run_args]
    log = folder / "run.log"
    load_before = os.getloadavg()
    started = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {
        "precision": precision,
        "command": " ".join(["python", "-m", "bench", "run", "--precision", precision, *run_args]),
        "exit_code": code,
        "wall_s": wall,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "runs": [],
    }
    if code != 0:
        record["log_tail"] = log.read_text(errors="replace")[-2000:]
        return record
    results = ResultStore(store)
    frame = results.metrics_frame(metric="score", split_part="test", selection="val")
    honest = frame[(frame.protocol == "honest") & (frame["mode"] == "finetune")]
    probe = frame[(frame.protocol == "honest") & (frame["mode"] == "probe")]
    honest, probe = honest.set_index("run_id").value, probe.set_index("run_id").value
    for run in results.runs(status="succeeded"):
        summary = run.summary or {}
        record["runs"].append(
            {
                "shots": run.shots_label,
                "draw": run.draw,
                "precision": run.config.get("precision"),
                "honest": float(honest.get(run.id, float("nan"))),
                "probe_honest": float(probe.get(run.id, float("nan"))),
                "seconds": summary.get("seconds", {}),
            }
        )
    return record


def stage_lines(record: dict[str, Any]) -> list[str]:
    """Wall time and stages of one command."""
    lines = [
        f"{record['command']}: exit {record['exit_code']}, {record['wall_s']:.1f} s wall, load "
        f"{'/'.join(f'{v:.2f}' for v in record['load_before'])} before, "
        f"{'/'.join(f'{v:.2f}' for v in record['load_after'])} after"
    ]
    staged = 0.0
    for run in record["runs"]:
        s = run["seconds"]
        staged += s.get("total", 0.0)
        lines.append(
            f"  {run['shots']}-shot draw {run['draw']} ({run['precision']}): "
            f"pretraining {s.get('encoder', 0):.1f} s, fine-tuning steps "
            f"{s.get('finetune_train', 0):.1f} s, evaluations {s.get('finetune_eval', 0):.1f} s, "
            f"probe {s.get('probe', 0):.1f} s, "
            f"run total {s.get('total', 0):.1f} s; honest test mIoU {100 * run['honest']:.2f} %"
        )
    if record["runs"]:
        lines.append(f"  start-up, data loading and storing: {record['wall_s'] - staged:.1f} s")
    elif "log_tail" in record:
        lines.append(record["log_tail"])
    return lines


def paired_lines(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Honest test scores of two precisions' runs paired by (shots, draw)."""
    left = {(r["shots"], r["draw"]): r["honest"] for r in a["runs"]}
    right = {(r["shots"], r["draw"]): r["honest"] for r in b["runs"]}
    keys = sorted(set(left) & set(right))
    if not keys:
        return []
    name_a, name_b = a["precision"], b["precision"]
    left = {k: 100 * v for k, v in left.items()}  # in %
    right = {k: 100 * v for k, v in right.items()}
    lines = [f"paired honest test mIoU (%), {name_b} − {name_a} (percentage points):"]
    for key in keys:
        lines.append(
            f"  {key[0]}-shot draw {key[1]}: {name_a} {left[key]:.2f}, {name_b} {right[key]:.2f}, "
            f"difference {right[key] - left[key]:+.2f}"
        )
    diffs = [right[k] - left[k] for k in keys]
    lines.append(f"  mean difference {statistics.fmean(diffs):+.2f} over {len(keys)} pair(s)")
    if len(keys) > 1:
        lines.append(
            f"  sd of the differences {statistics.stdev(diffs):.2f}; sd across draws: "
            f"{name_a} {statistics.stdev(left[k] for k in keys):.2f}, "
            f"{name_b} {statistics.stdev(right[k] for k in keys):.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf.timed_run",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="comma list of precisions, each one command (default: auto)",
    )
    parser.add_argument(
        "--out", type=Path, help="also write the figures as JSON here (after every command)"
    )
    parser.add_argument("run_args", nargs="*", help="arguments of `bench run` (after --)")
    args = parser.parse_args(argv)
    try:
        precisions = precision_list(args.precision)
    except ValueError as exc:
        parser.error(f"--precision: {exc}")
    records = []
    for precision in precisions:
        with tempfile.TemporaryDirectory(prefix="bench-timed-run-") as folder:
            record = timed_run(precision, args.run_args, Path(folder))
        records.append(record)
        print("\n".join(stage_lines(record)), flush=True)
        if args.out:  # after every command, so a stopped comparison keeps what it measured
            args.out.write_text(json.dumps(records, indent=2) + "\n")
    if len(records) == 2:
        print("\n".join(paired_lines(*records)))
    return 0 if all(r["exit_code"] == 0 for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
