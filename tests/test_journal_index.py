"""The journal's index: a resume reads only the lines written since it was saved, and always
sees what a full read of the file would show, after a crash, a hand edit or a move aside."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import rpq.journal as journal_mod
from rpq.journal import Journal, index_path, job_key

SAVE = 16  # entries per index save in these tests (rpq uses more)


@pytest.fixture(autouse=True)
def _small_saves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_mod, "SAVE_EVERY", SAVE)


def snapshot(j: Journal) -> dict[str, tuple[Any, ...]]:
    return {k: (e.rel, e.state, e.job_id, e.endpoint, e.attempts, e.record, e.cancels)
            for k, e in j.entries.items()}


def full_read(path: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What the file says, folded whole in memory with no index: the reference."""
    copy = tmp / "reference" / path.name
    copy.parent.mkdir(exist_ok=True)
    shutil.copyfile(path, copy)
    with monkeypatch.context() as m:
        m.setattr(journal_mod, "SAVE_EVERY", 10**9)
        reference = Journal(copy)
        assert not index_path(copy).exists()
        return snapshot(reference)


def play(j: Journal, n: int, seed: int = 0, start: int = 0) -> None:
    """A plausible run: each image intent -> submitted -> end, some cancelled or lost."""
    rnd = random.Random(seed)
    for i in range(start, start + n):
        key, rel = f"k{i:05d}", f"dir/img {i}.png"
        j.intent(key, rel, 1)
        if rnd.random() < 0.1:
            continue  # cut off before the endpoint answered: an orphan
        j.submitted(key, f"job-{i}", "ep", "http://127.0.0.1:1/v2")
        roll = rnd.random()
        if roll < 0.1:
            continue  # still in flight
        if roll < 0.2:
            j.cancelled(key, f"job-{i}", {"status": "CANCELLED"}, "stalled")
        elif roll < 0.25:
            j.lost(key, f"job-{i}", "expired")
        else:
            status = "COMPLETED" if roll < 0.9 else "FAILED"
            j.end(key, {"input": rel, "status": status, "outputs": [f"dir/img {i}.png"]})


def test_reopened_journal_matches_a_full_read(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 300)
    assert index_path(path).exists()
    again = Journal(path)
    assert snapshot(again) == full_read(path, tmp_path, monkeypatch)
    assert len(again.entries) == 300
    assert {e.key for e in again.in_flight()} == \
        {k for k, v in full_read(path, tmp_path, monkeypatch).items()
         if v[1] == "submitted" and v[2]}
    assert again.output_owner("dir/img 7.png") in (None, "dir/img 7.png")


def test_resume_reads_only_the_lines_after_the_last_save(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 200)
    before = snapshot(Journal(path))
    # Damage the middle of the file in place: a reader that reads it all would see it.
    data = bytearray(path.read_bytes())
    data[3000:7000] = b"#" * 4000
    path.write_bytes(bytes(data))
    assert snapshot(Journal(path)) == before


