"""``bench tune``: Optuna TPE over a method's search space, pruned on validation mIoU.

Every method can be tuned, baselines included: the search space is the method's own plus the
fine-tuning learning rate and weight decay; nothing that changes the compute (steps) is searched.
Each trial pretrains (cached per setting) and fine-tunes --draws draws of one --shots level; the
draws are the tuning's own (ids from 1000), never those a leaderboard reports. Its value is the
MEAN VALIDATION mIoU of the validation-selected models (test is never read). The median pruner
stops trials whose running validation score falls behind, after a warm-up of one full draw. The
first trial is the current settings. Tune runs go to their own results store (tune.sqlite beside
--store), never the leaderboard's; the study and the best parameters are kept beside --store too,
the parameters in tuned/ under a name made of method, dataset, split, shots, profile, init and
fine-tuning options, which --params best looks up exactly. Re-running the same command tops the
study up to --trials trials (several processes may share one study).
"""

from __future__ import annotations

import argparse

from bench.commands._common import add_run_options, finetune_overrides, parse_params
from bench.commands.worker import add_study_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="hyperparameter search (Optuna TPE + median pruning on validation mIoU)",
        description=__doc__,
    )
    p.add_argument("--method", default="matssl", help="method to tune (default: matssl)")
    p.add_argument("--dataset", default="metaldam", help="dataset card (default: metaldam)")
    p.add_argument("--shots", default="1", help="one shots level (default: 1)")
    p.add_argument(
        "--draws",
        type=int,
        default=2,
        help="draws per trial; the objective is their mean (default: 2)",
    )
    p.add_argument(
        "--trials",
        type=int,
        default=50,
        help="finished (complete or pruned) trials to reach (default: 50)",
    )
    add_run_options(p)
    p._option_string_actions["--store"].help = (
        "the results store beside which the study, tune runs (tune.sqlite) and tuned/ "
        "parameters are kept (default: $BENCH_STORE or results/bench.sqlite); tune runs never "
        "enter this store itself"
    )
    p._option_string_actions[
        "--param"
    ].help = "fix a parameter (not searched), repeatable: KEY=VALUE"
    add_study_options(p)
    p.add_argument("--sampler-seed", type=int, help="seed of the TPE sampler (default: random)")
    p.add_argument("--pruner", choices=["median", "none"], default="median", help="default: median")
    p.add_argument(
        "--tuned-dir",
        help="where to save the best parameters "
        "(default: $BENCH_TUNED_DIR, else tuned/ beside --store)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optuna.trial import TrialState
    from rich.markup import escape
    from rich.table import Table

    from bench.core.console import console
    from bench.core.errors import BenchError
    from bench.core.urls import mask_password
    from bench.data.protocol import parse_shots
    from bench.profiles import finetune_config, get_profile
    from bench.results.store import default_store_url
    from bench.runner import make_env
    from bench.ssl.registry import get_method
    from bench.sweeps.studies import default_storage_url, open_storage
    from bench.sweeps.tune import (
        METRIC,
        TuneTask,
        default_tune_store,
        enqueue_defaults,
        run_tuning,
        save_best,
        search_space,
        tune_objective,
        tune_study,
        tuned_dir,
        tuned_path,
    )

    if args.draws < 1 or args.trials < 1:
        raise BenchError("--draws and --trials must be ≥ 1")
    if "," in args.shots:
        raise BenchError("tune takes one --shots level (e.g. --shots 1)")
    parse_shots(args.shots)
    main_store = args.store or default_store_url()
    tune_store = default_tune_store(main_store)
    fixed = parse_params(args.param)
    method_cls = get_method(args.method)
    overrides = finetune_overrides(args)
    given = {**fixed, **{f"finetune.{k}": v for k, v in overrides.items()}}
    space = search_space(method_cls, args.profile, given)  # what is given is not searched
    task = TuneTask(
        method=args.method,
        dataset=args.dataset,
        shots=args.shots,
        draws=args.draws,
        profile=args.profile,
        init=args.init,
        split=args.split,
        seed=args.seed,
        params=fixed,
        finetune=overrides,
    )
    key = task.key()
    opened = open_storage(
        args.storage or default_storage_url(main_store), args.heartbeat, args.grace
    )
    name = args.name or task.default_name()
    steps = finetune_config(get_profile(args.profile), **overrides).steps
    study = tune_study(opened, name, task, args.sampler_seed, args.pruner, warmup_steps=steps)
    env = make_env(
        args.data_root,
        tune_store,
        args.device,
        args.cache_dir,
        False,
        args.compile,
        precision=args.precision,
    )
    method_only = {k: v for k, v in fixed.items() if not k.startswith("finetune.")}
    enqueue_defaults(study, method_cls(method_only), space, args.profile, overrides)
    console.print(
        escape(
            f"tuning {key.describe()} ({args.draws} draws, {args.trials} trials) over "
            f"{', '.join(space)}: study '{name}' in {opened.shown}; tune runs stored in "
            f"{mask_password(tune_store)}"
        ),
        highlight=False,
    )
    directory = Path(args.tuned_dir) if args.tuned_dir else tuned_dir(main_store)
    path = tuned_path(key, directory)
    try:
        run_tuning(study, tune_objective(task, env, space), args.trials)
    finally:  # also on Ctrl-C: keep the best found so far
        record = None
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            record = save_best(study, task, path, opened.shown, space, args.sampler_seed)
    if record is None:
        raise BenchError(
            f"no trial of study '{name}' completed: nothing to save (see the errors above)"
        )
    console.print(
        escape(
            f"best: trial {record['trial']} of '{name}', {METRIC}: "
            f"{100 * record['value']:.2f} %"
            + (
                f" (the defaults: {100 * record['defaults_value']:.2f} %)"
                if record["defaults_value"] is not None
                else ""
            )
        ),
        highlight=False,
    )
    table = Table()
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for param, value in sorted(record["searched"].items()):
        table.add_row(escape(param), f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    shown = opened.url if opened.url == mask_password(opened.url) else "<storage URL>"
    console.print(
        escape(
            f"trials: {record['trials']}; saved to {path}. Use it with --params best (same "
            f"method, dataset, split, shots, profile, init and fine-tuning options); browse the "
            f"study with: optuna-dashboard {shown}"
        ),
        highlight=False,
        soft_wrap=True,
    )
    return 0
