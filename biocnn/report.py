"""One self-contained HTML report for a results directory.

The task workflows leave, under ``<results>/<task>/report/``, a ``summary.json`` (metrics) and
PNG figures (optionally captioned by a ``figures.json`` mapping file name to caption). This
module gathers them, with the provenance of every trained model (config, seed, package
versions, training-data hash from each model directory's ``config.json``), into one HTML file
whose images are embedded as data URIs, so the report can be mailed or archived alone.

The batch runs over a user's unlabelled data have no metrics and no report folder of their
own: mammography's scored folders (``mammo/scores/<name>/``, written by ``mammo score``) and
segmentation's predicted image sets (``segment/<dataset>/predictions/<name>/``, written by
``segment predict``). Their counts and one figure each (the highest-probability Grad-CAM
overlay; the most uncertain case's overlay) are read from those folders directly.

:func:`check_in_browser` opens the report in headless Chromium, takes a screenshot and reports
how many images failed to load (the page records that itself once loaded).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from biocnn import __version__
from biocnn.errors import BiocnnError
from biocnn.io.atomic import write_text
from biocnn.io.paths import inside, safe_component

TASK_TITLES = {
    "mammo": "Mammography: malignancy classification",
    "segment": "Segmentation with uncertainty",
    "deepbind": "DeepBind binding models",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:18px 32px}header h1{margin:0 0 4px 0;font-size:24px}
main{padding:8px 32px 40px 32px;max-width:1400px}
section.task{background:#fff;border-radius:8px;padding:12px 24px 20px;margin:20px 0;box-shadow:0 1px 3px #0002}
h2{border-bottom:2px solid #1f3a5f;padding-bottom:4px}h3{margin-bottom:6px}
table{border-collapse:collapse;margin:6px 0 14px 0;font-size:13px}
td,th{border:1px solid #d5d9de;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;background:#fafbfc;border:1px solid #e1e4e8;border-radius:6px;padding:8px;max-width:440px}
figure img{max-width:420px;max-height:360px;display:block;margin:auto}
figcaption{font-size:12px;color:#444;margin-top:4px}
details{margin:6px 0}summary{cursor:pointer;color:#1f3a5f}
pre{background:#f3f4f6;padding:8px;font-size:11px;overflow:auto;max-height:300px}
.missing{color:#a00}
"""

# Records, once everything has loaded, how many images are there and how many failed; the
# browser check reads these attributes from the rendered DOM.
_IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken-images', broken);
});
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, (int, float)) for v in value):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, name + " / "))
        else:
            rows.append((name, value))
    return rows


