"""``bench perf``: time the SSL engine, a seed-style loop, a ResNet-50 ceiling, fine-tuning and
evaluation, each of the project's own measurements at fp32 and at bf16 in the same run.

Writes ``<out>/<device-slug>-<YYYY-MM-DD>.json`` and prints a table. A benchmark, not a test: the
figures depend on the machine and its load. On a CPU use ``--profile smoke`` (minutes on 2 cores).
"""

from __future__ import annotations

import argparse

from bench.commands._common import add_data_root, add_results_dir
from bench.core.compile import COMPILE_MODES
from bench.core.errors import BenchError
from bench.core.precision import PRECISIONS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perf",
        help="benchmark engine speed on this device (SSL engine vs seed loop "
        "vs ResNet-50 ceiling; fine-tuning steps/s) and write JSON",
        description=__doc__,
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument(
        "--profile",
        default=None,
        choices=["smoke", "standard"],
        help="sizes: smoke (small CPU run) or standard (GPU-sized); "
        "default: standard on CUDA, smoke on CPU",
    )
    p.add_argument(
        "--methods",
        default="all",
        help="SSL methods to time: 'all' or a comma list, e.g. simclr,matssl (default: all)",
    )
    p.add_argument(
        "--dataset",
        default="metaldam",
        help="dataset card with an unlabeled pool (default: metaldam)",
    )
    p.add_argument(
        "--compile",
        default="auto",
        choices=list(COMPILE_MODES),
        help="engine step compile mode, as `bench run --compile` (default: auto)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="precision of the main figures (fp32 and bf16 are always compared side by side; "
        "default: auto, as `bench run`)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 for smoke, torch's default for standard)",
    )
    p.add_argument("--out", help="output folder (default: perf/ in the results folder)")
    add_data_root(p)
    add_results_dir(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.core.console import console, err_console
    from bench.core.devices import resolve_device
    from bench.core.paths import results_dir
    from bench.data.sources import resolve_data_root
    from bench.perf.record import write_record
    from bench.perf.run import PerfOptions, run_perf
    from bench.perf.table import render_precision_table, render_table

    device = resolve_device(args.device)
    profile = args.profile or ("standard" if device.type == "cuda" else "smoke")
    if args.threads is not None and args.threads < 1:
        raise BenchError("--threads must be ≥ 1")
    threads = args.threads or (1 if profile == "smoke" else None)
    if profile == "standard" and device.type == "cpu":
        err_console.print(
            "[yellow]warning:[/] --profile standard is GPU-sized (ResNet-50, batch 128 "
            "at 224²); on a CPU it takes hours — use --profile smoke"
        )
    methods = (
        None
        if args.methods.strip() == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    if methods is not None and not methods:
        raise BenchError("--methods: give 'all' or a comma list of SSL method names")
    command = f"python -m bench perf --device {args.device} --profile {profile}"
    if args.methods != "all":
        command += f" --methods {args.methods}"
    for flag, value, default in (
        ("--dataset", args.dataset, "metaldam"),
        ("--compile", args.compile, "auto"),
        ("--precision", args.precision, "auto"),
        ("--threads", args.threads, None),
        ("--out", args.out, None),
        ("--data-root", args.data_root, None),
    ):
        if value != default:
            command += f" {flag} {value}"
    opts = PerfOptions(
        device=device,
        profile=profile,
        data_root=resolve_data_root(args.data_root),
        methods=methods,
        compile=args.compile,
        precision=args.precision,
        threads=threads,
        dataset=args.dataset,
        command=command,
        log=lambda msg: err_console.print(f"perf: {msg}", style="dim", markup=False),
    )
    record = run_perf(opts)
    path = write_record(record, Path(args.out) if args.out else results_dir() / "perf")
    console.print(render_table(record))
    compare = render_precision_table(record)
    if compare is not None:
        console.print(compare)
    console.print(f"wrote {path}", markup=False)
    return 0
