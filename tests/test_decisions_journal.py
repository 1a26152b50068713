"""Pinned decisions of the journal: what each event means for a rerun, which lines are read,
and how a line is written so a crash leaves whole lines."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_tmpfs

from rpq.errors import UsageError
from rpq.journal import SAVE_EVERY, Entry, Journal, job_key
from rpq.room import ROOM_SIZE

ANSWER_CANCELLED = {"id": "j1", "status": "CANCELLED"}


def _both(path: Path, journal: Journal) -> list[Journal]:
    """The journal as it stands in memory, and as a rerun reads it back."""
    return [journal, Journal(path)]


def _entry(journal: Journal, key: str = "k") -> Entry:
    entry = journal.get(key)
    assert entry is not None
    return entry


def _lines(path: Path, *events: dict[str, Any] | str) -> Journal:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return Journal(path)


def test_the_key_format_is_stable() -> None:
    # Journals written by earlier runs must still match: the key is part of the file format.
    assert job_key("abc", "s1") == "f13d0e052429d2cda8dae0703e35661e"


# --- what each event means -------------------------------------------------------------------


def test_an_intent_is_an_orphan_until_its_submit_is_answered(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.intent("k", "a.png", 2)
    for j in _both(path, journal):
        entry = _entry(j)
        assert (entry.state, entry.rel, entry.attempts) == ("intent", "a.png", 2)
        assert entry.job_id is None
        assert j.orphans() == [entry] and j.in_flight() == []


def test_a_submitted_job_is_in_flight_on_its_endpoint(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.intent("k", "a.png", 1)
    journal.submitted("k", "j1", "ep-1", "http://127.0.0.1:9/v2")
    for j in _both(path, journal):
        entry = _entry(j)
        assert (entry.state, entry.job_id, entry.endpoint) == ("submitted", "j1", "ep-1")
        assert entry.in_flight and j.in_flight() == [entry] and j.orphans() == []


def test_a_new_attempt_forgets_the_old_job(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.intent("k", "a.png", 1)
    journal.submitted("k", "j1", "ep", "u")
    journal.intent("k", "a.png", 2)
    for j in _both(path, journal):
        entry = _entry(j)
        assert (entry.state, entry.job_id, entry.attempts) == ("intent", None, 2)
        assert not entry.in_flight


def test_an_intent_without_its_attempt_counts_one_more(tmp_path: Path) -> None:
    journal = _lines(tmp_path / "j.jsonl",
                     {"event": "intent", "key": "k", "rel": "a.png", "attempt": 3},
                     {"event": "intent", "key": "k", "rel": "a.png"})
    assert _entry(journal).attempts == 4


def test_a_confirmed_cancel_lets_a_rerun_send_the_image_again(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.submitted("k", "j1", "ep", "u")
    journal.cancelled("k", "j1", ANSWER_CANCELLED, "stalled")
    for j in _both(path, journal):
        entry = _entry(j)
        assert entry.state == "cancelled" and not entry.in_flight
        assert entry.cancels == [{"job_id": "j1", "answer": ANSWER_CANCELLED, "reason": "stalled"}]


@pytest.mark.parametrize("answer", [
    {"id": "j1", "status": "COMPLETED"},  # it ended first: its result is still to collect
    {"id": "j1", "status": "IN_PROGRESS"},
    "CANCELLED",  # not the endpoint's object
    None,
])
def test_an_unconfirmed_cancel_keeps_the_job_in_flight(tmp_path: Path, answer: object) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.submitted("k", "j1", "ep", "u")
    journal.cancelled("k", "j1", answer, "stalled")
    for j in _both(path, journal):
        entry = _entry(j)
        assert entry.state == "submitted" and entry.in_flight
        assert [c["answer"] for c in entry.cancels] == [answer]


def test_a_cancel_of_an_earlier_job_leaves_the_current_one_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.submitted("k", "j2", "ep", "u")
    journal.cancelled("k", "j1", ANSWER_CANCELLED, "moved")
    journal.cancelled("k", "j0", ANSWER_CANCELLED, "moved")
    for j in _both(path, journal):
        entry = _entry(j)
        assert entry.in_flight and entry.job_id == "j2"
        assert [c["job_id"] for c in entry.cancels] == ["j1", "j0"]


def test_a_cancel_before_any_submit_changes_no_state(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    journal.intent("k", "a.png", 1)
    journal.cancelled("k", "j1", ANSWER_CANCELLED, "why")
    assert _entry(journal).state == "intent"


def test_a_lost_job_is_neither_in_flight_nor_an_orphan(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.submitted("k", "j1", "ep", "u")
    journal.lost("k", "j1", "expired")
    for j in _both(path, journal):
        entry = _entry(j)
        assert (entry.state, entry.job_id) == ("cancelled", None)
        assert j.in_flight() == [] and j.orphans() == []


@pytest.mark.parametrize(("status", "state"), [("COMPLETED", "done"), ("FAILED", "failed"),
                                               ("CANCELLED", "failed"), ("TIMED_OUT", "failed")])
def test_the_end_record_decides_done_or_failed(tmp_path: Path, status: str, state: str) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.submitted("k", "j1", "ep", "u")
    record = {"input": "dir/é.png", "status": status, "outputs": ["dir/é.png"]}
    journal.end("k", record)
    for j in _both(path, journal):
        entry = _entry(j)
        assert (entry.state, entry.rel, entry.record) == (state, "dir/é.png", record)
        assert not entry.in_flight


def test_end_records_are_kept_as_compact_text(tmp_path: Path) -> None:
    # One record per image stays in memory for the whole run: no spaces, no \\u escapes.
    journal = Journal(tmp_path / "j.jsonl")
    journal.end("k", {"input": "é.png", "status": "COMPLETED"})
    assert _entry(journal).record_text == '{"input":"é.png","status":"COMPLETED"}'


def test_the_file_name_follows_the_latest_event_that_names_it(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.intent("k", "old.png", 1)
    journal.submitted("k", "j1", "ep", "u")  # names no file: keeps it
    assert _entry(journal).rel == "old.png"
    journal.intent("k", "new.png", 2)
    for j in _both(path, journal):
        assert _entry(j).rel == "new.png"


def test_an_entry_with_nothing_recorded_yet() -> None:
    entry = Entry("k")
    assert (entry.state, entry.record, entry.cancels, entry.in_flight) == ("new", None, [], False)


def test_unknown_events_are_ignored(tmp_path: Path) -> None:
    journal = _lines(tmp_path / "j.jsonl",
                     {"event": "submitted", "key": "k", "rel": "a.png", "job_id": "j1"},
                     {"event": "from-a-newer-rpq", "key": "k", "rel": "a.png"})
    assert journal.torn_lines == 0 and _entry(journal).in_flight


# --- which lines are read ---------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    {"event": "intent", "key": 7, "rel": "a.png", "attempt": 1},
    {"event": "intent", "rel": "a.png", "attempt": 1},
    {"event": "intent", "key": "k", "rel": ["a.png"], "attempt": 1},
    {"event": "intent", "key": "k", "rel": "a.png", "attempt": -1},
    {"event": "intent", "key": "k", "rel": "a.png", "attempt": True},
    {"event": "intent", "key": "k", "rel": "a.png", "attempt": "2"},
    {"event": "submitted", "key": "k", "rel": "a.png"},
    {"event": "submitted", "key": "k", "rel": "a.png", "job_id": ""},
    {"event": "submitted", "key": "k", "rel": "a.png", "job_id": 12},
    {"event": "submitted", "key": "k", "job_id": "j1", "endpoint": 5},
    {"event": "submitted", "key": "k", "job_id": "j1", "base_url": ["u"]},
    {"event": "end", "key": "k", "record": "COMPLETED"},
    {"event": "end", "key": "k", "record": {"status": "COMPLETED", "outputs": "a.png"}},
    {"event": "end", "key": "k", "record": {"status": "COMPLETED", "outputs": ["a.png", 3]}},
    '["event", "intent"]',
    "{",
])
def test_a_damaged_line_is_skipped_and_counted(tmp_path: Path, line: dict[str, Any] | str) -> None:
    good = {"event": "intent", "key": "other", "rel": "b.png", "attempt": 1}
    journal = _lines(tmp_path / "j.jsonl", good, line, good)
    assert journal.torn_lines == 1
    assert journal.get("k") is None
    assert [e.rel for e in journal.orphans()] == ["b.png"]


@pytest.mark.parametrize("line", [
    {"event": "intent", "key": "k", "rel": "a.png", "attempt": 0},
    {"event": "intent", "key": "k"},
    {"event": "submitted", "key": "k", "job_id": "j1", "endpoint": None, "base_url": None},
    {"event": "submitted", "key": "k", "job_id": "j1", "endpoint": "ep", "base_url": "u"},
    {"event": "end", "key": "k", "record": {"status": "FAILED"}},
    {"event": "end", "key": "k", "record": {"status": "COMPLETED", "outputs": None}},
    {"event": "end", "key": "k", "record": {"status": "COMPLETED", "outputs": ["a.png"]}},
    {"event": "cancel", "key": "k", "job_id": 5, "answer": [1]},
    {"event": "lost", "key": "k"},
])
def test_a_line_rpq_could_have_written_is_read(tmp_path: Path, line: dict[str, Any]) -> None:
    journal = _lines(tmp_path / "j.jsonl", line)
    assert journal.torn_lines == 0 and journal.get("k") is not None


def test_an_unreadable_journal_says_how_to_start_over(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.mkdir()  # exists, yet cannot be read as a file
    with pytest.raises(UsageError, match="--fresh") as caught:
        Journal(path)
    assert str(path) in str(caught.value)


def test_no_journal_yet_is_an_empty_one(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "none" / "j.jsonl")
    assert (len(journal.entries), journal.torn_lines) == (0, 0)
    assert not (tmp_path / "none").exists()  # nothing written before the first event


# --- how lines are written --------------------------------------------------------------------


def test_each_event_is_one_compact_line_with_a_time(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "j.jsonl"
    with Journal(path) as journal:
        journal.intent("k", "a.png", 1)
        journal.submitted("k", "j1", "ep", "http://h/v2")
        journal.cancelled("k", "j1", ANSWER_CANCELLED, "r")
        journal.lost("k", "j1", "gone")
        journal.end("k", {"input": "é.png", "status": "FAILED"})
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\n\n" not in raw
    lines = raw.decode().splitlines()
    assert " " not in lines[0] and "é" in lines[-1]
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["intent", "submitted", "cancel", "lost", "end"]
    assert all(isinstance(e["ts"], float) and e["ts"] > 1.7e9 for e in events)
    assert events[1] == {"event": "submitted", "key": "k", "job_id": "j1", "endpoint": "ep",
                         "base_url": "http://h/v2", "ts": events[1]["ts"]}
    assert events[3]["reason"] == "gone" and events[2]["reason"] == "r"
    assert events[4]["rel"] == "é.png"


def test_a_line_torn_by_a_crash_is_ended_before_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"event":"intent","key":"a","rel":"a.png","attempt":1}\n{"event":"end","ke')
    journal = Journal(path)
    journal.intent("k", "b.png", 1)
    journal.close()
    again = Journal(path)
    assert again.torn_lines == 1
    assert sorted(e.rel for e in again.orphans()) == ["a.png", "b.png"]


def test_a_whole_last_line_gets_no_blank_line_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"event":"intent","key":"a","rel":"a.png","attempt":1}\n')
    with Journal(path) as journal:
        journal.intent("k", "b.png", 1)
    assert b"\n\n" not in path.read_bytes()
    assert Journal(path).torn_lines == 0


def test_the_journal_is_private_to_its_owner(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with Journal(tmp_path / "j.jsonl") as journal:
            journal.intent("k", "a.png", 1)
    finally:
        os.umask(old)
    assert (tmp_path / "j.jsonl").stat().st_mode & 0o777 == 0o600


def test_writing_after_close_opens_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.close()  # nothing open yet: fine
    journal.intent("k", "a.png", 1)
    journal.close()
    journal.close()
    journal.submitted("k", "j1", "ep", "u")
    journal.close()
    assert _entry(Journal(path)).in_flight


# --- questions, with every entry in memory and with most of them in the index -----------------

MANY = SAVE_EVERY + 44  # past one save: the first SAVE_EVERY keys go to the index


def _filled(path: Path, n: int) -> Journal:
    """n images: every third done (output out-i.png), every third failed, the rest in flight."""
    journal = Journal(path)
    for i in range(n):
        key = f"k{i:04d}"
        journal.intent(key, f"in-{i}.png", 1)
        journal.submitted(key, f"j{i}", "ep", "u")
        if i % 3 == 0:
            journal.end(key, {"input": f"in-{i}.png", "status": "COMPLETED",
                              "outputs": [f"out-{i}.png"]})
        elif i % 3 == 1:
            journal.end(key, {"input": f"in-{i}.png", "status": "FAILED",
                              "outputs": [f"failed-{i}.png"]})
    return journal


@pytest.mark.parametrize("n", [5, MANY])
def test_entries_answer_like_a_mapping(tmp_path: Path, n: int) -> None:
    path = tmp_path / "j.jsonl"
    for journal in (_filled(path, n), Journal(path)):
        entries = journal.entries
        assert len(entries) == n
        assert "k0001" in entries and "nope" not in entries and 5 not in entries
        assert entries["k0001"].rel == "in-1.png" and entries.get("k0002").job_id == "j2"
        assert entries.get("nope") is None
        with pytest.raises(KeyError, match="nope"):
            entries["nope"]
        keys = sorted(entries)
        assert keys == [f"k{i:04d}" for i in range(n)]
        assert sorted(entries.keys()) == keys
        assert sorted(k for k, e in entries.items() if e.key == k) == keys
        assert sorted(e.key for e in entries.values()) == keys


@pytest.mark.parametrize("n", [5, MANY])
def test_the_owner_of_an_earlier_output_is_a_finished_job(tmp_path: Path, n: int) -> None:
    path = tmp_path / "j.jsonl"
    _filled(path, n).close()
    journal = Journal(path)
    assert journal.output_owner("out-3.png") == "in-3.png"
    assert journal.output_owner(f"out-{n - 2 - (n - 2) % 3}.png") == f"in-{n - 2 - (n - 2) % 3}.png"
    assert journal.output_owner("failed-1.png") is None  # a failed job owns nothing
    assert journal.output_owner("out-1.png") is None


@pytest.mark.parametrize("n", [5, MANY])
def test_in_flight_and_orphans_span_the_index_and_recent_lines(tmp_path: Path, n: int) -> None:
    path = tmp_path / "j.jsonl"
    journal = _filled(path, n)
    journal.intent("late", "late.png", 1)  # after the last save: only in memory
    journal.submitted("k0002", "j2b", "ep", "u")  # an indexed key changed since
    expected = sorted(f"k{i:04d}" for i in range(n) if i % 3 == 2)
    for j in (journal, Journal(path)):
        assert sorted(e.key for e in j.in_flight()) == expected
        assert j.get("k0002").job_id == "j2b"
        assert [e.key for e in j.orphans()] == ["late"]
        assert len(j.entries) == n + 1


def test_a_second_writer_s_lines_are_folded_once(tmp_path: Path) -> None:
    # `rpq cancel` appends to the journal a batch is writing: the batch folds those lines in
    # file order, once, even after the other process saved the index past them.
    path = tmp_path / "j.jsonl"
    batch = Journal(path)
    batch.submitted("k", "j1", "ep", "u")
    other = Journal(path)
    other.cancelled("k", "j1", ANSWER_CANCELLED, "rpq cancel")
    for i in range(SAVE_EVERY + 1):
        other.intent(f"x{i}", f"x{i}.png", 1)
    other.close()
    batch.intent("k2", "b.png", 1)
    entry = _entry(batch)
    assert entry.state == "cancelled" and len(entry.cancels) == 1
    assert len(batch.entries) == SAVE_EVERY + 3
    again = Journal(path)
    assert len(_entry(again).cancels) == 1 and len(again.entries) == SAVE_EVERY + 3


# --- more of how lines are written -----------------------------------------------------------


def test_the_first_line_makes_the_folders_it_needs(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "j.jsonl"
    Journal(path).intent("k", "a.png", 1)
    assert _entry(Journal(path)).state == "intent"


def test_times_are_kept_to_the_millisecond(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        for i in range(20):
            journal.intent(f"k{i}", "a.png", 1)
    times = [json.loads(line)["ts"] for line in path.read_text().splitlines()]
    assert all(t == round(t, 3) for t in times)


def test_a_lost_line_names_the_job_and_why(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.lost("k", "j1", "expired")
    [event] = [json.loads(line) for line in path.read_text().splitlines()]
    assert event == {"event": "lost", "key": "k", "job_id": "j1", "reason": "expired",
                     "ts": event["ts"]}


def test_an_end_whose_record_names_no_input_is_still_read_back(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.intent("k", "a.png", 1)
        journal.submitted("k", "j1", "ep", "u")
        journal.end("k", {"status": "COMPLETED"})
    assert _entry(Journal(path)).state == "done"


def test_a_torn_last_line_counts_once_after_the_next_line_ends_it(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"event":"intent","key":"a","rel":"a.png","attempt":1}\n{"event":"end"')
    journal = Journal(path)
    assert journal.torn_lines == 1
    journal.intent("k", "b.png", 1)
    assert journal.torn_lines == 1


def test_a_cancel_written_after_another_writer_s_line_is_noted_once(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    batch = Journal(path)
    batch.submitted("k", "j1", "ep", "u")
    Journal(path).intent("x", "x.png", 1)  # another process, between two of our lines
    batch.cancelled("k", "j1", ANSWER_CANCELLED, "stalled")
    for journal in _both(path, batch):
        assert [c["reason"] for c in _entry(journal).cancels] == ["stalled"]
        assert _entry(journal, "x").state == "intent"


# --- a full disk ------------------------------------------------------------------------------


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    with contextlib.suppress(OSError):
        while os.write(fd, bytes(1024)):
            pass
    os.close(fd)
    return filler


def test_a_full_disk_refuses_a_new_journal_s_first_line() -> None:
    with tiny_tmpfs("16k") as disk:
        _fill(disk)
        journal = Journal(disk / "j.jsonl")
        with pytest.raises(OSError) as refused:
            journal.intent("k", "a.png", 1)
        assert refused.value.errno == errno.ENOSPC
        journal.close()
        assert (disk / "j.jsonl").read_bytes() == b""


def test_a_line_the_disk_takes_only_part_of_is_taken_back_whole() -> None:
    with tiny_tmpfs("16k") as disk:
        path = disk / "j.jsonl"
        journal = Journal(path)
        journal.intent("a", "a.png", 1)
        journal.intent("b", "b.png", 1)
        before = path.read_bytes()
        _fill(disk)
        with pytest.raises(OSError) as refused:  # longer than what is left of its page
            journal.intent("c", "c" * 5000 + ".png", 1)
        assert str(refused.value) == f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: " \
            f"'{path}'"
        journal.close()
        assert path.read_bytes() == before
        assert sorted(e.rel for e in Journal(path).orphans()) == ["a.png", "b.png"]


def test_a_full_disk_still_takes_the_lines_of_paid_jobs_from_the_room() -> None:
    # Once /run has answered the job is paid for: its lines go in whatever filled the disk,
    # while a new job is refused; with space again, the room is whole before the next job.
    with tiny_tmpfs("64k") as disk:
        path = disk / "j.jsonl"
        room = disk / "j.room"
        journal = Journal(path, room=True)
        keys = [f"k{i:02d}" for i in range(12)]
        for key in keys:
            journal.intent(key, f"{key}.png", 1)
        assert room.stat().st_size == ROOM_SIZE
        filler = _fill(disk)
        for key in keys:
            journal.submitted(key, f"job-{key}", "ep", "http://127.0.0.1")
            journal.end(key, {"input": f"{key}.png", "status": "COMPLETED",
                              "outputs": [f"{key}.png" + "x" * 200]})
        assert room.stat().st_size < ROOM_SIZE
        with pytest.raises(OSError) as refused:
            journal.intent("new", "new.png", 1)
        assert refused.value.errno == errno.ENOSPC
        filler.unlink()
        journal.intent("new", "new.png", 1)
        assert room.stat().st_size == ROOM_SIZE
        journal.close()
        assert not room.exists()
        lines = path.read_bytes().splitlines(keepends=True)
        assert all(line.endswith(b"\n") and json.loads(line) for line in lines)
        again = Journal(path)
        assert all(_entry(again, key).state == "done" for key in keys)
        assert [e.key for e in again.orphans()] == ["new"]
