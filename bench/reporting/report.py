"""One self-contained HTML report: leaderboard tables, figures and run metadata.

Everything is inline (CSS, figures as base64 PNG, a small script), so the file opens offline and
can be mailed or archived as is. The script marks ``<body>`` with ``data-images-ok`` (every
``<img>`` decoded), ``data-image-count`` and ``data-table-count`` once the page has loaded.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench import __version__
from bench.reporting.leaderboard import METHODS_NOTE, Leaderboard, Section
from bench.reporting.plots import PlotSet, png_bytes
from bench.reporting.tables import DisplayTable, to_html
from bench.results.frames import Results

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#d9e2ec; --band:#f5f7fa; --accent:#2f6fde;
        --reported:#b7791f; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
       sans-serif; color:var(--ink); background:#fff; }
header { background:var(--ink); color:#fff; padding:28px 40px; }
header h1 { margin:0 0 6px; font-size:26px; }
header p { margin:2px 0; color:#cbd2d9; }
main { max-width:1180px; margin:0 auto; padding:24px 40px 64px; }
nav ol { columns:2; padding-left:20px; }
nav a, a { color:var(--accent); text-decoration:none; }
h2 { border-bottom:2px solid var(--line); padding-bottom:6px; margin-top:48px; }
h3 { margin-top:32px; }
.explain { background:var(--band); border-left:4px solid var(--accent); padding:10px 16px;
           color:var(--muted); font-size:14px; }
figure { margin:18px 0 26px; }
figure.table { overflow-x:auto; }
figcaption { font-weight:600; margin-bottom:6px; }
table { border-collapse:collapse; font-variant-numeric:tabular-nums; font-size:14px; }
th, td { padding:5px 10px; border-bottom:1px solid var(--line); white-space:nowrap; }
thead th { background:var(--band); text-align:right; border-bottom:2px solid var(--line); }
thead th:first-child, tbody th { text-align:left; }
td { text-align:right; }
tbody tr:nth-child(even) { background:#fafbfc; }
td.best { background:#e6f0ff; }
.note { color:var(--muted); font-size:13px; margin:6px 0 0; white-space:normal; }
figure.reported { border-left:4px solid var(--reported); padding-left:12px; }
figure.reported figcaption::before { content:"LITERATURE"; font-size:11px; letter-spacing:.08em;
  color:#fff; background:var(--reported); border-radius:3px; padding:1px 6px; margin-right:8px; }
figure.reported tbody th, figure.reported td { font-style:italic; color:#5c4813; }
figure.reported td:last-child, figure.reported thead th:last-child { text-align:left;
  white-space:normal; }
.meta td, .meta thead th { text-align:left; }
figure.plot img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
.notes li { color:var(--muted); }
details { margin:8px 0; }
summary { cursor:pointer; font-weight:600; }
pre { background:var(--band); padding:10px; overflow-x:auto; font-size:12px; }
"""
CHECK_SCRIPT = """
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const body = document.body;
  body.dataset.imagesOk = String(images.every(img => img.complete && img.naturalWidth > 0));
  body.dataset.imageCount = String(images.length);
  body.dataset.tableCount = String(document.querySelectorAll("table").length);
});
"""


def build_report(results: Results, board: Leaderboard, plots: PlotSet) -> str:
    """The report as one HTML string."""
    body = [
        _section(
            "how-to-read", "How to read the tables", f'<p class="explain">{_e(METHODS_NOTE)}</p>'
        ),
        *(_leaderboard_section(i, s) for i, s in enumerate(board.sections)),
        _section("figures", "Figures", _figures(plots)),
        _section("runs", "Runs and environment", _metadata(results)),
    ]
    toc = "".join(f'<li><a href="#{anchor}">{_e(title)}</a></li>' for anchor, title in _toc(board))
    runs = results.runs
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MicroSSL-Bench report</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>MicroSSL-Bench report</h1>
<p>{len(runs)} succeeded runs · {runs.dataset.nunique()} dataset(s)
 · {runs.method.nunique()} method(s) · store <code>{_e(results.store_url)}</code></p>
