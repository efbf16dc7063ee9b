"""Which stage's precision moves a score: pretraining and fine-tuning at fp32 and bf16, crossed.

    python -m bench.perf.precision_stages [--method matssl] [--dataset metaldam] [--shots 1]
        [--draws 5] [--profile quick] [--pretrain fp32,bf16] [--finetune fp32,bf16]
        [--seed-per-draw] [--data-root DIR] [--out FILE]

For every draw it pretrains the method's encoder once per precision (the two share the run's
seed, data and recipe; only the forward passes' precision differs) and fine-tunes each
encoder once per precision: four honest test scores per draw (``--pretrain`` and ``--finetune``
choose the precisions of each stage). It prints them, then the paired comparisons over the draws
(``COMPARISONS``: bf16 pretraining under either fine-tuning, bf16 fine-tuning, both) for the
cells that were run (``bench.controls.paired``: mean difference, 95% t-interval, exact sign-flip
p), each at the validation-selected step (the reported score) and at the last step (no
selection, so the checkpoint choice adds no noise). A method that does not use the labels
pretrains once per precision and seed, so with one seed (the default) the draws vary only the
shots and a pretraining difference is one pair of encoders seen through several draws;
``--seed-per-draw`` (run seed = draw) gives every draw its own pretrainings. Nothing is stored;
pretrainings go to a temporary cache. A measurement, not a test: minutes per draw on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
from pathlib import Path

from bench.controls.paired import paired_test
from bench.core.devices import resolve_device
from bench.core.precision import precision_list, resolve_precision
from bench.data.sources import resolve_data_root
from bench.runner import RunEnv, RunSpec, finetune_prepared, prepare
from bench.ssl.engine import encoder_for

STAGE_PRECISIONS = ("fp32", "bf16")
CELLS = list(itertools.product(STAGE_PRECISIONS, STAGE_PRECISIONS))
"""(pretraining precision, fine-tuning precision)."""
COMPARISONS = (
    ("bf16/fp32", "fp32/fp32"),  # bf16 pretraining, fine-tuned in fp32
    ("bf16/bf16", "fp32/bf16"),  # bf16 pretraining, fine-tuned in bf16
    ("fp32/bf16", "fp32/fp32"),  # bf16 fine-tuning of an fp32 encoder
    ("bf16/bf16", "fp32/fp32"),  # both stages
)
"""(treated cell, baseline cell): each differs from its baseline in the stages it names."""


def draw_cells(
    spec: RunSpec,
    env: RunEnv,
    pretrain: tuple[str, ...] = STAGE_PRECISIONS,
    finetune: tuple[str, ...] = STAGE_PRECISIONS,
) -> dict[str, dict[str, float]]:
    """The cells of one draw: ``"<pretrain>/<finetune>"`` → honest test mIoU (%) at the
    validation-selected step (``selected``) and at the last step (``last``)."""
    run = prepare(spec, env)
    scores: dict[str, dict[str, float]] = {}
    for pre in pretrain:
        encoder = encoder_for(run.method, dataclasses.replace(run.ctx, precision=pre))
        for fine in finetune:
            cell_env = dataclasses.replace(env, precision=resolve_precision(fine, env.device))
            label = f"{spec.method} draw {spec.draw} pretrain {pre} fine-tune {fine}"
            result = finetune_prepared(run, cell_env, encoder.weights, label)
            scores[f"{pre}/{fine}"] = {
                "selected": 100 * result.selected.test["honest"].score,
                "last": 100 * result.evals[-1].test["honest"].score,
            }
    return scores


def comparison_lines(draws: list[dict[str, dict[str, float]]]) -> list[str]:
    """The per-draw cells and the three paired comparisons against fp32/fp32."""
    lines = ["honest test mIoU (%), selected step / last step, per draw:"]
    for index, cells in enumerate(draws):
        row = ", ".join(f"{name} {v['selected']:.2f}/{v['last']:.2f}" for name, v in cells.items())
        lines.append(f"  draw {index}: {row}")
    if len(draws) < 2:
        return lines
    lines.append("paired differences (percentage points; mean [95% CI], sign-flip p):")
    for treated, baseline in COMPARISONS:
        if treated not in draws[0] or baseline not in draws[0]:
            continue
        parts = []
        for at in ("selected", "last"):
            test = paired_test([d[treated][at] for d in draws], [d[baseline][at] for d in draws])
            parts.append(
                f"{at} {test.mean_diff:+.2f} [{test.ci_low:+.2f}, {test.ci_high:+.2f}] "
                f"p={test.p_value:.3f}"
            )
        lines.append(f"  {treated} − {baseline}: " + "; ".join(parts) + f" (n={len(draws)})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.perf.precision_stages",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--method", default="matssl")
    parser.add_argument("--dataset", default="metaldam")
    parser.add_argument("--shots", default="1")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data-root", help="data root (default: BENCH_DATA_ROOT or datasets/)")
    parser.add_argument("--out", type=Path, help="also write the cells as JSON (after each draw)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument(
        "--seed-per-draw",
        action="store_true",
        help="run seed = draw: every draw its own pretrainings (default: seed 0, so a method "
        "that does not use the labels pretrains once per precision for all draws)",
    )
    for stage in ("pretrain", "finetune"):
        parser.add_argument(
            f"--{stage}",
            default="fp32,bf16",
            help=f"comma list of the {stage} precisions to cross (default: fp32,bf16)",
        )
    args = parser.parse_args(argv)
    stages = {}
    for stage in ("pretrain", "finetune"):
        try:
            stages[stage] = precision_list(getattr(args, stage), STAGE_PRECISIONS)
        except ValueError as exc:
            parser.error(f"--{stage}: {exc}")
    draws: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-precision-stages-") as cache:
        device = resolve_device(args.device)
        env = RunEnv(resolve_data_root(args.data_root), None, device, Path(cache))
        for draw in range(args.draws):
            spec = RunSpec(
                args.method,
                args.dataset,
                shots=args.shots,
                draw=draw,
                profile=args.profile,
                seed=draw if args.seed_per_draw else 0,
            )
            draws.append(draw_cells(spec, env, stages["pretrain"], stages["finetune"]))
            if args.out:
                args.out.write_text(json.dumps(draws, indent=2) + "\n")
    print("\n".join(comparison_lines(draws)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
