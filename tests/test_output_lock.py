"""One rpq batch at a time per output folder: a second one says who holds it and exits 2,
having read and written nothing there; a lock left by a killed run is taken over."""

from __future__ import annotations

import gc
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, in_flight, rpq_process, stop
from helpers import Gate, wait_for
from imaging import make_images

from rpq.journal import JOURNAL_NAME, SAVE_EVERY, Journal, index_path
from rpq.lock import LOCK_NAME
from rpq.metrics import JobRecord
from rpq.states import Stage


def second_run_while_held(first: subprocess.Popen[str], src: Path, out: Path, ep: Any,
                          gate: Gate, held: Callable[[], bool],
                          before: Callable[[], None] = lambda: None,
                          untouched: Callable[[], bool] = lambda: True) -> str:
    """Once `held()`, a second batch on `out` exits 2 naming `first`, which then ends well;
    returns the second's stderr. `untouched()` is asserted right after the second ends."""
    second = None
    try:
        wait_for(held, timeout=30, message="the first batch's jobs held")
        before()
        second = rpq_process(*batch_args(src, out), env=endpoint_env(ep))
        _, refused = second.communicate(timeout=60)
        assert second.returncode == 2, refused
        assert f"pid {first.pid} on host {socket.gethostname()}" in refused
        assert untouched()  # nothing read into the index, nothing written
        gate.open_all()
        _, stderr = first.communicate(timeout=60)
    finally:
        gate.open_all()
        stop(first)
        if second is not None:
            stop(second)
    assert first.returncode == 0, stderr
    return refused


def test_a_second_batch_on_the_same_output_folder_exits_2_naming_the_first(
        tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=60)
    ep = make_endpoint(handler=gate.echo, workers_max=2)
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 5)
    first = rpq_process(*batch_args(src, out), env=endpoint_env(ep))
    refused = second_run_while_held(first, src, out, ep, gate, lambda: in_flight(out) >= 2)
    assert refused.count("\n") == 1 and "Traceback" not in refused, refused
    assert f"{out} is in use by another rpq batch" in refused
    assert ep.calls().get("run") == 5  # each image sent once, not once per process
    assert sorted(p.name for p in out.glob("*.png")) == [f"img_{i:03d}.png" for i in range(5)]


def folder_bytes(out: Path) -> dict[str, bytes]:
    """Every file of an output folder, but SQLite's shared-memory file (no data, and readers
    write in it)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and not p.name.endswith("-shm")}


def test_a_second_batch_touches_neither_the_journal_nor_its_index(
        tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=60)
    ep = make_endpoint(handler=gate.echo, workers_max=3)
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    # An output folder with a long history: enough earlier jobs for the journal to keep an
    # index, which a run reading the journal brings up to date with the lines after it.
    earlier = SAVE_EVERY + 44
    with Journal(out / JOURNAL_NAME) as journal:
        for i in range(earlier):
            journal.end(f"earlier{i:04d}", JobRecord(input=f"old_{i:04d}.png",
                                                     status="COMPLETED").to_dict())
    del journal
    gc.collect()  # closes its index
    assert index_path(out / JOURNAL_NAME).exists()
    first = rpq_process(*batch_args(src, out), env=endpoint_env(ep))

    def held() -> bool:
        # The first run's jobs are accepted and held: its journal has lines its index has not.
        return (len(gate.started) == 3 and (out / JOURNAL_NAME).read_bytes()
                .count(b'"event":"submitted"') == 3)

    before: dict[str, bytes] = {}
    second_run_while_held(first, src, out, ep, gate, held,
                          lambda: before.update(folder_bytes(out)),
                          lambda: folder_bytes(out) == before)
    assert ep.calls().get("run") == 3
    journal = Journal(out / JOURNAL_NAME)
    assert len(journal.entries) == earlier + 3
    assert all(e.state == Stage.DONE for e in journal.entries.values())


def test_the_lock_of_a_killed_batch_is_taken_over(tmp_path: Path, make_endpoint) -> None:
    gate = Gate(timeout=60)
    ep = make_endpoint(handler=gate.echo, workers_max=1)
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    killed = rpq_process(*batch_args(src, out), env=endpoint_env(ep))
    try:
        wait_for(lambda: in_flight(out) == 3, timeout=30, message="the batch's jobs")
        holder = json.loads((out / LOCK_NAME).read_text())
        assert holder["pid"] == killed.pid
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
    finally:
        stop(killed)
    gate.open_all()
    rerun = rpq_process(*batch_args(src, out), env=endpoint_env(ep))
    try:
        _, stderr = rerun.communicate(timeout=60)
    finally:
        stop(rerun)
    assert rerun.returncode == 0, stderr
    assert "in use" not in stderr
    assert ep.calls().get("run") == 3  # the rerun followed the killed run's jobs
    assert len(list(out.glob("img_*.png"))) == 3
    # Released at the end, the file stays (never deleted: see OutputLock) and names nobody.
    assert (out / LOCK_NAME).read_text() == ""
    assert os.access(out / LOCK_NAME, os.R_OK)
