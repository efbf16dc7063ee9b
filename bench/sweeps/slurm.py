"""SLURM: workers as one job array, submitted with submitit (``bench sweep --launcher slurm``).

What each array task gets: ``OMP_NUM_THREADS`` = its ``SLURM_CPUS_PER_TASK`` (one thread per
allotted CPU), one worker per allotted GPU, the storage URLs from a file only the user can read
(never in the pickled task, the job's log or a process title), and absolute paths (resolved at
submit time, so nodes do not resolve them against their own working folder).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.urls import mask_password
from bench.sweeps.workers import EXIT_DONE, WorkerOptions, allotted_cpus, worker_main

THREADS_SETUP = 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"'
ENDED = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "REVOKED",
}  # fmt: skip
NEVER_STARTS = (
    "PartitionConfig", "ReqNodeNotAvail", "BadConstraints", "PartitionNodeLimit",
    "PartitionTimeLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob", "InvalidAccount",
    "InvalidQOS", "AssocMaxCpuPerJobLimit", "Nodes_required_for_job_are_DOWN",
)  # fmt: skip
"""squeue reasons of a pending job that will not start as submitted."""


@dataclass(frozen=True)
class SlurmSettings:
    folder: Path
    workers: int
    time_min: int = 24 * 60
    gpus_per_task: int = 0
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
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    params["setup"] = [THREADS_SETUP, *s.setup]
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


def write_secrets(folder: Path, opts: WorkerOptions) -> tuple[WorkerOptions, str | None]:
    """URLs holding a password go to ``folder/urls.json`` (mode 0600); the options that are
    pickled for the tasks keep only the masked URLs and the file's path."""
    if mask_password(opts.storage) == opts.storage and mask_password(opts.store) == opts.store:
        return opts, None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "urls.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"storage": opts.storage, "store": opts.store}, f)
    return replace(opts, storage=mask_password(opts.storage), store=mask_password(opts.store)), str(
        path
    )


def submit_slurm(s: SlurmSettings, opts: WorkerOptions) -> list[Any]:
    """Submit ``s.workers`` workers (``worker_main(opts)``) as one SLURM job array; an sbatch
    refusal is one line naming its message and the option to change."""
    from submitit.core.utils import FailedJobError

    executor = slurm_executor(s)
    shown, secrets = write_secrets(s.folder, opts)
    quiet = io.StringIO()
    try:
        with contextlib.redirect_stderr(quiet):  # submitit also prints sbatch's stderr
            return executor.map_array(
                slurm_task, [shown] * s.workers, list(range(s.workers)), [secrets] * s.workers
            )
    except (FailedJobError, OSError) as exc:
        raise BenchError(submission_error(str(exc))) from None


def submission_error(message: str) -> str:
    """sbatch's refusal as one line, with the option that would fix it."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    said = next((ln for ln in lines if "submission failed" in ln.lower()), None)
    said = said or (lines[-1] if lines else "no message")
    said = re.sub(r"^sbatch: error: ", "", said)
    text = message.lower()
    hints = [
        (("partition",), "--slurm-partition"),
        (("gres", "gpu"), "--slurm-gpus (0 for a CPU partition)"),
        (("account",), "--slurm-account"),
        (("qos",), "--slurm-qos"),
        (("time limit",), "--slurm-time"),
        (("memory", "mem"), "--slurm-mem-gb"),
        (("cpu", "node configuration"), "--slurm-cpus"),
    ]
    option = next((opt for words, opt in hints if any(w in text for w in words)), None)
    fix = f"; change {option}" if option else ""
    return (
        f"sbatch refused the worker array: {said}{fix} (the grid points stay enqueued; "
        "re-run the same command after the change)"
    )


def slurm_task(opts: WorkerOptions, index: int, secrets: str | None = None) -> int:
    """What each array task runs (pickled by submitit): one worker per allotted GPU (one
    in-process worker without GPUs), with one thread per allotted CPU. A worker that gave up
    or was stopped makes the task fail, so SLURM's state says so."""
    os.environ.setdefault("OMP_NUM_THREADS", str(allotted_cpus()))
    if secrets:
        urls = json.loads(Path(secrets).read_text())
        opts = replace(opts, storage=urls["storage"], store=urls["store"])
    print(
        f"SLURM array task {index}: worker for study '{opts.name}' in "
        f"{mask_password(opts.storage)} ({os.environ['OMP_NUM_THREADS']} threads)",
        flush=True,
    )
    gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    if opts.device in ("cuda", "auto") and len(gpus) > 1:
        code = _one_worker_per_gpu(opts, gpus, index)
    else:
        code = worker_main(opts).exit_code
    if code != EXIT_DONE:
        raise SystemExit(code)
    return code


