"""The journal survives torn writes and folds events into the right state."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rpq.journal import Journal, job_key


def test_key_depends_on_content_and_settings_not_name() -> None:
    assert job_key("abc", "s1") == job_key("abc", "s1")
    assert job_key("abc", "s1") != job_key("abd", "s1")
    assert job_key("abc", "s1") != job_key("abc", "s2")


def test_lifecycle_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.intent("k1", "a.png", 1)
        j.submitted("k1", "job-1", "ep", "http://127.0.0.1:1/v2")
        j.intent("k2", "b.png", 1)
        j.submitted("k2", "job-2", "ep", "http://127.0.0.1:1/v2")
        j.end("k2", {"input": "b.png", "status": "COMPLETED", "outputs": ["b.png"]})
        j.intent("k3", "c.png", 1)
    again = Journal(path)
    assert [e.job_id for e in again.in_flight()] == ["job-1"]
    assert again.get("k2") is not None and again.get("k2").state == "done"  # type: ignore[union-attr]
    assert [e.rel for e in again.orphans()] == ["c.png"]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.intent("k1", "a.png", 1)
        j.submitted("k1", "job-1", "ep", "u")
    with path.open("ab") as fh:
        fh.write(b'{"event":"end","key":"k1","rec')  # a crash mid-write
    again = Journal(path)
    assert again.torn_lines == 1
    assert again.get("k1").in_flight  # type: ignore[union-attr]
    # Appending after a torn line still gives readable lines.
    again.end("k1", {"input": "a.png", "status": "FAILED"})
    again.close()
    assert Journal(path).get("k1").state == "failed"  # type: ignore[union-attr]


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_reader_never_crashes_on_garbage(tmp_path_factory: object, data: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        path.write_bytes(data)
        j = Journal(path)
        assert len(j.entries) == sum(1 for _ in j.entries.values())


def test_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal(path) as j:
        j.intent("k", "a.png", 1)
    assert path.stat().st_mode & 0o077 == 0
