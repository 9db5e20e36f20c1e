"""Tables of evaluation results: rich tables for the terminal, markdown for files."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table


def _columns(rows: dict[str, dict[str, float]]) -> list[str]:
    seen: dict[str, None] = {}
    for metrics in rows.values():
        seen.update(dict.fromkeys(metrics))
    return list(seen)


def _best(rows: dict[str, dict[str, float]], column: str) -> float | None:
    values = [m[column] for m in rows.values() if isinstance(m.get(column), (int, float))]
    return max(values) if len(values) > 1 else None


def compare_table(rows: dict[str, dict[str, float]], title: str = "") -> Table:
    """Models as rows, metrics as columns, the best value per column in bold green with a *."""
    table = Table(title=title)
    table.add_column("model")
    columns = _columns(rows)
    for column in columns:
        table.add_column(escape(column), justify="right")
    for name, metrics in rows.items():
        cells = []
        for column in columns:
            value = metrics.get(column)
            if value is None:
                cells.append("-")
            elif value == _best(rows, column):
                cells.append(f"[bold green]{value:.2f}*[/bold green]")
            else:
                cells.append(f"{value:.2f}")
        table.add_row(escape(name), *cells)
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
            cells.append(f"**{text}**" if value is not None and value == _best(rows, column) else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metric_table(row: dict[str, float], title: str = "") -> Table:
    """One model's metrics, one per line (readable in a narrow terminal)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in row.items():
        table.add_row(escape(name), f"{value:.2f}")
    return table
