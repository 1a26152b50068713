"""Smoke test of bench/run_all.py --quick: every scenario yields its figures, the baseline runs."""

from __future__ import annotations

import importlib.util
import json
import math
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
@pytest.mark.timeout(600)
def test_run_all_quick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_all = _load_run_all(monkeypatch)
    markdown = tmp_path / "BENCHMARKS.md"
    work = tmp_path / "work"

    assert run_all.main(["--quick", "--work", str(work), "--markdown", str(markdown)]) == 0

    results = json.loads((work / "results.json").read_text())
    scenarios = results["scenarios"]
    assert sorted(scenarios, key=int) == [str(n) for n in range(1, 13)]
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
    d7, d8, d9 = scenarios["7"]["data"], scenarios["8"]["data"], scenarios["9"]["data"]
    assert d7["peak_rss_mb"] and all(mb > 0 for mb in d7["peak_rss_mb"].values())
    # At smoke size a run's CPU is mostly start-up, so CPU per image (a difference of two
    # runs) is noise there and may even come out below zero; it must still be a number.
    assert d8 and all(v["floor"] > 0 and math.isfinite(v["per_image"]) for v in d8.values())
    for case in "abc":
        assert all(run["completed"] == run["images"] for run in d9[case].values()), case
    d10, d11 = scenarios["10"]["data"], scenarios["11"]["data"]
    assert all(0 < s < 60 for s in d10["first_run_s"]) and d10["journal_mb"] > 0
    assert d11["completed"] == 500 and d11["peak_rss_mb"] > 0
    sent = scenarios["12"]["data"]["bytes_per_image"]
    assert 0 < sent["url"] < sent["bytes"]  # {{image_url}} leaves the image out of /run

    text = markdown.read_text()
    assert text.startswith("# Benchmarks\n\n**Summary:** rpq ")
    for heading in ("## How it is measured", "## Figures", "## Targets missed",
                    "## 1. Throughput", "## 6. The endpoint itself",
                    "## 9. Concurrency that follows the endpoint"):
        assert heading in text
    assert "Python 3." in text and "CPUs" in text and "make bench" in text
    assert results["summary"] in text


def test_a_subset_keeps_the_other_scenarios_of_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_all = _load_run_all(monkeypatch)
    from tables import Row, Scenario

    meta = {"machine": {"cpus": "2", "cpu": "x", "memory": "1 GiB", "python": "3.11",
                        "os": "Linux", "date": "2026-12-01 22:00 UTC"},
            "reps": 1, "quick": False, "minutes": 1.0}

    def report(figures: dict[str, str]) -> str:
        return run_all.render({k: Scenario(k, f"Title {k}", f"setup {k}",
                                           rows=[Row(k, "figure", v, "", "", "<= 5",
                                                     float(v) <= 5, why="slow")])
                               for k, v in figures.items()}, meta)

    full = report({"6": "1", "7": "2", "8": "3"})
    merged = run_all.merge(full, report({"8": "9"}), {"8"}, meta)
    assert "| 6 | figure | 1 |" in merged and "| 7 | figure | 2 |" in merged
    assert "| 8 | figure | 9 |" in merged and "| 8 | figure | 3 |" not in merged
    assert merged.index("## 7. Title 7") < merged.index("## 8. Title 8")
    assert "**Missed** (scenario 8)" in merged
    assert "Scenario 8 measured 2026-12-01 22:00 UTC" in merged
    # A detail table whose first column is a number is not a figure row.
    detailed = report({"8": "9"}).replace("## 8. Title 8\n", "## 8. Title 8\n\n| 7 | x |\n")
    assert run_all.merge(full, detailed, {"8"}, meta).count("| 7 |") == 2
    again = run_all.merge(merged, report({"8": "4"}), {"8"}, meta)
    assert "**Missed**" not in again and "Every target was met" in again
    assert again.count("Scenario 8 measured") == 1
    two = run_all.merge(again, report({"7": "5", "8": "6"}), {"7", "8"}, meta)
    assert "Scenarios 7, 8 measured" in two and "Scenario 8 measured" not in two
