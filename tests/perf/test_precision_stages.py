"""``python -m bench.perf.precision_stages``: the per-draw cells and the paired comparisons."""

from __future__ import annotations

from bench.perf.precision_stages import CELLS, comparison_lines


def _draw(base: float, pretrain_bf16: float, finetune_bf16: float) -> dict:
    """Cells whose bf16 pretraining adds ``pretrain_bf16`` and bf16 fine-tuning
    ``finetune_bf16`` points; the last step scores one point below the selected one."""
    cells = {}
    for pre, fine in CELLS:
        score = base + pretrain_bf16 * (pre == "bf16") + finetune_bf16 * (fine == "bf16")
        cells[f"{pre}/{fine}"] = {"selected": score, "last": score - 1}
    return cells


def test_each_stage_is_compared_with_the_all_fp32_cell():
    lines = comparison_lines([_draw(20, -3, 0.5), _draw(25, -2, -0.5), _draw(30, -4, 0)])
    assert lines[1] == (
        "  draw 0: fp32/fp32 20.00/19.00, fp32/bf16 20.50/19.50, "
        "bf16/fp32 17.00/16.00, bf16/bf16 17.50/16.50"
    )
    pretrain, pretrain_bf16, finetune, both = lines[5:9]
    assert pretrain.startswith("  bf16/fp32 − fp32/fp32: selected -3.00 [-5.48, -0.52] p=0.250")
    assert "; last -3.00 [" in pretrain and pretrain.endswith("(n=3)")
    assert pretrain_bf16.startswith("  bf16/bf16 − fp32/bf16: selected -3.00 [-5.48, -0.52]")
    assert finetune.startswith("  fp32/bf16 − fp32/fp32: selected +0.00 [")
    assert both.startswith("  bf16/bf16 − fp32/fp32: selected -3.00 [")


def test_one_draw_has_no_comparison():
    lines = comparison_lines([_draw(20, -3, 0)])
    assert len(lines) == 2 and lines[1].startswith("  draw 0: fp32/fp32 20.00/19.00")


def test_comparisons_need_their_cells():
    only_pretraining = [
        {k: v for k, v in _draw(b, -3, 0).items() if k.endswith("/fp32")} for b in (20, 25)
    ]
    lines = comparison_lines(only_pretraining)
    assert lines[-1].startswith("  bf16/fp32 − fp32/fp32: selected -3.00 [")
    assert sum("−" in line for line in lines) == 1


def test_an_unknown_stage_precision_is_refused(capsys):
    import pytest

    from bench.perf.precision_stages import main

    with pytest.raises(SystemExit) as exited:
        main(["--finetune", "fp16"])
    assert exited.value.code == 2
    assert "--finetune: a comma list of fp32, bf16" in capsys.readouterr().err
