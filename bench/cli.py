"""``python -m bench``: the command-line interface.

Each module in ``bench/commands/`` adds one subcommand through ``register(subparsers)`` and sets
``func`` on its parser; user errors (``BenchError``) print one message and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from bench import __version__, commands
from bench.core.console import err_console, error
from bench.core.errors import BenchError
from bench.core.paths import RESULTS_ENV


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="MicroSSL-Bench: which self-supervised pretraining to use with few labeled "
        "micrographs. Pretrain, fine-tune with 1..N labeled images, evaluate, publish.",
    )
    parser.add_argument("--version", action="version", version=f"microssl-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"bench.commands.{info.name}").register(sub)
    for command in sub.choices.values():
        _plain_help(command)
    return parser


def _plain_help(parser: argparse.ArgumentParser) -> None:
    """Help shown as plain text: the docstrings' ``code`` quotes become plain words."""
    if parser.description:
        parser.description = parser.description.replace("``", "")
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = action.help.replace("``", "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "results_dir", None) is not None:  # one choice, seen by every later step
        os.environ[RESULTS_ENV] = str(args.results_dir.expanduser().resolve())
    try:
        return int(args.func(args) or 0)
    except BenchError as exc:
        error(str(exc))
        return 2
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: results stored so far are kept")
        return 130


if __name__ == "__main__":
    sys.exit(main())
