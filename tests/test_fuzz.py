"""Property tests over the two readers of untrusted text: the journal reader (a file a crash,
a full disk or a hand edit may have damaged) and the output extractor (whatever a worker
returns). tests/test_journal.py feeds the reader random bytes and tests/test_extract.py feeds
the extractor random JSON and every known shape; these add what those do not check."""

from __future__ import annotations

import base64
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from rpq.extract import OutputError, decode_worker_error, extract, safe_name
from rpq.journal import Entry, Journal

# --- the journal reader -----------------------------------------------------------------------

KEYS = st.sampled_from(["k1", "k2", "k3"])
JOB_IDS = st.sampled_from(["job-a", "job-b", "job-c-u1"])
RELS = st.sampled_from(["a.png", "sub/b b.jpg", "ünï/c.webp"])
RECORDS = st.fixed_dictionaries(
    {"input": RELS, "status": st.sampled_from(["COMPLETED", "FAILED", "CANCELLED"])},
    optional={"outputs": st.lists(RELS, max_size=2), "error": st.text(max_size=20)},
)
# One journal call: (method, arguments) as rpq makes them.
CALLS = st.one_of(
    st.tuples(st.just("intent"), st.tuples(KEYS, RELS, st.integers(1, 5))),
    st.tuples(st.just("submitted"), st.tuples(KEYS, JOB_IDS, st.just("ep"),
                                              st.just("http://127.0.0.1:1/v2"))),
    st.tuples(st.just("cancelled"), st.tuples(
        KEYS, JOB_IDS, st.sampled_from([{"status": "CANCELLED"}, {"status": "COMPLETED"},
                                        {"error": "HTTP 500"}]), st.just("stalled"))),
    st.tuples(st.just("lost"), st.tuples(KEYS, JOB_IDS, st.sampled_from(["expired",
                                                                          "cancelled"]))),
    st.tuples(st.just("end"), st.tuples(KEYS, RECORDS)),
)


def _snapshot(journal: Journal) -> dict[str, tuple[Any, ...]]:
    return {k: (e.rel, e.state, e.job_id, e.attempts, e.record, len(e.cancels))
            for k, e in journal.entries.items()}


def _sane(entry: Entry) -> None:
    assert isinstance(entry.rel, str)
    assert entry.state in ("new", "intent", "submitted", "cancelled", "done", "failed")
    assert entry.job_id is None or (isinstance(entry.job_id, str) and entry.job_id)
    assert isinstance(entry.attempts, int) and entry.attempts >= 0
    assert entry.record is None or isinstance(entry.record, dict)
    if entry.in_flight:
        assert isinstance(entry.job_id, str)
    if entry.record is not None:
        outputs = entry.record.get("outputs") or []
        assert isinstance(outputs, list) and all(isinstance(o, str) for o in outputs)


@settings(max_examples=150, deadline=None)
@given(calls=st.lists(CALLS, max_size=25), cut=st.integers(min_value=1))
def test_reloaded_journal_equals_the_written_one_up_to_a_torn_last_line(
        calls: list[tuple[str, tuple[Any, ...]]], cut: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        journal = Journal(path)
        states = [_snapshot(journal)]
        for method, args in calls:
            getattr(journal, method)(*args)
            states.append(_snapshot(journal))
        journal.close()
        assert _snapshot(Journal(path)) == states[-1]
        if not calls:
            return
        # A crash during the last write leaves a prefix of its line: the reader shows the
        # journal as it was before that event, and appending afterwards still works.
        data = path.read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        torn = data[: last + cut % (len(data) - last)]
        path.write_bytes(torn)
        again = Journal(path)
        whole = torn[last:] == data[last:].rstrip(b"\n")  # only its newline is missing
        assert _snapshot(again) == (states[-1] if whole else states[-2])
        again.intent("k9", "z.png", 1)
        again.close()
        final = Journal(path)
        assert final.get("k9") is not None and final.get("k9").state == "intent"  # type: ignore[union-attr]


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
JSON_ANY = st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3)
                        | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=6)
