"""``bench controls``: can the frozen-encoder probe see a pretraining effect? A positive and a
negative control on generated micrographs (no data files needed).

Positive: an encoder pretrained (supervised) on a pool of generated micrographs, against the random
init it started from. Structure: that encoder against the same pretraining, same budget, on
pure-noise images. Negative: the noise pretraining repeated on other noise, against the first
(two information-free pretrainings must not differ). Training: the noise encoder against random
init (what training as such changes; reported without a verdict). Every encoder is probed on the
same shot draws; the exact sign-flip test over all 2^n sign patterns gives p, a Student-t interval
the CI of the mean difference. Writes ``controls.json``, ``controls.md`` and ``controls.png`` in
``--out``; exits with status 1 when a comparison does not show what it must.
"""

from __future__ import annotations

import argparse
import shlex

from bench.core.errors import BenchError

OPTIONS = ("draws", "shots", "pool", "noise", "steps", "size", "test", "device", "threads", "out")
MIN_DRAWS = 6
"""The exact two-sided test's smallest p is 2/2^n: n ≥ 6 draws can reach p < 0.05."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "controls",
        help="positive and negative controls of the probe on generated data (writes "
        "controls.json/.md/.png)",
        description=__doc__,
    )
    p.add_argument("--draws", type=int, default=10, help="distinct shot draws (default: 10)")
    p.add_argument("--shots", type=int, default=2, help="labeled images per draw (default: 2)")
    p.add_argument(
        "--pool", type=int, default=1200, help="images of each pretraining pool (default: 1200)"
    )
    p.add_argument(
        "--noise",
        default="white",
        choices=["white", "spectral"],
        help="the negative pool: i.i.d. Gaussian pixels, or micrograph power spectra with "
        "random phases (default: white)",
    )
    p.add_argument("--steps", type=int, default=150, help="pretraining steps (default: 150)")
    p.add_argument("--size", type=int, default=128, help="generated image side (default: 128)")
    p.add_argument("--test", type=int, default=6, help="test images (default: 6)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.set_defaults(func=main, defaults={name: p.get_default(name) for name in OPTIONS})


def main(args: argparse.Namespace) -> int:
    import dataclasses
    import time
    from pathlib import Path

    import torch
    from rich.markup import escape

    from bench.controls.experiment import ControlsConfig, run_controls
    from bench.controls.pretrain import PretrainSettings
    from bench.controls.report import plot, to_json, to_markdown, write_json
    from bench.core.console import console, err_console
    from bench.core.devices import describe_device, resolve_device
    from bench.core.provenance import git_commit

    if args.draws < MIN_DRAWS:
        raise BenchError(
            f"--draws {args.draws}: the exact test needs ≥ {MIN_DRAWS} draws to reach p < 0.05"
        )
    for flag in ("shots", "pool", "steps", "size", "test"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag} must be ≥ 1")
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError("--threads must be ≥ 1")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    base = ControlsConfig()
    cfg = dataclasses.replace(
        base,
        draws=args.draws,
        shots=args.shots,
        pool=args.pool,
        noise=args.noise,
        size=args.size,
        test=args.test,
        pretrain=dataclasses.replace(PretrainSettings(), steps=args.steps),
    )
    if cfg.pretrain.crop > cfg.size:
        cfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, crop=cfg.size))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    command = _command(args)
    commit = git_commit()  # the code that runs, before anything can change the checkout
    started = time.perf_counter()
    try:
        outcome = run_controls(
            cfg, device, lambda msg: err_console.print(f"[dim]controls:[/] {escape(msg)}")
        )
    except ValueError as exc:
        raise BenchError(f"controls: {exc}") from None
    extra = {
        "command": command,
        "device": describe_device(device),
        "threads": torch.get_num_threads(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    data = to_json(outcome, commit, extra)
    write_json(out / "controls.json", data)
    (out / "controls.md").write_text(to_markdown(data, command), encoding="utf-8")
    plot(outcome).savefig(out / "controls.png", dpi=120)
    for row in data["controls"]:
        low, high = row["ci95"]
        console.print(
            f"{row['control']}: Δ mIoU {100 * row['mean_diff']:+.1f} points "
            f"[{100 * low:+.1f}, {100 * high:+.1f}], p = {row['p']:.4f}, "
            f"{row['wins']}/{row['n_draws']} wins, expected {row['expect']}"
            + ("" if row["passed"] is None else ": passed" if row["passed"] else ": FAILED"),
            markup=False,
            highlight=False,
        )
    console.print(f"wrote {out / 'controls.json'}, controls.md, controls.png", markup=False)
    return 1 if any(row["passed"] is False for row in data["controls"]) else 0


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the options that differ from the defaults)."""
    parts = ["python", "-m", "bench", "controls"]
    for name in OPTIONS:
        value = getattr(args, name)
        if value != args.defaults[name]:
            parts += [f"--{name}", str(value)]
    return shlex.join(parts)