<p>Generated {board.generated:%Y-%m-%d %H:%M} UTC by microssl-bench {__version__}</p>
</header>
<main>
<nav><h2>Contents</h2><ol>{toc}</ol></nav>
{"".join(body)}
</main>
<script>{CHECK_SCRIPT}</script>
</body>
</html>
"""


def write_report(text: str, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out


def _toc(board: Leaderboard) -> list[tuple[str, str]]:
    return [
        ("how-to-read", "How to read the tables"),
        *((f"section-{i}", s.title) for i, s in enumerate(board.sections)),
        ("figures", "Figures"),
        ("runs", "Runs and environment"),
    ]


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{content}</section>'


def _leaderboard_section(index: int, section: Section) -> str:
    parts = [f"<p>Protocol: {_e(section.description)}.</p>" if section.description else ""]
    parts += [to_html(table) for table in section.tables]
    parts += [f'<p class="note">Note: {_e(note)}</p>' for note in section.notes]
    return _section(f"section-{index}", section.title, "".join(parts))


def _figures(plots: PlotSet) -> str:
    parts = []
    for plot in plots.plots:
        data = base64.b64encode(png_bytes(plot.figure)).decode("ascii")
        parts.append(
            f'<figure class="plot" id="plot-{_e(plot.name)}"><figcaption>'
            f'{_e(plot.caption)}</figcaption><img alt="{_e(plot.caption)}" '
            f'src="data:image/png;base64,{data}"></figure>'
        )
    if plots.notes:
        items = "".join(f"<li>{_e(note)}</li>" for note in plots.notes)
        parts.append(f'<h3>Figures not drawn</h3><ul class="notes">{items}</ul>')
    return "".join(parts) or "<p>No figures.</p>"


def _metadata(results: Results) -> str:
    runs = results.runs
    versions = pd.DataFrame(list(runs.versions.map(lambda v: v or {}))).fillna("–").astype(str)
    environment = versions.assign(device=runs.device.values, host=runs.host.values)
    parts = [
        _frame_table(
            "environment",
            "Library versions, devices and hosts (runs per combination)",
            _counts(environment),
        ),
        _frame_table("commits", "Code versions (git commit of the harness)", _commits(runs)),
        _frame_table("dates", "When the runs ran (UTC)", _dates(runs)),
        "<h3>Configurations</h3>",
        '<p class="note">One per method variant, dataset and profile: the configuration of its '
        "first run (draw, seed and shots differ between its runs).</p>",
        *_configs(runs),
        f"<details><summary>Every run ({len(runs)})</summary>"
        f"{_frame_table('all-runs', 'Every succeeded run', _run_list(runs))}</details>",
    ]
    return f'<div class="meta">{"".join(parts)}</div>'


def _counts(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.value_counts().rename("runs").reset_index()


def _commits(runs: pd.DataFrame) -> pd.DataFrame:
    grouped = runs.assign(git_commit=runs.git_commit.fillna("unknown")).groupby("git_commit")
    table = grouped.agg(
        runs=("id", "size"), first=("started_at", "min"), last=("started_at", "max")
    )
    return _dates_as_text(table.reset_index())


def _dates(runs: pd.DataFrame) -> pd.DataFrame:
    grouped = runs.groupby(["dataset", "profile"])
    table = grouped.agg(
        runs=("id", "size"), first_started=("started_at", "min"), last_ended=("ended_at", "max")
    )
    return _dates_as_text(table.reset_index())


def _configs(runs: pd.DataFrame) -> Iterable[str]:
    for row in runs.drop_duplicates(["label", "dataset", "profile"]).itertuples():
        text = json.dumps(row.config, indent=2, sort_keys=True, default=str)
        yield (
            f"<details><summary>{_e(row.label)} · {_e(row.dataset)} · {_e(row.profile)}"
            f"</summary><pre>{_e(text)}</pre></details>"
        )


def _run_list(runs: pd.DataFrame) -> pd.DataFrame:
    seconds = (runs.ended_at - runs.started_at).dt.total_seconds().round(1)
    columns = [
        "id",
        "label",
        "dataset",
        "split",
        "shots_label",
        "draw",
        "profile",
        "encoder",
        "arch",
        "device",
        "started_at",
    ]
    return _dates_as_text(runs[columns].assign(seconds=seconds))


def _frame_table(key: str, title: str, frame: pd.DataFrame) -> str:
    cells = frame.astype(str)
    first = cells.columns[0]
    table = DisplayTable(key, title, cells.set_index(first).rename_axis(first))
    return to_html(table)


def _dates_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Timestamp columns as 'YYYY-MM-DD HH:MM' (UTC)."""
    dates = frame.select_dtypes(include=["datetime", "datetimetz"]).columns
    return frame.assign(**{c: frame[c].dt.strftime("%Y-%m-%d %H:%M") for c in dates})


def _e(text: object) -> str:
    return html.escape(str(text))