def test_lines_after_the_last_save_are_folded_on_top(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    j = Journal(path)
    play(j, 100, seed=1)
    # No close: as after a crash, the index stops at its last save.
    del j
    again = Journal(path)
    assert snapshot(again) == full_read(path, tmp_path, monkeypatch)
    play(again, 50, seed=2, start=100)
    again.close()
    assert snapshot(Journal(path)) == full_read(path, tmp_path, monkeypatch)


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    import rpq.journal as jm
    jm.SAVE_EVERY = 16
    from test_journal_index import play
    j = jm.Journal(jm.Path(sys.argv[1]))
    print("ready", flush=True)
    play(j, 100000, seed=int(sys.argv[3]))
""")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_mid_run_then_reopen_matches_a_full_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    tests = str(Path(__file__).parent)
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tests, str(seed)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        target = 20_000 * seed
        while not path.exists() or path.stat().st_size < target:
            assert child.poll() is None
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.communicate(timeout=30)
    again = Journal(path)
    expected = full_read(path, tmp_path, monkeypatch)
    assert len(expected) > SAVE
    assert snapshot(again) == expected
    assert again.torn_lines <= 1


def test_a_journal_of_the_previous_version_is_indexed_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with monkeypatch.context() as m:
        m.setattr(journal_mod, "SAVE_EVERY", 10**9)  # as the previous version: lines only
        with Journal(path) as j:
            play(j, 120, seed=4)
    assert not index_path(path).exists()
    first = Journal(path)
    assert index_path(path).exists()
    assert snapshot(first) == full_read(path, tmp_path, monkeypatch)
    assert snapshot(Journal(path)) == snapshot(first)


def test_a_journal_moved_aside_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 80)
    os.replace(path, path.with_suffix(".jsonl.old"))  # what --fresh does
    fresh = Journal(path)
    assert snapshot(fresh) == {} and fresh.in_flight() == [] and fresh.orphans() == []
    play(fresh, 40, seed=9, start=1000)
    fresh.close()
    assert set(snapshot(Journal(path))) == {f"k{i:05d}" for i in range(1000, 1040)}


def test_start_empty_even_with_an_index(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 80)
    assert Journal(path, load=False).get("k00001") is None


def test_a_file_cut_short_or_replaced_is_read_again(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 150)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a restore from an older copy, say
    assert snapshot(Journal(path)) == full_read(path, tmp_path, monkeypatch)
    other = tmp_path / "other.jsonl"
    with Journal(other) as j:
        play(j, 60, seed=5, start=500)
    os.replace(other, path)
    assert snapshot(Journal(path)) == full_read(path, tmp_path, monkeypatch)


def test_lines_another_process_appends_are_folded_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `rpq cancel --journal` appends to the journal of a batch that may still be running.
    path = tmp_path / ".rpq-journal.jsonl"
    batch = Journal(path)
    play(batch, 60, seed=6)
    cancel = Journal(path)
    in_flight = cancel.in_flight()
    assert in_flight
    for e in in_flight:
        cancel.cancelled(e.key, e.job_id or "", {"status": "CANCELLED"}, "rpq cancel")
    cancel.close()
    play(batch, 60, seed=7, start=60)
    assert all(batch.get(e.key).state == "cancelled" for e in in_flight)  # type: ignore[union-attr]
    batch.close()
    assert snapshot(Journal(path)) == full_read(path, tmp_path, monkeypatch)


def test_without_room_for_an_index_everything_stays_in_memory(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    index_path(path).mkdir()  # something SQLite cannot open is in its place
    j = Journal(path)
    play(j, 100, seed=8)
    assert len(j.entries) == 100
    j.close()
    assert len(Journal(path).entries) == 100


def test_a_copied_folder_keeps_its_index(tmp_path: Path) -> None:
    path = tmp_path / "a" / ".rpq-journal.jsonl"
    path.parent.mkdir()
    with Journal(path) as j:
        play(j, 200)
    before = snapshot(Journal(path))
    copy = shutil.copytree(path.parent, tmp_path / "b") / path.name  # new inodes
    data = bytearray(copy.read_bytes())
    data[3000:7000] = b"#" * 4000  # a reader that reads it all would see this
    copy.write_bytes(bytes(data))
    assert snapshot(Journal(copy)) == before


def test_the_index_is_read_and_written_from_any_thread(tmp_path: Path) -> None:
    # A batch writes its journal from the thread of each job: the index one thread opened
    # serves the others.
    path = tmp_path / ".rpq-journal.jsonl"
    j = Journal(path)
    play(j, 2 * SAVE, seed=9)
    assert index_path(path).exists()
    failures: list[BaseException] = []

    def more() -> None:
        try:
            play(j, 2 * SAVE, seed=10, start=2 * SAVE)
            assert len(j.entries) == 4 * SAVE
        except BaseException as exc:  # reported by the test's own thread
            failures.append(exc)

    worker = threading.Thread(target=more)
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and failures == []
    j.close()
    assert len(Journal(path).entries) == 4 * SAVE


def test_every_entry_is_listed_past_the_first_page(tmp_path: Path) -> None:
    # Real keys are hex digests, many starting with a digit; more than one page of them.
    path = tmp_path / ".rpq-journal.jsonl"
    keys = [job_key(f"{i:064x}", "settings") for i in range(600)]
    with Journal(path) as j:
        for key in keys:
            j.intent(key, f"{key}.png", 1)
    for again in (Journal(path), j):
        assert sorted(again.entries) == sorted(keys)
        assert len(again.entries) == 600


def test_a_longer_journal_put_in_its_place_is_read_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 40)
    other = tmp_path / "other.jsonl"
    with Journal(other) as j:
        play(j, 200, seed=4, start=1000)
    os.replace(other, path)
    assert snapshot(Journal(path)) == full_read(path, tmp_path, monkeypatch)


def test_the_index_of_a_replaced_journal_is_rebuilt_and_used(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    with Journal(path) as j:
        play(j, 150)
    other = tmp_path / "other.jsonl"
    with Journal(other) as j:
        play(j, 100, seed=5, start=500)
    os.replace(other, path)
    Journal(path).close()  # reads it whole once, and indexes it afresh
    before = snapshot(Journal(path))
    data = bytearray(path.read_bytes())
    data[3000:7000] = b"#" * 4000  # a reader that reads it all would see this
    path.write_bytes(bytes(data))
    assert snapshot(Journal(path)) == before


def test_the_index_is_private_to_its_owner(tmp_path: Path) -> None:
    path = tmp_path / ".rpq-journal.jsonl"
    old = os.umask(0)
    try:
        with Journal(path) as j:
            play(j, SAVE + 1)
    finally:
        os.umask(old)
    assert index_path(path).stat().st_mode & 0o777 == 0o600


def test_the_index_sits_beside_the_journal(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    with Journal(folder / ".rpq-journal.jsonl") as j:
        play(j, SAVE + 1)
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))) \
        == [".rpq-journal.index", ".rpq-journal.jsonl"]
