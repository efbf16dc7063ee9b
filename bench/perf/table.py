"""The table ``bench perf`` prints from its record."""

from __future__ import annotations

from typing import Any


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "—"
    if value and abs(value) < 10**-digits * 5:
        return f"{value:.3g}"
    return f"{value:,.{digits}f}"


def render_table(record: dict[str, Any]):
    from rich.table import Table

    sizes = record["sizes"]
    table = Table(
        title=f"bench perf — {record['device']} — torch {record['torch']} — "
        f"{record['date']} — profile {record['profile']}",
        caption=f"SSL: {sizes['ssl_encoder']}, batch {record['batch']}, "
        f"{record['view_size']}² views, {record['steps']} timed steps after "
        f"{record['warmup_steps']} warm-up; {record['torch_threads']} torch "
        f"thread(s); precision {record['precision']}; command: {record['command']}",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("unit")
    table.add_column("÷ ceiling", justify="right")
    table.add_column("÷ seed", justify="right")
    table.add_column(
        "peak GPU mem GB" if record["device_type"] == "cuda" else "peak RSS Δ GB", justify="right"
    )
    table.add_column("how")
    ceiling = record["ceiling"]
    table.add_row(
        "ceiling: ResNet-50 classifier",
        _fmt(record["ceiling_imgs_per_s"]),
        "img/s",
        "1.00",
        "",
        "",
        f"{ceiling['mode']}, batch {ceiling['batch']} at {ceiling['image_size']}²",
    )
    seed = record["seed_loop_view_passes_per_s"]
    table.add_row(
        "seed loop (MatSSL)",
        _fmt(seed),
        "view-passes/s",
        _fmt(seed / record["ceiling_imgs_per_s"], 2) if seed else "—",
        "1.00",
        "",
        f"PIL + torchvision, {record['seed_loop']['workers']} workers, fp32"
        + (f" — {record['seed_loop']['error']}" if record["seed_loop"]["error"] else ""),
    )
    cuda = record["device_type"] == "cuda"
    for name, entry in record["methods"].items():
        mem = entry.get("peak_mem_gb") if cuda else entry.get("peak_rss_delta_gb")
        how = entry.get("error") or (
            f"engine, {entry['view_passes_per_step']} view-passes/step"
            + (f", compiled: {entry['compiled']}" if entry.get("compiled") else "")
            + ("" if entry.get("loss_finite", True) else ", loss not finite")
        )
        table.add_row(
            f"engine: {name}",
            _fmt(entry["view_passes_per_s"]),
            "view-passes/s",
            _fmt(entry["ratio_to_ceiling"], 2),
            _fmt(entry["ratio_to_seed"], 2),
            _fmt(mem, 2),
            how,
        )
    ft = record["finetune"]
    evaluation = record["eval"]
    table.add_row(
        "evaluation",
        _fmt(evaluation["images_per_s"], 2),
        "images/s",
        "",
        "",
        "",
        evaluation.get("error")
        or f"{evaluation['arch']}/{evaluation['encoder']}, native "
        f"{'×'.join(map(str, evaluation['image_shape'] or []))}",
    )
    for shots, entry in ft["per_shots"].items():
        table.add_row(
            f"fine-tune {shots}-shot",
            _fmt(entry["steps_per_s"], 2),
            "steps/s",
            "",
            "",
            _fmt(entry.get("peak_mem_gb") if cuda else entry.get("peak_rss_delta_gb"), 2),
            entry.get("error")
            or f"{ft['arch']}/{ft['encoder']}, batch {entry['batch']} × {ft['crop']}²",
        )
    agg = record["aggregate"]
    for n, value in record["finetune_epochs_per_s_aggregate"].items():
        detail = agg["detail"].get(n, {})
        table.add_row(
            f"{n} concurrent 1-shot fine-tune(s)",
            _fmt(value, 2),
            "epochs/s (total)",
            "",
            "",
            "",
            detail.get("error")
            or f"{agg['arch']}/{agg['encoder']}, "
            f"{detail.get('threads_per_process')} thread(s)/process",
        )
    return table


def render_precision_table(record: dict[str, Any]):
    """fp32 against bf16 (``precision_compare``), with the ratio; None without both."""
    from rich.table import Table

    compare, ratios = record.get("precision_compare") or {}, record.get("precision_ratios")
    if ratios is None:
        return None
    full, low = compare["fp32"], compare["bf16"]
    table = Table(
        title="precision: fp32 against bf16 autocast + channels_last, same run",
        caption=f"other figures above at {record['precision']} ({record['precision_reason']})",
    )
    for name, justify in (("measure", "left"), ("unit", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name in ("fp32", "bf16", "bf16 ÷ fp32"):
        table.add_column(name, justify="right")

    def row(label: str, unit: str, a: float | None, b: float | None, r: float | None) -> None:
        table.add_row(label, unit, _fmt(a, 2), _fmt(b, 2), _fmt(r, 2))

    row(
        "ceiling: ResNet-50 classifier",
        "img/s",
        full["ceiling_imgs_per_s"],
        low["ceiling_imgs_per_s"],
        ratios["ceiling_imgs_per_s"],
    )
    for name, entry in full["methods"].items():
        row(
            f"engine: {name}",
            "view-passes/s",
            entry["view_passes_per_s"],
            low["methods"][name]["view_passes_per_s"],
            ratios["methods"][name],
        )
    for shots, value in full["finetune_steps_per_s"].items():
        row(
            f"fine-tune {shots}-shot",
            "steps/s",
            value,
            low["finetune_steps_per_s"][shots],
            ratios["finetune_steps_per_s"][shots],
        )
    row(
        "evaluation, native resolution",
        "images/s",
        full["eval_images_per_s"],
        low["eval_images_per_s"],
        ratios["eval_images_per_s"],
    )
    return table
