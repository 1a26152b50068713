"""Chaos at scale: every fault of the local endpoint at once, with cold starts and idle
scale-down, and every image still accounted for, nothing done twice, and rpq's counts equal to
the server's. bench/chaos.py runs the same scenario at 1,000 images x several seeds."""

from __future__ import annotations

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