def _cell(value: Any) -> str:
    """One table cell; a list of records (e.g. motif matches) becomes a small nested table."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v.get(c, '')))}</td>" for c in columns) + "</tr>" for v in value
        )
        return f"<td><table>{'<tr>' + head + '</tr>'}{rows}</table></td>"
    return f"<td class=num>{html.escape(_fmt(value))}</td>"


def metrics_table(data: dict[str, Any]) -> str:
    """An HTML table for a metrics mapping.

    A mapping whose values are all mappings (one entry per experiment, model or method)
    becomes a side-by-side table: one column per entry, one row per (flattened) metric.
    Anything else is a two-column key/value table.
    """
    values = list(data.values())
    if values and all(isinstance(v, dict) for v in values):
        flat = {name: dict(_flatten(v)) for name, v in data.items()}
        rows = list(dict.fromkeys(k for v in flat.values() for k in v))
        head = "".join(f"<th>{html.escape(str(name))}</th>" for name in flat)
        body = "".join(
            f"<tr><th>{html.escape(row)}</th>" + "".join(_cell(v.get(row, "")) for v in flat.values()) + "</tr>"
            for row in rows
        )
        return f"<table><tr><th></th>{head}</tr>{body}</table>"
    body = "".join(f"<tr><th>{html.escape(k)}</th>{_cell(v)}</tr>" for k, v in _flatten(data))
    return f"<table>{body}</table>"


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {"value": data}
    except (OSError, json.JSONDecodeError) as exc:
        return {"error": f"{path.name}: {exc}"}


def _provenance(task_dir: Path) -> str:
    """Every model directory under ``task_dir``: its seed, data hash, versions and config."""
    parts = []
    for config_path in sorted(task_dir.rglob("config.json")):
        if not (config_path.parent / "weights.safetensors").is_file():
            continue
        config = _read_json(config_path)
        prov = config.get("provenance", {})
        rel = config_path.parent.relative_to(task_dir)
        summary = {
            "seed": prov.get("seed", config.get("train", {}).get("seed")),
            "training data sha256": (prov.get("data_sha256") or "")[:16] + ("..." if prov.get("data_sha256") else ""),
            "versions": ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items()),
        }
        parts.append(
            f"<details><summary>model <code>{html.escape(str(rel))}</code>: seed {summary['seed']}, "
            f"data {html.escape(summary['training data sha256'] or 'n/a')}</summary>"
            f"{metrics_table(summary)}<pre>{html.escape(json.dumps(config, indent=2))}</pre></details>"
        )
    return "".join(parts)


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _figure_inside(folder: Path, name: str, caption: str) -> str:
    """The figure ``name`` read from a table of ``folder``, if it is a file inside it."""
    try:
        path = inside(folder, name)
    except BiocnnError:
        return ""
    return _image(path, caption) if path.is_file() else ""


def _mammo_score_sets(task_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Counts of every scored folder (``scores/<name>/summary.json``) and its top Grad-CAM."""
    table, figures = {}, []
    for summary in sorted((task_dir / "scores").glob("*/summary.json")):
        folder, name = summary.parent, summary.parent.name
        data = _read_json(summary)
        table[name] = {k: data.get(k) for k in ("files_seen", "scored", "failed", "exams", "flagged_images")}
        rows = [r for r in _read_rows(folder / "scores.csv") if r.get("heatmap")]
        if rows:
            top = max(rows, key=lambda r: float(r["probability"]))
            caption = (
                f"{name}: Grad-CAM of the highest-probability view, {top.get('laterality', '')} {top.get('view', '')}, "
                f"probability {float(top['probability']):.2f}"
            )
            figures.append(_figure_inside(folder, top["heatmap"], caption))
    return table, figures


