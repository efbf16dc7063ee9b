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
        f"thread(s); command: {record['command']}",
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