# Lines shaped like journal events, with any value in any field.
EVENTS = st.fixed_dictionaries(
    {"key": KEYS, "event": st.sampled_from(["intent", "submitted", "cancel", "lost", "end",
                                             "other"])},
    optional={"rel": JSON_ANY, "attempt": JSON_ANY, "job_id": JSON_ANY, "endpoint": JSON_ANY,
              "base_url": JSON_ANY, "answer": JSON_ANY, "reason": JSON_ANY,
              "record": JSON_ANY | st.fixed_dictionaries(
                  {"status": JSON_ANY}, optional={"outputs": JSON_ANY, "input": JSON_ANY})},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(EVENTS, max_size=12))
def test_reader_takes_any_well_formed_json_line_without_crashing(
        events: list[dict[str, Any]]) -> None:
    # Lines a hand edit or a damaged disk could leave: the run must start, skipping what it
    # cannot use, never stop on a traceback.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "j.jsonl"
        path.write_text("".join(json.dumps(e) + "\n" for e in events))
        journal = Journal(path)
        for entry in journal.entries.values():
            _sane(entry)
        assert journal.torn_lines <= len(events)


# --- the output extractor ---------------------------------------------------------------------


def _png(colour: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (colour, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


@settings(max_examples=300, deadline=None)
@given(st.recursive(JSON_SCALARS | st.text(min_size=300, max_size=3000),
                    lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.sampled_from(["image", "images", "message", "status",
                                                        "output", "error", "data", "x"]),
                                      c, max_size=3), max_leaves=8))
def test_error_messages_stay_short_whatever_the_output(output: object) -> None:
    # An error quotes what it found, clipped: a megabyte of garbage never becomes a
    # megabyte-long line on stderr or in job_metrics.json.
    try:
        extract(output)
    except OutputError as exc:
        assert 0 < len(str(exc)) <= 1200
        assert "\n" not in str(exc) or len(str(exc)) <= 1200


@settings(max_examples=200, deadline=None)
@given(path=st.lists(st.sampled_from(["result", "files", "0", "1", "png", "x"]), min_size=1,
                     max_size=4), colour=st.integers(0, 255))
def test_output_key_finds_the_image_wherever_it_is_put(path: list[str], colour: int) -> None:
    image = _png(colour)
    value: object = base64.b64encode(image).decode()
    for part in reversed(path):
        value = [value] * (int(part) + 1) if part.isdigit() else {part: value}
    artifacts = extract(value, key=".".join(path))
    assert [a.data for a in artifacts] == [image]


@settings(max_examples=200, deadline=None)
@given(url=st.from_regex(r"https?://[a-z]{1,10}\.[a-z]{2,3}/[A-Za-z0-9_./-]{0,30}",
                         fullmatch=True),
       wrap=st.sampled_from(["bare", "image", "images", "comfy", "list", "nested"]))
def test_http_urls_come_back_unchanged_and_nothing_else_is_fetched(url: str, wrap: str) -> None:
    shapes: dict[str, object] = {
        "bare": url, "image": {"image": url}, "images": {"images": [url]},
        "comfy": {"images": [{"filename": "x.png", "type": "s3_url", "data": url}]},
        "list": [url], "nested": {"output": {"image": url}},
    }
    artifacts = extract(shapes[wrap])
    assert [(a.url, a.data) for a in artifacts] == [(url, None)]
    for scheme in ("file", "ftp", "gopher", "s3", "gs"):
        other = url.replace("https://", f"{scheme}://").replace("http://", f"{scheme}://")
        try:
            found = extract({"image": other})
        except OutputError:
            continue
        raise AssertionError(f"{other!r} was taken: {found}")


@given(st.recursive(JSON_SCALARS, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=10))
def test_worker_errors_become_one_bounded_line(error: object) -> None:
    text = decode_worker_error(error)
    assert text and "\n" not in text and len(text) <= 500


@given(st.text())
@example("x.png.")  # was `x.png`, then `x` on a second pass
@example("a.b.c")
@example("con" + " " * 97 + "x")  # cut to `con`, a reserved name, only after the check
def test_safe_name_is_stable(name: str) -> None:
    once = safe_name(name)
    if once is not None:
        assert safe_name(once) == once
        assert "." not in once and len(once) <= 100
