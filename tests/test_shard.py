"""--shard I/N: every path falls in exactly one shard, the same one on every machine."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
