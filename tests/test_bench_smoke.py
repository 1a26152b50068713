"""Smoke test of bench/run_all.py --quick: every scenario yields its figures, the baseline runs."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NUMBER = re.compile(r"\d")


def _load_run_all(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_all", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_all_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_all = _load_run_all(monkeypatch)
    markdown = tmp_path / "BENCHMARKS.md"
    work = tmp_path / "work"

    assert run_all.main(["--quick", "--work", str(work), "--markdown", str(markdown)]) == 0

    results = json.loads((work / "results.json").read_text())
    scenarios = results["scenarios"]
    assert sorted(scenarios) == ["1", "2", "3", "4", "5", "6"]
    for key, sc in scenarios.items():
        assert sc["rows"], f"scenario {key} produced no figures"
        for row in sc["rows"]:
            assert NUMBER.search(row["rpq"]) and "n/a" not in row["rpq"], (key, row)

    # The baseline ran and was measured wherever it is compared.
    d1, d2, d3, d4 = (scenarios[k]["data"] for k in "1234")
    assert d1["makespan"]["baseline"] > 0 and d1["makespan"]["rpq"] > 0
    assert d2["status_per_job"]["baseline"] > 0 and d2["lag_p95"]["baseline"] is not None
    assert d2["status_per_job"]["rpq"] > 0 and d2["lag_p95"]["rpq"] is not None
    assert d3["baseline_large_done"] > 0 and d3["rpq_large_done"] == d3["images"]
    assert d3["rss"]["large"] > 0 and d3["jobs_per_second"]["unpaced"] > 0
    assert d3["rss"]["during_large"] > 0 and d3["rss"]["growth_per_1000"] is not None
    assert d4["done"] == {"rpq": 12, "baseline": 12} and d4["cancelled"] == 0
    for key in "1234":
        baseline_cells = [r["baseline"] for r in scenarios[key]["rows"] if r["baseline"]]
        assert baseline_cells and all("n/a" not in c for c in baseline_cells), key
    d5, d6 = scenarios["5"]["data"], scenarios["6"]["data"]
    assert d5["help"] > 0 and d5["report"] > 0 and d5["import_runpod"] > 0
    assert d6["best"] > 0 and all(r["errors"] == 0 for r in d6["rounds"])

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\n**Summary:** rpq ")
    for heading in ("## How it is measured", "## Figures", "## Targets missed",
                    "## 1. Throughput", "## 6. The endpoint itself"):
        assert heading in text
    assert "Python 3." in text and "CPUs" in text and "make bench" in text
    assert results["summary"] in text
