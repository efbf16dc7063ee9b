"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.core.compile import COMPILE_MODES
from bench.core.precision import PRECISIONS
from bench.models.encoders import INITS
from bench.models.segmenter import ARCHS, ENCODERS
from bench.profiles import PROFILES


class _CardsFolder(argparse.Action):
    """``--cards DIR``: put DIR on the card search path ($BENCH_CARDS) as the line is parsed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        import os

        from bench.data.cards import CARDS_ENV

        known = [p for p in os.environ.get(CARDS_ENV, "").split(os.pathsep) if p]
        os.environ[CARDS_ENV] = os.pathsep.join([*known, str(values)])
        setattr(namespace, self.dest, values)


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root", help="prepared data root (default: $BENCH_DATA_ROOT, else datasets/)"
    )
    parser.add_argument(
        "--cards",
        metavar="DIR",
        action=_CardsFolder,
        help="another folder of dataset cards, searched after the project's datasets/ "
        "(also $BENCH_CARDS, os.pathsep-separated)",
    )


def add_results_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir",
        type=Path,
        help="the results folder: store, cache, studies, tuned parameters, tables (default: "
        "$BENCH_RESULTS, else results/ of the checkout, else ~/.local/share/microssl-bench)",
    )


def add_store(parser: argparse.ArgumentParser) -> None:
    add_results_dir(parser)
    parser.add_argument(
        "--store",
        help="results store URL (default: $BENCH_STORE, else bench.sqlite in the results folder)",
    )


def add_worker_env(parser: argparse.ArgumentParser) -> None:
    """Where runs read data, cache, compute and store (a worker's own machine's settings)."""
    add_data_root(parser)
    add_store(parser)
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument(
        "--cache-dir",
        help="pretraining cache (default: $BENCH_CACHE_DIR, else cache/ in the results folder)",
    )
    parser.add_argument(
        "--compile",
        default="off",
        choices=list(COMPILE_MODES),
        help="torch.compile the pretraining and fine-tuning steps (fine-tuning on CUDA: CUDA "
        "graphs); auto: on CUDA for runs long enough to repay the warm-up (default: off)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="forward passes of pretraining, fine-tuning and evaluation: bf16 autocast + "
        "channels_last, or fp32; auto: bf16 on CUDA with bf16 and on CPUs with amx_bf16 or "
        "avx512_bf16, else fp32 (losses and metrics stay fp32; recorded with the run; "
        "default: auto)",
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options of anything that executes runs (run, sweep, tune): the run environment plus what a
    run is (profile, init, split, seed, parameters, fine-tuning overrides)."""
    add_worker_env(parser)
    parser.add_argument(
        "--profile", default="quick", choices=list(PROFILES), help="run size (default: quick)"
    )
    parser.add_argument(
        "--init",
        choices=list(INITS),
        help="encoder initialisation before pretraining (default: the profile's; baselines fix it)",
    )
    parser.add_argument(
        "--split", help="dataset split, e.g. fold0..fold5 for metaldam (default: the card's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed (default: 0)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method hyperparameter override, repeatable (see `bench methods -v`)",
    )
    parser.add_argument("--arch", choices=list(ARCHS), help="segmentation architecture")
    parser.add_argument("--encoder", choices=list(ENCODERS), help="encoder")
    parser.add_argument("--steps", type=int, help="fine-tuning optimizer steps")
    parser.add_argument("--batch-size", type=int, help="fine-tuning batch size")
    parser.add_argument("--crop", type=int, help="fine-tuning crop size")
    parser.add_argument("--lr", type=float, help="fine-tuning learning rate")
    parser.add_argument("--eval-every", type=int, help="evaluate every N steps")
    parser.add_argument("--tile", type=int, help="sliding-window inference tile (0: whole image)")
    parser.add_argument(
        "--scale",
        help="working scale of pretraining, fine-tuning and evaluation: card, native, "
        "protocol:NAME or HxW (default: the profile's)",
    )


def add_pool(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pool",
        default="honest",
        choices=["honest", "transductive"],
        help="SSL pretraining pool: honest = the unlabeled images minus every near-duplicate of "
        "the split's validation and test images; transductive = all of them, as the seed papers "
        "did (recorded with the run) (default: honest)",
    )


def add_params_source(parser: argparse.ArgumentParser) -> None:
    """``--params best|FILE``: start from the parameters ``bench tune`` saved."""
    parser.add_argument(
        "--params",
        metavar="best|FILE",
        help="start from tuned parameters: 'best' = the `bench tune` result for exactly this "
        "method, dataset, split, shots, profile, init and fine-tuning options (an error if "
        "there is none), or a JSON file written by `bench tune`; --param values override them",
    )


def finetune_overrides(args: argparse.Namespace) -> dict[str, object]:
    keys = ("arch", "encoder", "steps", "batch_size", "crop", "lr", "eval_every", "tile", "scale")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def parse_params(pairs: list[str]) -> dict[str, str]:
    from bench.core.errors import BenchError

    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"--param takes KEY=VALUE, got '{pair}'")
        params[key.strip()] = value.strip()
    return params
