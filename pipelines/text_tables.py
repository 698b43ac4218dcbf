"""The summary table every job prints at its end."""
from __future__ import annotations

from collections.abc import Iterable, Mapping


def format_table(rows: Iterable[Mapping[str, object]], title: str | None = None) -> str:
    """Render rows (dicts sharing keys) as an aligned plain-text table."""
    rows = list(rows)
    if not rows:
        return f"{title}\n(none)" if title else "(none)"
    columns = list(rows[0].keys())
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [
        "  ".join(column.ljust(width) for column, width in zip(columns, widths)),
        "  ".join("-" * width for width in widths),
        *("  ".join(value.rjust(width) if _is_number(value) else value.ljust(width)
                    for value, width in zip(line, widths)) for line in cells),
    ]
    return "\n".join(([title] if title else []) + lines)


def format_key_values(values: Mapping[str, object], title: str | None = None) -> str:
    """Render a flat mapping as a two-column table."""
    return format_table(({"item": key, "value": value} for key, value in values.items()), title)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True
