"""`GET /dashboard`: the operator's page, server-rendered HTML with no external assets and no JavaScript.

Totals by status, a table by category, the last 24 hours and the last 7 days as
inline SVG charts, and the latest failures with links to the records. The page
reuses the report functions, so its numbers are the endpoints' numbers.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import timedelta
from html import escape

import falcon

from .db import Database
from .reports import bucket_start, summary, timeseries
from .states import STATUSES
from .timeutil import from_text, to_text, utc_now_text

COLORS = {"pending": "#b7791f", "processed": "#2f855a", "failed": "#c53030"}
STYLE = """
:root { color-scheme: light; --ink: #1a202c; --muted: #4a5568; --line: #e2e8f0; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: #f7fafc; }
header, main { max-width: 1100px; margin: 0 auto; padding: 12px 16px; }
header { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: baseline; }
h1 { font-size: 1.35rem; margin: 0; } h2 { font-size: 1.05rem; margin: 24px 0 8px; }
header p { margin: 0; color: var(--muted); } a { color: #2b6cb0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card b { display: block; font-size: 1.7rem; font-variant-numeric: tabular-nums; }
.card span { color: var(--muted); text-transform: capitalize; }
.card.pending b { color: #b7791f; } .card.processed b { color: #2f855a; } .card.failed b { color: #c53030; }
.scroll { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
td.err { max-width: 28rem; overflow-wrap: anywhere; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figcaption { color: var(--muted); font-size: .9rem; margin-bottom: 4px; }
svg { width: 100%; height: auto; display: block; }
.legend { display: flex; gap: 14px; font-size: .85rem; color: var(--muted); margin-top: 4px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
.legend .pending { background: #b7791f; } .legend .processed { background: #2f855a; }
.legend .failed { background: #c53030; }
.empty { color: var(--muted); padding: 12px; }
""".strip()
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HTML_HEADERS = {
    # No scripts at all; the one stylesheet is inline and allowed by its hash.
    "Content-Security-Policy": (f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'self' data:; "
                                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def bar_chart(series: dict, title: str, label: Callable[[str], str]) -> str:
    """Stacked bars of records created per bucket, by current status, as inline SVG."""
    items = series["items"]
    width, height, left, bottom, top = 640, 220, 40, 28, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([sum(i[s] for s in STATUSES) for i in items] + [1])
    step = plot_w / max(len(items), 1)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e2e8f0"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="13" text-anchor="end" fill="#4a5568">'
                     f'{round(peak * frac)}</text>')
    every = max(1, len(items) // 6)
    for n, item in enumerate(items):
        x, y = left + n * step + step * 0.12, top + plot_h
        for status in STATUSES:
            h = plot_h * item[status] / peak
            if h > 0:
                y -= h
                parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.76:.1f}" height="{h:.1f}" '
                             f'fill="{COLORS[status]}"><title>{escape(item["start"])} {status}: {item[status]}'
                             f'</title></rect>')
        if n % every == 0:
            parts.append(f'<text x="{left + n * step + step / 2:.1f}" y="{height - 8}" font-size="13" '
                         f'text-anchor="middle" fill="#4a5568">{escape(label(item["start"]))}</text>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="{s}"></i>{s}</span>' for s in STATUSES)
    return (f'<figure data-chart="{escape(series["bucket"])}"><figcaption>{escape(title)}</figcaption>'
            f'{"".join(parts)}<div class="legend">{legend}</div></figure>')


class Dashboard:
    """The state of the system at a glance."""

    def __init__(self, db: Database, project_name: str = "Workflow Service",
                 now: Callable[[], str] = utc_now_text):
        self.db, self.project_name, self.now = db, project_name, now

    def on_get(self, req, resp):
        stamp = self.now()  # one "now" for every part of the page

        def now() -> str:
            return stamp

        report = summary(self.db, {}, now)
        day = timeseries(self.db, {"bucket": "hour"}, now)
        week_start = bucket_start(from_text(stamp) - timedelta(days=6), "day")
        week = timeseries(self.db, {"bucket": "day", "date_from": to_text(week_start)}, now)
        with self.db.read() as s:
            failures = s.all("latest_failures", {"limit": 10})
        base = req.root_path
        totals = report["totals"]
        cards = "".join(
            f'<div class="card {name}" data-total="{name}"><b>{totals[name]}</b><span>{name}</span></div>'
            for name in ("all", *STATUSES))
        rows = "".join(
            f'<tr data-category="{escape(c["category"])}"><td>{escape(c["category"])}</td>'
            + "".join(f'<td class="n" data-field="{k}">{c[k]}</td>' for k in ("count", *STATUSES)) + "</tr>"
            for c in report["by_category"]) or '<tr><td colspan="5" class="empty">No records yet.</td></tr>'
        fails = "".join(
            f'<tr><td>{escape(r["processed_at"] or "")}</td>'
            f'<td><a href="{escape(base)}/records/{escape(r["id"])}">{escape(r["id"][:8])}…</a></td>'
            f'<td>{escape(r["category"])}</td><td class="err">{escape(r["error"] or "")}</td></tr>'
            for r in failures) or '<tr><td colspan="4" class="empty">No failures.</td></tr>'
        resp.content_type = falcon.MEDIA_HTML
        for name, value in HTML_HEADERS.items():
            resp.set_header(name, value)
        resp.text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="60">
<title>{escape(self.project_name)} · dashboard</title>
<style>{STYLE}</style></head>
<body><header><h1>{escape(self.project_name)}</h1>
<p>Generated {escape(report["generated_at"])} (UTC) · <a href="{escape(base)}/reports/summary">summary JSON</a>
· <a href="{escape(base)}/docs">API docs</a></p></header>
<main>
<section class="cards" aria-label="Totals by status">{cards}</section>
<h2>Records created</h2>
<div class="charts">
{bar_chart(day, "Last 24 hours, per hour", lambda s: s[11:16])}
{bar_chart(week, "Last 7 days, per day", lambda s: s[5:10])}
</div>
<h2>By category</h2>
<div class="scroll"><table id="by-category"><thead><tr><th>Category</th><th class="n">Count</th>
<th class="n">Pending</th><th class="n">Processed</th><th class="n">Failed</th></tr></thead>
<tbody>{rows}</tbody></table></div>
<h2>Latest failures</h2>
<div class="scroll"><table id="failures"><thead><tr><th>When (UTC)</th><th>Record</th><th>Category</th>
<th>Error</th></tr></thead><tbody>{fails}</tbody></table></div>
</main></body></html>"""

