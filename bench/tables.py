"""What every benchmark scenario reports: its rows, notes and data, and number formats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness as h


@dataclass
class Context:
    """Where the runs write, and how big they are."""

    work: Path
    cache: Path
    sizes: Any  # run_all.Sizes
    log: Callable[[str], None]
    quick: bool = False


@dataclass
class Row:
    """One line of the figures table."""

    scenario: str
    figure: str
    rpq: str
    baseline: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None
    why: str = ""  # what bounds the figure, shown when the target is missed


@dataclass
class Scenario:
    """A scenario's rows, per-run detail, and notes."""

    key: str
    title: str
    setup: str
    rows: list[Row] = field(default_factory=list)
    detail: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bounds: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def med(runs: list[h.RunFigures], get: Callable[[h.RunFigures], float | None]) -> float | None:
    values = [v for v in (get(r) for r in runs) if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:,.{digits}f}{unit}"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    r = a / b
    return f"{r:.{digits}f}x" if r >= 0.1 else f"{r:.2g}x"
