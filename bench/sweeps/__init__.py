"""Many runs: sweeps as one Optuna study of enqueued grid points, the storages and heartbeats
behind them, workers (local processes, other machines, SLURM arrays) and hyperparameter tuning.

Imports the layers below and ``bench.runner`` (a trial is one run); never the CLI.
"""
