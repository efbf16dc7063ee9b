"""``bench run``: pretrain (cached) → few-shot fine-tune → evaluate → store, for K draws."""

from __future__ import annotations

import argparse

from bench.commands._common import (
    add_params_source,
    add_pool,
    add_run_options,
    finetune_overrides,
    parse_params,
)
from bench.core.console import console, say
from bench.core.errors import BenchError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="one method on one dataset: pretrain, fine-tune with N shots, evaluate, store",
        description=__doc__,
    )
    p.add_argument(
        "--method", default="matssl", help="method name (see `bench methods`; default: matssl)"
    )
    p.add_argument(
        "--dataset",
        default="metaldam",
        help="dataset card, e.g. metaldam, ebc1, ebc1:binary (default: metaldam)",
    )
    p.add_argument(
        "--shots",
        default="1",
        help="labeled images: a number, a comma list (1,2,4) or 'all' (default: 1)",
    )
    p.add_argument("--draws", type=int, default=1, help="seeded draws of the shots (default: 1)")
    p.add_argument("--force", action="store_true", help="redo runs whose config already succeeded")
    p.add_argument(
        "--modes",
        default="finetune,probe",
        help="evaluation modes on the same encoder, comma-separated: finetune (every weight "
        "trained) and probe (encoder frozen, linear head) (default: finetune,probe)",
    )
    add_run_options(p)
    add_pool(p)
    add_params_source(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from bench.finetune.train import TrainingDiverged
    from bench.reporting.runs import print_outcomes
    from bench.runner import RunOutcome, RunSpec, check_modes, make_env, run_one
    from bench.ssl.engine import PretrainFailed
    from bench.sweeps.tune import resolve_params, tuned_key

    if args.draws < 1:
        raise BenchError("--draws must be ≥ 1")
    env = make_env(
        args.data_root,
        args.store,
        args.device,
        args.cache_dir,
        args.force,
        args.compile,
        precision=args.precision,
    )
    fixed = parse_params(args.param)
    overrides = finetune_overrides(args)
    modes = check_modes(tuple(m.strip() for m in args.modes.split(",") if m.strip()))
    outcomes = []
    try:
        for shots in [s.strip() for s in args.shots.split(",") if s.strip()]:
            key = tuned_key(
                args.method,
                args.dataset,
                args.profile,
                split=args.split,
                shots=shots,
                init=args.init,
                finetune=overrides,
            )
            tuned = resolve_params(key, fixed, args.params, args.store)
            for draw in range(args.draws):
                spec = RunSpec(
                    method=args.method,
                    dataset=args.dataset,
                    split=args.split,
                    shots=shots,
                    draw=draw,
                    profile=args.profile,
                    init=args.init,
                    seed=args.seed,
                    params=tuned.params,
                    finetune={**tuned.finetune, **overrides},
                    tuned=tuned.trials,
                    modes=modes,
                    pool=args.pool,
                )
                try:
                    outcome = run_one(spec, env)
                except (TrainingDiverged, PretrainFailed) as exc:
                    say("[red]failed[/] {} {}-shot draw {}: {}", args.method, shots, draw, exc)
                    outcome = RunOutcome(spec, "failed", "", None, {}, str(exc))
                if outcome.status == "skipped":
                    console.print(
                        f"[dim]skipped {args.method} {shots}-shot draw {draw}: already in the "
                        f"store (run {outcome.run_id}); --force to redo[/]"
                    )
                outcomes.append(outcome)
    finally:
        print_outcomes(outcomes, env.store)
    failed = sum(o.status == "failed" for o in outcomes)
    if failed:
        console.print(f"[red]{failed} run(s) failed[/] (stored as failed with the reason)")
    return 1 if failed else 0
