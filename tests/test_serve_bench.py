"""Smoke test of bench/serve_bench.py in its quick mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "serve_bench.py"


def test_serve_bench_quick(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("serve_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "serve_bench", bench)  # dataclasses look it up
    spec.loader.exec_module(bench)

    assert bench.main(["--quick", "--json", "--client", "both"]) == 0
    rounds = json.loads(capsys.readouterr().out)
    assert [(r["client"], r["threads"]) for r in rounds] == [
        ("requests", 1), ("requests", 4), ("http.client", 1), ("http.client", 4)
    ]
    for r in rounds:
        assert r["requests"] > 0 and r["errors"] == 0
        assert r["per_second"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