def _one_worker_per_gpu(opts: WorkerOptions, gpus: list[str], index: int) -> int:
    from bench.sweeps.workers import plan_local_workers, start_local_workers

    plan = plan_local_workers(None, 1, "cuda", gpus)
    folder = Path(os.environ.get("SUBMITIT_FOLDER", ".")) / f"task-{index}-workers"
    procs = start_local_workers(plan, opts, folder)
    print(f"{len(procs)} workers, one per GPU ({', '.join(gpus)}); logs in {folder}", flush=True)
    return max(proc.wait() for proc, _ in procs)


# --- Following the array ---------------------------------------------------------------------


@dataclass(frozen=True)
class TaskState:
    index: int
    state: str
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state.split()[0] in ENDED

    @property
    def stuck(self) -> bool:
        """Pending for a reason that will not clear by waiting."""
        return self.state == "PENDING" and any(self.reason.startswith(r) for r in NEVER_STARTS)


def scheduler_states(job_id: str) -> dict[int, TaskState]:
    """Each array task's state from ``sacct`` (when accounting works) and ``squeue`` (live,
    with the pending reason); {} where neither tool answers."""
    states: dict[int, TaskState] = {}
    for line in _tool(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State"]):
        task, _, state = line.partition("|")
        index = _task_index(task, job_id)
        if index is not None:
            states[index] = TaskState(index, state.strip())
    for line in _tool(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i|%T|%r"]):
        parts = line.split("|")
        if len(parts) == 3 and (index := _task_index(parts[0], job_id)) is not None:
            reason = "" if parts[2] in ("None", "(null)") else parts[2]
            states[index] = TaskState(index, parts[1], reason)
    return states


def _task_index(task: str, job_id: str) -> int | None:
    """``JOB_N`` → N; a lone ``JOB`` (submitit submits an array of one as a plain job) → 0."""
    task = task.strip()
    if task == job_id:
        return 0
    match = re.fullmatch(rf"{re.escape(job_id)}_(\d+)", task)
    return int(match.group(1)) if match else None


def _tool(command: list[str]) -> list[str]:
    if shutil.which(command[0]) is None:
        return []
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return done.stdout.splitlines() if done.returncode == 0 else []


def task_logs(folder: Path, job_id: str, index: int) -> tuple[Path, Path]:
    """The task's stderr and stdout files (submitit's layout)."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(folder / "%j", job_id=f"{job_id}_{index}", task_id=0)
    if index == 0 and not paths.stderr.exists():  # an array of one is a plain job
        single = JobPaths(folder / "%j", job_id=job_id, task_id=0)
        paths = single if single.stderr.exists() else paths
    return paths.stderr, paths.stdout


def first_error_line(folder: Path, job_id: str, index: int) -> str:
    """The first line of the task's logs that reports an error (else the last line of stderr)."""
    err, out = task_logs(folder, job_id, index)
    texts = [p.read_text(errors="replace") for p in (err, out) if p.is_file()]
    pattern = re.compile(r"error|exception|fatal|killed|cancelled|gave up|stopped", re.I)
    for text in texts:
        for line in text.splitlines():
            if pattern.search(line) and not line.startswith(("Traceback", "  ")):
                return line.strip()[:300]
    last = [ln for ln in (texts[0].splitlines() if texts else []) if ln.strip()]
    return last[-1].strip()[:300] if last else f"(no output in {err})"


def describe_task(folder: Path, job_id: str, task: TaskState) -> str:
    """One line for a task: its state, why it waits, or the error that ended it."""
    line = f"task {task.index}: {task.state}"
    if task.state == "PENDING" and task.reason:
        line += f" ({task.reason})"
        if task.stuck:
            line += " — it will not start as submitted; change the --slurm-* options"
    elif task.ended and task.state != "COMPLETED":
        line += f": {first_error_line(folder, job_id, task.index)}"
        line += f" (log: {task_logs(folder, job_id, task.index)[0]})"
    return line
