"""SLURM: workers as one job array, submitted with submitit (``bench sweep --launcher slurm``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.urls import mask_password
from bench.sweeps.workers import WorkerOptions, worker_main


@dataclass(frozen=True)
class SlurmSettings:
    folder: Path
    workers: int
    time_min: int = 24 * 60
    gpus_per_task: int = 1
    cpus_per_task: int | None = 8
    mem_gb: float | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    array_parallelism: int | None = None
    setup: tuple[str, ...] = ()
    job_name: str = "bench-worker"


def slurm_parameters(s: SlurmSettings) -> dict[str, Any]:
    """The ``SlurmExecutor.update_parameters`` keywords for the worker array."""
    params: dict[str, Any] = {
        "job_name": s.job_name,
        "time": s.time_min,
        "nodes": 1,
        "ntasks_per_node": 1,
        "gpus_per_node": s.gpus_per_task,
        "array_parallelism": s.array_parallelism or s.workers,
    }
    mem = None
    if s.mem_gb is not None:
        mem = f"{int(s.mem_gb)}GB" if s.mem_gb == int(s.mem_gb) else f"{int(s.mem_gb * 1024)}MB"
    optional = {
        "cpus_per_task": s.cpus_per_task,
        "mem": mem,
        "partition": s.partition,
        "account": s.account,
        "qos": s.qos,
        "setup": list(s.setup) or None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if not s.gpus_per_task:
        params.pop("gpus_per_node")
    return params


def slurm_executor(s: SlurmSettings) -> Any:
    """A submitit ``SlurmExecutor`` set up for the worker array (needs ``srun`` on PATH)."""
    import submitit

    if s.workers < 1:
        raise BenchError("--launcher slurm needs --workers ≥ 1 (the job array's size)")
    try:
        executor = submitit.SlurmExecutor(folder=str(s.folder / "%j"))
    except RuntimeError as exc:  # no srun: not on a SLURM cluster
        raise BenchError(f"--launcher slurm: {exc}") from None
    executor.update_parameters(**slurm_parameters(s))
    return executor


def submit_slurm(s: SlurmSettings, opts: WorkerOptions) -> list[Any]:
    """Submit ``s.workers`` workers (``worker_main(opts)``) as one SLURM job array."""
    executor = slurm_executor(s)
    return executor.map_array(slurm_task, [opts] * s.workers, list(range(s.workers)))


def slurm_task(opts: WorkerOptions, index: int) -> int:
    """What each array task runs (pickled by submitit): one worker, in-process."""
    print(
        f"SLURM array task {index}: worker for study '{opts.name}' in "
        f"{mask_password(opts.storage)}",
        flush=True,
    )
    worker_main(opts)
    return 0
