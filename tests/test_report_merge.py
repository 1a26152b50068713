"""`rpq report A.json B.json ...`: the metrics of several shards reported as one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_report import make_run
from typer.testing import CliRunner

from rpq.cli import app
from rpq.metrics import write_metrics
from rpq.shard import shard_of


def report(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["report", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, list[Path]]:
    """One run of 600 jobs written whole, and the same jobs split in three by --shard."""
    jobs = make_run(600, seed=11)
    whole = tmp_path / "whole.json"
    write_metrics(whole, jobs, {"endpoint": "synthetic"})
    parts = []
    for i in (1, 2, 3):
        mine = [j for j in jobs if shard_of(j.input, 3) == i]
        path = tmp_path / f"shard{i}" / "job_metrics.json"
        path.parent.mkdir()
        write_metrics(path, mine, {"endpoint": "synthetic", "settings": {"shard": f"{i}/3"}})
        parts.append(path)
    return whole, parts


def as_json(*args: str | Path) -> tuple[int, dict[str, Any], str]:
    code, out, err = report(*args, "--json")
    return code, json.loads(out), err


def test_three_shards_report_like_the_whole_run(shards: tuple[Path, list[Path]]) -> None:
    whole, parts = shards
    code_w, one, _ = as_json(whole, "--sla", "95:20")
    code_p, merged, err = as_json(*parts, "--sla", "95:20")
    assert code_w == code_p
    assert merged["summary"] == one["summary"]
    assert merged["sla"] == one["sla"]
    assert merged["failures"] == one["failures"]
    assert merged["merged"]["overlap"]["count"] == 0
    assert [p["shard"] for p in merged["merged"]["parts"]] == ["1/3", "2/3", "3/3"]
    assert sum(p["jobs"] for p in merged["merged"]["parts"]) == 600
    assert "note" not in err


def test_folders_are_accepted_and_the_text_names_every_part(
        shards: tuple[Path, list[Path]]) -> None:
    _, parts = shards
    code, out, _ = report(*(p.parent for p in parts))
    assert code == 0
    assert "one run from 3 files" in out
    assert "shard 2/3" in out


def test_a_file_given_twice_is_flagged(shards: tuple[Path, list[Path]]) -> None:
    _, parts = shards
    code, doc, err = as_json(parts[0], parts[0])
    assert code in (0, 1)  # the SLA decides; the overlap is a note, not an error
    n = len(json.loads(parts[0].read_text())["jobs"])
    assert doc["merged"]["overlap"]["count"] == n
    assert doc["summary"]["total_jobs"] == 2 * n
    assert "appear in more than one metrics file" in err


def test_one_bad_file_among_several_exits_2_naming_it(
        shards: tuple[Path, list[Path]], tmp_path: Path) -> None:
    _, parts = shards
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    code, out, err = report(parts[0], bad)
    assert code == 2
    assert "broken.json" in err
    assert out == ""


def test_one_file_has_no_merged_block(shards: tuple[Path, list[Path]]) -> None:
    whole, _ = shards
    _, doc, _ = as_json(whole)
    assert doc["merged"] is None
