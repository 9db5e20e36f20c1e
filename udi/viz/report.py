"""One self-contained HTML page about a run directory (images embedded as base64 PNG).

Sections: the run at a glance, training curves (``log.jsonl``), evaluation results,
attention maps and patch PCA on a few images, the resolved config (``config.yaml``).

Evaluation results are the files ``udi eval --out`` (``metrics.json``) and ``udi demo`` /
``udi compare`` (``compare.json``) write, found in the run directory and in its subfolders up
to two levels down (``RUN_DIR/eval/`` by convention). The report never runs the suite itself
(that can take minutes): with none found it says so and gives the command to run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml
from matplotlib.figure import Figure

from udi.eval.suite import comparison_rows
from udi.eval.tables import best_value
from udi.models.pretrained import load_backbone_and_srs
from udi.viz.attention import attention_figure
from udi.viz.curves import LOG_FILE, plot_curves, read_log
from udi.viz.images import dataset_views
from udi.viz.pca import patch_pca_figure

REPORT_FILE = "report.html"
CONFIG_FILE = "config.yaml"
RESULT_FILES = ("metrics.json", "compare.json")
RESULT_DEPTH = 2  # subfolder levels searched for evaluation results
NUM_IMAGES = 3

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; } td { text-align: right; } th { background: #f4f4f4; }
td.metric { text-align: left; } .note { color: #555; } pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def figure_data_uri(fig: Figure) -> str:
    """A figure rendered to PNG as a ``data:`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Figure, alt: str) -> str:
    return f'<img src="{figure_data_uri(fig)}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def find_eval_results(run_dir: str | Path) -> list[Path]:
    """``metrics.json`` / ``compare.json`` files in ``run_dir`` and up to ``RESULT_DEPTH`` levels below, sorted."""
    run_dir = Path(run_dir)
    found = set()
    for depth in range(RESULT_DEPTH + 1):
        for name in RESULT_FILES:
            found.update(run_dir.glob("/".join(["*"] * depth + [name])))
    return sorted(found)


def eval_rows(path: Path, run_name: str) -> dict[str, dict[str, float]]:
    """One table row per evaluated model of a results file (``summarize`` of its results)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read evaluation results {path}: {error}") from error
    if path.name == "compare.json":
        return comparison_rows(results)
    return comparison_rows({run_name: results})


def html_table(rows: dict[str, dict[str, float]]) -> str:
    """Metrics as rows, models as columns (wide metric lists stay readable); best per metric in bold
    (among the models: not the chance row)."""
    models = list(rows)
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    lines = [f"<table><tr><th>metric</th>{head}</tr>"]
    for metric in metrics:
        values = [rows[m].get(metric) for m in models]
        best = best_value(rows, metric)
        cells = "".join(
            "<td>-</td>" if v is None else (f"<td><b>{v:.2f}</b></td>" if v == best else f"<td>{v:.2f}</td>")
            for v in values
        )
        lines.append(f'<tr><td class="metric">{html.escape(metric)}</td>{cells}</tr>')
    return "\n".join(lines + ["</table>"])


def _eval_section(run_dir: Path, data: str | None) -> str:
    paths = find_eval_results(run_dir)
    if not paths:
        command = f"udi eval --weights {run_dir} --data {data or 'DATA'} --out {run_dir / 'eval'}"
        return _note(
            f"No evaluation results found in {run_dir} (looked for {' / '.join(RESULT_FILES)} in it and in its "
            f"subfolders up to {RESULT_DEPTH} levels down). To add them, run: {command} "
            "(or `udi report --eval PROTOCOLS`), then this report again."
        )
    parts = []
    for path in paths:
        try:
            rows = eval_rows(path, run_dir.name)
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # a foreign or older results file
            parts.append(_note(f"{path}: not readable as udi evaluation results ({type(error).__name__}: {error})"))
            continue
        parts.append(f"<h3>{html.escape(str(path.relative_to(run_dir)))}</h3>" + (
            html_table(rows) if any(rows.values()) else _note("no summarised metrics in this file"))
            + source_html(path))
    return "\n".join(parts)


SOURCE_FIELDS = (("weights", "weights"), ("step", "step"), ("method", "method"), ("data", "data"),
                 ("images_used", "images (train / val)"), ("data_sizes", "data set size (train / val)"),
                 ("image_size", "image size"), ("features", "features"), ("udi_version", "udi"), ("date", "date"))


def _source_value(key: str, value) -> str:
    if isinstance(value, dict) and key in ("images_used", "data_sizes"):
        return f"{value.get('train')} / {value.get('val')}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items())
    return "-" if value is None else str(value)


def source_html(path: Path) -> str:
    """What the results of ``path`` were measured on (their ``source``): a table, one column per
    model ('' for files written before udi recorded it)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return ""
    models = results if path.name == "compare.json" else {"": results}
    sources = {name: r["source"] for name, r in models.items() if isinstance(r, dict) and isinstance(r.get("source"), dict)}
    if not sources:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in sources) if path.name == "compare.json" else "<th></th>"
    lines = [f"<table><tr><th>measured on</th>{head}</tr>"]
    for key, label in SOURCE_FIELDS:
        cells = "".join(f'<td class="metric">{html.escape(_source_value(key, s.get(key)))}</td>' for s in sources.values())
        lines.append(f"<tr><th>{html.escape(label)}</th>{cells}</tr>")
    options = next(iter(sources.values())).get("options") or {}
    if options:
        text = ", ".join(f"{k}={v}" for k, v in options.items())
        lines.append(f'<tr><th>protocol options</th><td class="metric" colspan="{len(sources)}">{html.escape(text)}</td></tr>')
    return "\n".join(lines + ["</table>"])


def _curves_section(run_dir: Path) -> str:
    log = run_dir / LOG_FILE
    if not log.is_file():
        return _note(f"No {LOG_FILE} in {run_dir}: no training curves.")
    records = read_log(log)
    return _img(plot_curves(records, f"{run_dir.name}: {len(records)} log records"), "training curves")


def read_run_config(run_dir: Path) -> tuple[str | None, dict]:
    """Text and parsed mapping of ``config.yaml`` (None and {} if absent)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None, {}
    text = path.read_text()
    parsed = yaml.safe_load(text)
    return text, parsed if isinstance(parsed, dict) else {}


def config_data(cfg: dict) -> str | None:
    """The run's data set: ``data.name`` or ``data.path`` of its config."""
    data = cfg.get("data") or {}
    return data.get("name") or data.get("path")


def build_report(run_dir: str | Path, data: str | None = None, image_size: int | None = None,
                 device: torch.device | str = "cpu", num_points: int = 4) -> str:
    """The HTML of the report of ``run_dir`` (see the module doc).

    data: the data set whose images are shown (default: the run's); image_size: the model's
    input size for the pictures (default: its training size).
    """
    start = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        if run_dir.exists():
            raise NotADirectoryError(f"{run_dir} is a file; expected a run directory (the --out folder of udi pretrain)")
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    if not (run_dir / "backbone.safetensors").is_file() and not (run_dir / "checkpoint.pt").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: it has neither backbone.safetensors nor checkpoint.pt")
    config_text, cfg = read_run_config(run_dir)
    data = data or config_data(cfg)
    backbone, srs = load_backbone_and_srs(run_dir)
    backbone.to(device)
    if srs is not None:
        srs.to(device)
    size = image_size or backbone.img_size
    views, source = dataset_views(data, NUM_IMAGES, size, scenes_size=(cfg.get("data") or {}).get("scenes_size", 32))

    records = read_log(run_dir / LOG_FILE) if (run_dir / LOG_FILE).is_file() else []
    arch = f"ViT, {backbone.depth} blocks, dim {backbone.embed_dim}, {backbone.num_heads} heads, patch {backbone.patch_size}"
    facts = {
        "run directory": str(run_dir.resolve()),
        "method": cfg.get("method", "unknown (no config.yaml)"),
        "backbone": f"{(cfg.get('model') or {}).get('arch', '?')} ({arch}, {backbone.n_cls} class token(s), trained at {backbone.img_size} px)",
        "data": str(config_data(cfg) or "unknown"),
        "last logged step": str(records[-1].get("step", "?")) if records else "no log",
    }
    srs_note = ("SRS rows: the teacher's SRS module at randomly drawn patches (the cyan cross)." if srs is not None
                else "No SRS module in this run (only UDI runs with a checkpoint.pt have one): no SRS rows.")
    sections = [
        "<h2>Training curves</h2>", _curves_section(run_dir),
        "<h2>Evaluation</h2>", _eval_section(run_dir, data),
        "<h2>Attention maps</h2>",
        _note(f"{source[0].upper()}{source[1:]}; model input {size} px. Rows: each class token's attention over the patches in the last "
              f"block, per head. {srs_note}"),
        *(_img(attention_figure(backbone, srs, v, num_points), f"attention maps of {v.name}") for v in views),
        "<h2>Patch features (PCA)</h2>",
        _note("First three principal components of the last block's patch tokens, fitted jointly over these images; "
              "background (low first component, the side the borders fall on) in black."),
        _img(patch_pca_figure(backbone, views), "patch PCA"),
        "<h2>Config</h2>",
        f"<pre>{html.escape(config_text)}</pre>" if config_text is not None else _note(f"No {CONFIG_FILE} in {run_dir}."),
    ]
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td class='metric'>{html.escape(v)}</td></tr>" for k, v in facts.items())
    generated = f"generated {datetime.now():%Y-%m-%d %H:%M} by udi report in {time.perf_counter() - start:.1f} s"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>udi report: {html.escape(run_dir.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>udi report: {html.escape(run_dir.name)}</h1>", f"<table>{rows}</table>",
        *sections, _note(generated), "</body></html>",
    ])


def write_report(run_dir: str | Path, out: str | Path | None = None, **kwargs) -> Path:
    """Write ``build_report(run_dir, **kwargs)`` to ``out`` (default ``run_dir/report.html``)."""
    page = build_report(run_dir, **kwargs)
    path = Path(out) if out else Path(run_dir) / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
