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



@pytest.mark.parametrize("text", ["5/60ss", "5/60ms", "5/", "5/1d", "x/60"])
def test_a_rate_that_is_not_one_is_refused(tmp_path: Path, text: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    run = rpq("batch", src, "--out", tmp_path / "out", "--no-progress", "--rate", text)
    assert run.code == 2, run.stderr
    assert f"--rate {text!r} is not a rate" in run.stderr and "5/min" in run.stderr
    assert "built-in local endpoint" not in run.stderr  # refused before it started
    assert not (tmp_path / "out").exists()


def _refused_before_anything_starts(tmp_path: Path, *options: str | Path) -> str:
    """Run `rpq batch` with no endpoint configured (the built-in one would start) and these
    options; return stderr after checking it is one line, exit 2, and nothing started."""
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    run = rpq("batch", src, "--no-progress", *options)
    assert run.code == 2, run.stderr
    assert len(run.stderr.splitlines()) == 1 and "Traceback" not in run.stderr, run.stderr
    assert "built-in local endpoint" not in run.stderr  # refused before it started
    assert run.stdout == ""
    return run.stderr


SECRET = "T0000/B0000/XXXXsecretXXXX"


@pytest.mark.parametrize(("url", "words"), [
    ("notaurl", "does not start with https:// or http://"),
    ("ftp://hooks.example.com/x", "does not start with https:// or http://"),
    (f"hooks.slack.com/services/{SECRET}", "does not start with https:// or http://"),
    ("https:///services/x", "names no host"),
])
def test_an_alert_webhook_that_is_not_a_url_is_refused(tmp_path: Path, url: str,
                                                      words: str) -> None:
    err = _refused_before_anything_starts(tmp_path, "--alert-webhook", url)
    assert err.startswith("error: --alert-webhook: not an http(s) URL") and words in err, err
    assert SECRET not in err  # the URL carries the webhook's token: never quoted


@pytest.mark.parametrize(("value", "words"), [
    ("ftp://x", "'ftp://x' is a ftp:// URL"),
    ("s3://bucket/ep", "is a s3:// URL"),
    ("not an id", "'not an id' is neither an endpoint id"),
    ("https://api.runpod.ai", "does not end with the base URL's path and an endpoint id"),
    ("http://10.0.0.5:8000/v2/other", "refusing plain http://"),
])
def test_a_fallback_endpoint_that_is_neither_an_id_nor_an_endpoint_url_is_refused(
        tmp_path: Path, value: str, words: str) -> None:
    err = _refused_before_anything_starts(tmp_path, "--fallback-endpoint", value)
    assert words in err and "--fallback-endpoint" in err, err


def test_out_naming_an_existing_file_is_one_line(tmp_path: Path) -> None:
    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    err = _refused_before_anything_starts(tmp_path, "--out", taken)
    assert f"--out {taken} is a file, not a folder" in err
    assert taken.read_text() == "mine"


def test_a_missing_template_and_a_bad_halt_rule_are_refused_first(tmp_path: Path) -> None:
    err = _refused_before_anything_starts(tmp_path, "--input-template", tmp_path / "nope.json")
    assert "nope.json" in err
    err = _refused_before_anything_starts(tmp_path, "--halt-on-fail", "lots")
    assert "--halt-on-fail 'lots'" in err
