"""Training curves from a run's ``log.jsonl`` (one JSON object per logged step).

Whatever numeric keys the log has are plotted, so logs of other methods work too: the known
schedule keys each get a panel (``SCHEDULE_PANELS``); every other numeric key is taken as a
loss term and drawn in the "loss terms" panel, unless its typical size is more than
``SCALE_RATIO`` times off that of ``loss`` (then it is some other quantity, e.g. a count, and
gets a panel of its own so that it does not flatten the losses). The online k-NN accuracies
(``knn_*`` keys, ``train.eval_every``) share one panel, drawn at the steps that have them. The x axis is the first of ``STEP_KEYS`` that every
record has (else the line number); epoch starts are marked with dotted lines.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

from matplotlib.figure import Figure

LOG_FILE = "log.jsonl"
STEP_KEYS = ("step", "iteration", "iter", "global_step")
AXIS_KEYS = (*STEP_KEYS, "epoch")
SCHEDULE_PANELS = {
    "lr": "learning rate",
    "wd": "weight decay",
    "momentum": "teacher momentum",
    "teacher_temp": "teacher temperature",
    "images_per_sec": "images per second",
    "failed_images": "undecodable images (total)",
}
KNN_PREFIX = "knn_"  # online k-NN top-1 of the teacher (udi.train.monitor)
SCALE_RATIO = 10.0
PANEL_PX = (480, 300)  # (width, height) of one panel in the PNG
DPI = 100


def read_log(path: str | Path) -> list[dict]:
    """The records of a ``log.jsonl``; damaged lines (a crash mid-write) are skipped with a warning."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (expected the {LOG_FILE} that `udi pretrain` writes in its run directory: "
            "one JSON object per logged step)"
        )
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            warnings.warn(f"{path}: line {number} is not valid JSON; skipped")
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            warnings.warn(f"{path}: line {number} is not a JSON object; skipped")
    if not records:
        raise ValueError(f"{path} has no log records (expected one JSON object per line)")
    return records


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_keys(records: list[dict]) -> list[str]:
    """Keys with a numeric value in some record, in order of first appearance, axis keys left out."""
    keys: dict[str, None] = {}
    for record in records:
        keys.update({k: None for k, v in record.items() if _is_number(v) and k not in AXIS_KEYS})
    return list(keys)


def _typical_size(records: list[dict], key: str) -> float:
    """Median absolute value of ``key`` over the records that have it as a number."""
    values = sorted(abs(r[key]) for r in records if _is_number(r.get(key)))
    return values[len(values) // 2]


def panels(records: list[dict]) -> list[tuple[str, list[str]]]:
    """(title, keys) of each panel: the loss terms first, then other unknown keys of a different
    size, one panel each, then each schedule key present (``failed_images`` only when some image failed)."""
    keys = numeric_keys(records)
    knn = [k for k in keys if k.startswith(KNN_PREFIX)]
    unknown = [k for k in keys if k not in SCHEDULE_PANELS and k not in knn]
    out = []
    if unknown:
        reference = _typical_size(records, "loss" if "loss" in unknown else unknown[0])
        alike = lambda k: reference > 0 and reference / SCALE_RATIO <= _typical_size(records, k) <= reference * SCALE_RATIO
        loss_terms = [k for k in unknown if alike(k) or k == "loss" or k == unknown[0]]
        out.append(("loss terms", loss_terms))
        out.extend((k, [k]) for k in unknown if k not in loss_terms)
    if knn:
        out.append(("online k-NN top-1 (%)", knn))
    for key, title in SCHEDULE_PANELS.items():
        if key not in keys:
            continue
        if key == "failed_images" and not any(r.get(key) for r in records):
            continue
        out.append((title, [key]))
    return out


def figure_size_px(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of the PNG of ``plot_curves``."""
    cols = min(2, num_panels)
    rows = math.ceil(num_panels / cols)
    return cols * PANEL_PX[0], rows * PANEL_PX[1] + 40


def plot_curves(records: list[dict], title: str = "") -> Figure:
    """All panels of ``panels(records)`` in a grid of two columns."""
    layout = panels(records)
    if not layout:
        raise ValueError(f"the log has no numeric keys to plot besides {', '.join(AXIS_KEYS)}")
    step_key = next((k for k in STEP_KEYS if all(_is_number(r.get(k)) for r in records)), None)
    x_all = [r[step_key] if step_key else i for i, r in enumerate(records, start=1)]
    width, height = figure_size_px(len(layout))
    cols = min(2, len(layout))
    rows = math.ceil(len(layout) / cols)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontsize=10)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    epoch_starts = [x for x, prev, cur in zip(x_all[1:], records, records[1:])
                    if _is_number(cur.get("epoch")) and cur.get("epoch") != prev.get("epoch")]
    for ax, (name, keys) in zip(axes, layout):
        for key in keys:
            points = [(x, r[key]) for x, r in zip(x_all, records) if _is_number(r.get(key))]
            xs, ys = zip(*points)
            marker = "o" if key.startswith(KNN_PREFIX) else None  # few points: show each
            ax.plot(xs, ys, label=key, linewidth=2.0 if key == "loss" else 1.2, marker=marker, markersize=3)
        for x in epoch_starts:
            ax.axvline(x, color="gray", linestyle=":", linewidth=0.8)
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(step_key or "log line", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(layout):]:
        ax.set_axis_off()
    return fig


def write_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Plot ``run_dir/log.jsonl`` to ``out`` (default ``run_dir/curves.png``); returns the path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        if run_dir.exists():
            raise NotADirectoryError(f"{run_dir} is a file; expected a run directory (the --out folder of udi pretrain)")
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    log = run_dir / LOG_FILE
    records = read_log(log)
    try:
        fig = plot_curves(records, f"{run_dir.name}: {len(records)} log records")
    except ValueError as error:
        raise ValueError(f"{log}: {error}") from error
    path = Path(out) if out else run_dir / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path
