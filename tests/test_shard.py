"""--shard I/N: every path falls in exactly one shard, the same one on every machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from hypothesis import given, settings
from hypothesis import strategies as st
from imaging import make_images

from rpq.errors import UsageError
from rpq.shard import Shard, shard_of


@settings(max_examples=200)
@given(st.lists(st.text(min_size=1, max_size=40), max_size=60, unique=True),
       st.integers(min_value=1, max_value=12))
def test_shards_cover_every_path_exactly_once(paths: list[str], count: int) -> None:
    shards = [Shard(i, count) for i in range(1, count + 1)]
    for path in paths:
        assert sum(s.holds(path) for s in shards) == 1


def test_known_values_do_not_change_between_releases() -> None:
    # Machines running different rpq versions must still agree: pin a few assignments.
    got = {p: shard_of(p, 3) for p in ("a.png", "sub/b.jpg", "ü/ß.webp", "0001.png")}
    assert got == {"a.png": 3, "sub/b.jpg": 2, "ü/ß.webp": 1, "0001.png": 2}


def test_split_is_roughly_even() -> None:
    counts = [0, 0, 0, 0]
    for i in range(4000):
        counts[shard_of(f"img_{i:05d}.png", 4) - 1] += 1
    assert all(900 < c < 1100 for c in counts), counts


def test_one_shard_holds_everything() -> None:
    assert all(Shard(1, 1).holds(p) for p in ("a", "b/c", "d.png"))


@pytest.mark.parametrize("spec", ["", "3", "0/3", "4/3", "1/0", "a/b", "-1/3", "1/3/4"])
def test_bad_spec_is_a_usage_error_with_an_example(spec: str) -> None:
    with pytest.raises(UsageError, match=r"--shard .*(e\.g\.|between 1 and N)"):
        Shard.parse(spec)


def test_parse_round_trips() -> None:
    assert Shard.parse(" 2/8 ") == Shard(2, 8)
    assert str(Shard.parse("2/8")) == "2/8"


# --- end to end: three machines split one folder ---------------------------------------------


def test_three_shards_send_every_image_exactly_once(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 18)
    make_images(src, 6, start=100, sub="nested")
    everything = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png"))
    seen: list[str] = []
    for i in (1, 2, 3):
        out = tmp_path / f"out{i}"
        run = rpq(*batch_args(src, out, "--shard", f"{i}/3"), env=endpoint_env(ep))
        assert run.code == 0, run.stderr
        data = run.metrics(out)
        assert data["run"]["settings"]["shard"] == f"{i}/3"
        mine = [job["input"] for job in data["jobs"]]
        assert mine and all(shard_of(rel, 3) == i for rel in mine)
        seen += mine
    assert sorted(seen) == everything  # each image in exactly one shard
    assert ep.calls()["run"] == len(everything)  # and sent exactly once in all
    # A rerun of one shard sends nothing: its journal has all of its own images.
    assert rpq(*batch_args(src, tmp_path / "out2", "--shard", "2/3"),
               env=endpoint_env(ep)).code == 0
    assert ep.calls()["run"] == len(everything)
    merged = rpq("report", *(tmp_path / f"out{i}" for i in (1, 2, 3)), "--json")
    assert json.loads(merged.stdout)["summary"]["total_jobs"] == len(everything)


def test_bad_shard_option_exits_2(tmp_path: Path) -> None:
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "out", "--shard", "4/3"))
    assert run.code == 2
    assert "--shard 4/3" in run.stderr