def _segment_predict_sets(task_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Counts of every predicted image set (``<dataset>/predictions/<name>/``) and the overlay
    of its most uncertain case."""
    table, figures = {}, []
    for info in sorted(task_dir.glob("*/predictions/*/predict.json")):
        folder = info.parent
        name = f"{folder.parent.parent.name} / {folder.name}"
        data = _read_json(info)
        rows = _read_rows(folder / "uncertainty.csv")
        table[name] = {
            "inputs_seen": data.get("inputs_seen"),
            "outputs_written": data.get("outputs_written"),
            "failures": len(data.get("failures", [])),
            "flagged_for_review": len(data.get("flagged", [])),
            "mc_samples": data.get("mc_samples"),
        }
        if rows:
            top = max(rows, key=lambda r: float(r["score"]))
            caption = f"{name}: most uncertain case {top['case']} (review score {float(top['score']):.3g})"
            figures.append(_figure_inside(folder, f"{safe_component(top['case'])}_overlay.png", caption))
    return table, figures


# Batch runs over unlabelled data, per task: (heading, reader).
_BATCH_SETS = {
    "mammo": ("Scored folders", _mammo_score_sets),
    "segment": ("Predicted image sets", _segment_predict_sets),
}


def _batch_sets(task: str, task_dir: Path) -> str:
    if task not in _BATCH_SETS:
        return ""
    heading, reader = _BATCH_SETS[task]
    table, figures = reader(task_dir)
    if not table:
        return ""
    figures = [f for f in figures if f]
    out = f"<h3>{html.escape(heading)}</h3>{metrics_table(table)}"
    return out + (f"<div class=figures>{''.join(figures)}</div>" if figures else "")


def task_section(task: str, task_dir: Path) -> str:
    """The HTML section of one task: metrics, figures, model provenance."""
    title = TASK_TITLES.get(task, task)
    report_dir = task_dir / "report"
    batch = _batch_sets(task, task_dir)
    if not report_dir.is_dir() and not batch:
        return (
            f'<section class=task id="{task}"><h2>{html.escape(title)}</h2>'
            f"<p class=missing>No report outputs in {html.escape(str(report_dir))}.</p></section>"
        )
    out = [f'<section class=task id="{task}"><h2>{html.escape(title)}</h2>']
    summary = report_dir / "summary.json"
    if summary.is_file():
        data = _read_json(summary)
        out.append("<h3>Metrics</h3>")
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if scalars:
            out.append(metrics_table(scalars))
        for key, value in data.items():
            if isinstance(value, dict):
                out.append(f"<h4>{html.escape(str(key))}</h4>{metrics_table(value)}")
    captions = _read_json(report_dir / "figures.json") if (report_dir / "figures.json").is_file() else {}
    pngs = sorted(report_dir.rglob("*.png"))
    if pngs:
        out.append("<h3>Figures</h3><div class=figures>")
        for png in pngs:
            rel = str(png.relative_to(report_dir))
            caption = captions.get(rel) or rel.rsplit(".", 1)[0].replace("_", " ").replace("/", ": ")
            out.append(_image(png, str(caption)))
        out.append("</div>")
    out.append(batch)
    prov = _provenance(task_dir)
    if prov:
        out.append(f"<h3>Models and provenance</h3>{prov}")
    out.append("</section>")
    return "".join(out)


def build_report(
    results: str | Path, out: str | Path, tasks: list[str] | None = None, title: str = "biocnn report"
) -> Path:
    """Write the self-contained HTML report of ``results`` to ``out`` (atomically)."""
    results = Path(results)
    if not results.is_dir():
        raise BiocnnError(f"{results}: results directory not found")
    tasks = tasks or [t for t in TASK_TITLES if (results / t).is_dir()]
    env = _read_json(results / "environment.json") if (results / "environment.json").is_file() else {}
    nav = " · ".join(f'<a style="color:#fff" href="#{t}">{html.escape(TASK_TITLES.get(t, t))}</a>' for t in tasks)
    body = "".join(task_section(t, results / t) for t in tasks)
    env_html = f"<section class=task id=environment><h2>Environment</h2>{metrics_table(env)}</section>" if env else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style>
<script>{_IMAGE_CHECK}</script></head>
<body><header><h1>{html.escape(title)}</h1>
<div>results: {html.escape(str(results))} · biocnn {__version__} ·
generated {_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}</div><div>{nav}</div></header>
<main>{body}{env_html}</main></body></html>
"""
    write_text(out, page)
    return Path(out)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def check_in_browser(
    report: str | Path, screenshot: str | Path, width: int = 1400, height: int = 6000, timeout: int = 120
) -> dict[str, int]:
    """Render ``report`` in headless Chromium: save a screenshot, count images and broken images.

    Raises :class:`BiocnnError` when Chromium is missing or the page did not record its
    image counts (its script did not run).
    """
    chromium = find_chromium()
    if chromium is None:
        raise BiocnnError("headless Chromium not found (Debian: apt-get install chromium)")
    url = Path(report).resolve().as_uri()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        "--virtual-time-budget=5000",
    ]
    with tempfile.TemporaryDirectory() as profile:
        flags.append(f"--user-data-dir={profile}")
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=timeout)
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, *flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=timeout)
    match = re.search(r'data-images="(\d+)"[^>]*data-broken-images="(\d+)"', dom.stdout)
    if not match:
        raise BiocnnError(f"{report}: Chromium did not finish rendering the page ({dom.stderr.strip()[-200:]})")
    if not shot.is_file():
        raise BiocnnError(f"{report}: Chromium wrote no screenshot")
    return {"images": int(match.group(1)), "broken_images": int(match.group(2))}
