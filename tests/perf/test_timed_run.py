"""``python -m bench.perf.timed_run``: the stage breakdown and the paired precision comparison."""

from __future__ import annotations

import pytest

from bench.perf.timed_run import main, paired_lines, stage_lines


def _record(precision: str, scores: list[float]) -> dict:
    return {
        "precision": precision,
        "command": f"python -m bench run --precision {precision}",
        "exit_code": 0,
        "wall_s": 50.0,
        "load_before": [0.1, 0.2, 0.3],
        "load_after": [1.0, 0.5, 0.4],
        "runs": [
            {
                "shots": "1",
                "draw": d,
                "precision": precision,
                "honest": s,
                "seconds": {"total": 20.0, "encoder": 5.0, "finetune_train": 10.0},
            }
            for d, s in enumerate(scores)
        ],
    }


def test_stages_add_up_to_the_wall_time():
    lines = stage_lines(_record("bf16", [0.30, 0.32]))
    assert "50.0 s wall, load 0.10/0.20/0.30 before, 1.00/0.50/0.40 after" in lines[0]
    assert "pretraining 5.0 s, fine-tuning steps 10.0 s, evaluations 0.0 s" in lines[1]
    assert lines[1].endswith("honest test mIoU 30.00 %")
    assert lines[-1] == "  start-up, data loading and storing: 10.0 s"  # 50 − 2 × 20


def test_paired_scores_differences_and_draw_noise():
    lines = paired_lines(_record("fp32", [0.30, 0.34, 0.26]), _record("bf16", [0.31, 0.33, 0.26]))
    assert lines[1] == "  1-shot draw 0: fp32 30.00, bf16 31.00, difference +1.00"
    assert lines[4] == "  mean difference +0.00 over 3 pair(s)"
    assert lines[5] == "  sd of the differences 1.00; sd across draws: fp32 4.00, bf16 3.61"


def test_an_unknown_precision_is_refused(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--precision", "fp16"])
    assert exited.value.code == 2
    assert "--precision: a comma list of auto, fp32, bf16" in capsys.readouterr().err
