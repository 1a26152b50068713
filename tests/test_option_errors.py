"""Bad options: one line that says which option is wrong and how, exit 2, before anything
starts (no endpoint, no request, no output folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchkit import rpq

from rpq.limiter import Rate

KNOWN = Path(__file__).parent / "data" / "known.json"


@pytest.mark.parametrize(("spec", "words"), [
    ("150:10", ["150% is not a share of jobs", "at most 100",
                "if 150 is the seconds, the percent comes first: 10:150"]),
    ("95:0", ["0 s is not a time limit"]),
    ("95", ["'95' is not PERCENT:SECONDS"]),
    ("95:60,abc", ["'abc' is not PERCENT:SECONDS"]),
])
def test_a_bad_sla_says_what_is_wrong_with_it(spec: str, words: list[str]) -> None:
    run = rpq("report", KNOWN, "--sla", spec)
    assert run.code == 2 and run.stdout == ""
    assert len(run.stderr.splitlines()) == 1, run.stderr
    for word in words:
        assert word in run.stderr, run.stderr


@pytest.mark.parametrize(("text", "per"), [
    ("5/60", 60.0), ("5/60s", 60.0), ("5/1m", 60.0), ("5/min", 60.0), ("300/h", 3600.0),
    ("3", 1.0), ("5/2.5", 2.5),
])
def test_a_rate_reads_seconds_or_a_unit(text: str, per: float) -> None:
    assert Rate.parse(text).per == per

