"""Tables of evaluation results: rich tables for the terminal, markdown for files."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from udi.eval.baselines import CHANCE


def _columns(rows: dict[str, dict[str, float]]) -> list[str]:
    seen: dict[str, None] = {}
    for metrics in rows.values():
        seen.update(dict.fromkeys(metrics))
    return list(seen)


def best_value(rows: dict[str, dict[str, float]], column: str) -> float | None:
    """The highest value of ``column`` over the models (the ``chance`` row is a reference, not a
    model), or None when fewer than two models have one."""
    values = [m[column] for name, m in rows.items() if name != CHANCE and isinstance(m.get(column), (int, float))]
    return max(values) if len(values) > 1 else None


def _cell(value: float | None, best: float | None) -> str:
    if value is None:
        return "-"
    return f"[bold green]{value:.2f}*[/bold green]" if value == best else f"{value:.2f}"


def compare_table(rows: dict[str, dict[str, float]], title: str = "", width: int | None = None) -> Table:
    """Models as rows, metrics as columns, the best value per column in bold green with a *.

    When that would not fit ``width`` characters (a terminal), metrics become the rows instead."""
    columns = _columns(rows)
    needed = max(map(len, rows)) + sum(max(len(c), 7) + 3 for c in columns)
    if width is not None and needed > width:
        table = Table(title=title)
        table.add_column("metric")
        for name in rows:
            table.add_column(escape(name), justify="right")
        for column in columns:
            best = best_value(rows, column)
            table.add_row(escape(column), *(_cell(m.get(column), best) for m in rows.values()))
        return table
    table = Table(title=title)
    table.add_column("model")
    for column in columns:
        table.add_column(escape(column), justify="right")
    for name, metrics in rows.items():
        table.add_row(escape(name), *(_cell(metrics.get(c), best_value(rows, c)) for c in columns))
    return table


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """The same table as markdown; best per column in bold."""
    columns = _columns(rows)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, metrics in rows.items():
        cells = []
        for column in columns:
            value = metrics.get(column)
            text = "-" if value is None else f"{value:.2f}"
            cells.append(f"**{text}**" if value is not None and value == best_value(rows, column) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_table(row: dict[str, float], title: str = "", chance: dict[str, float] | None = None) -> Table:
    """One model's metrics, one per line (readable in a narrow terminal); with ``chance``, the
    chance level of each metric that has one beside it."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if chance:
        table.add_column("chance", justify="right")
    for name, value in row.items():
        cells = [f"{value:.2f}"] + ([_cell(chance.get(name), None)] if chance else [])
        table.add_row(escape(name), *cells)
    return table
