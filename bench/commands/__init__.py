"""Subcommands of ``python -m bench``; one module each, discovered by ``bench.cli``."""
