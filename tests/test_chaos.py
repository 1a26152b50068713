"""Chaos at scale: every fault of the local endpoint at once, with cold starts and idle
scale-down, and every image still accounted for, nothing done twice, and rpq's counts equal to
the server's. bench/chaos.py runs the same scenario at 1,000 images x several seeds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chaoskit import chaos_batch


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("seed", [1, 2])
def test_chaos_batch_loses_nothing_and_duplicates_nothing(tmp_path: Path, seed: int) -> None:
    outcome = chaos_batch(tmp_path, images=300, seed=seed)
    assert not outcome.violations, "\n".join(outcome.violations)
    figures = outcome.figures
    # The faults really happened (else the test shows nothing).
    assert figures["injected"]["500"] and figures["injected"]["429"]
    assert figures["injected"]["drop"] and figures["injected"]["slow"]
    assert figures["server_failed"] and figures["stuck_jobs"]
    assert figures["run_retries"] and figures["resubmissions"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_chaos_quick_writes_a_report(tmp_path: Path) -> None:
    # `make chaos` at smoke-test size: every scenario once, a report with a row for each.
    report = tmp_path / "RELIABILITY.md"
    script = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--out", str(report)],
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stderr
    text = report.read_text()
    for heading in ("## At a glance", "## Chaos at scale", "## SIGKILL at random moments",
                    "## Endpoint process killed and restarted", "## Writes that fail"):
        assert heading in text
    assert text.count("all held") == 4 and "**FAILED**" not in text
