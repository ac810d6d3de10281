"""One row per figure, each next to the baseline it was measured against in the same run.

The same rows become the printed table (Markdown, so it pastes into the README) and
the JSON report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    bench: str
    case: str
    metric: str
    value: float | None  # None: not measured (note says why)
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = None if self.ratio is None else round(self.ratio, 4)
        return out


def fmt(x: float | None) -> str:
    """Three significant digits, no exponent for the magnitudes used here."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def render(rows: list[Row]) -> str:
    """A Markdown table: benchmark, case, metric, value, baseline, ratio, note."""
    header = ["benchmark", "case", "metric", "value", "baseline", "ratio", "note"]
    body = []
    for r in rows:
        value = "not measured" if r.value is None else f"{fmt(r.value)} {r.unit}".strip()
        base = ""
        if r.baseline is not None:
            base = f"{fmt(r.baseline)} {r.unit}".strip()
            if r.baseline_label:
                base += f" ({r.baseline_label})"
        ratio = "" if r.ratio is None else f"{r.ratio:.3g}x"
        body.append([r.bench, r.case, r.metric, value, base, ratio, r.note])
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(b) for b in body)])
