"""The batch's endpoints: live jobs, cancel, fetching an ended job, failover (real local ones)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from endpointkit import FakeEndpoint, FakeJob
from helpers import Gate, wait_for

from rpq.api import RunPodClient
from rpq.endpoints import Endpoints
from rpq.journal import Journal
from rpq.limiter import Limiters
from rpq.local import LocalEndpoint
from rpq.states import Stage, Status
from rpq.submit import Caller


def caller(ep: LocalEndpoint) -> Caller:
    return Caller(RunPodClient(ep.base_url, ep.endpoint_id, None), Limiters(None),
                  max_retries=0)


@pytest.fixture
def pair(make_endpoint: Callable[..., LocalEndpoint],
         gate: Gate) -> tuple[LocalEndpoint, LocalEndpoint]:
    primary = make_endpoint(endpoint_id="primary", handler=gate, workers_max=1, rate_limits={})
    fallback = make_endpoint(endpoint_id="fallback", handler="echo", rate_limits={})
    return primary, fallback


def endpoints(pair: tuple[LocalEndpoint, LocalEndpoint], journal: Journal,
              said: list[str]) -> Endpoints:
    primary, fallback = pair
    return Endpoints({"primary": caller(primary), "fallback": caller(fallback)}, journal,
                     say=said.append, wall=lambda: 0.0)


def submit(eps: Endpoints, name: str, gate_name: str) -> str:
    return str(eps.callers[name].submit(f'{{"input": {{"gate": "{gate_name}"}}}}'.encode())["id"])


def test_failover_moves_only_the_jobs_still_queued_on_the_primary(
    pair: tuple[LocalEndpoint, LocalEndpoint], tmp_path: Path, gate: Gate
) -> None:
    said: list[str] = []
    eps = endpoints(pair, Journal(tmp_path / "j"), said)
    running, queued = submit(eps, "primary", "a"), submit(eps, "primary", "b")
    with eps.watching(running, "k1", "primary"), eps.watching(queued, "k2", "primary"):
        eps.saw(running, Status.IN_PROGRESS)
        assert eps.active == "primary"
        eps.fail_over("no worker")
        eps.fail_over("no worker, again")  # already on the fallback: nothing more to do
        assert eps.active == "fallback"
        assert eps.moving(queued) and not eps.moving(running)
        eps.moved(queued)
        assert not eps.moving(queued)
    assert eps.live() == []
    assert eps.failovers == [{"from": "primary", "to": "fallback", "reason": "no worker",
                              "at": "1970-01-01T00:00:00.000Z", "moved": 1}]
    assert said == ["failing over to fallback: no worker; moving 1 queued job(s)"]
    gate.open_all()


def test_a_stop_cancels_only_jobs_that_are_still_queued(
    pair: tuple[LocalEndpoint, LocalEndpoint], tmp_path: Path, gate: Gate
) -> None:
    journal = Journal(tmp_path / "j")
    eps = endpoints(pair, journal, [])
    primary = pair[0]
    running, queued = submit(eps, "primary", "a"), submit(eps, "primary", "b")
    wait_for(lambda: eps.callers["primary"].status(running)["status"] == Status.IN_PROGRESS)
    for job_id, key in ((running, "k1"), (queued, "k2")):
        journal.submitted(key, job_id, "primary", primary.base_url)
    # The live table still says IN_QUEUE for both: the stop asks before cancelling each.
    with eps.watching(running, "k1", "primary"), eps.watching(queued, "k2", "primary"):
        targets = eps.live(queued_only=True)
        assert sorted(targets) == sorted([(running, "k1", "primary"), (queued, "k2", "primary")])
        eps.cancel_later(targets, "budget reached", queued_only=True)
        wait_for(lambda: eps.callers["primary"].status(queued)["status"] == Status.CANCELLED)
        # The journal line follows the cancel's answer, on the cancelling thread.
        wait_for(lambda: (e := journal.get("k2")) is not None and e.state == Stage.CANCELLED)
    assert eps.callers["primary"].status(running)["status"] == Status.IN_PROGRESS
    assert journal.get("k1") is not None and journal.get("k1").state == Stage.SUBMITTED
    gate.open_all()


def test_an_ended_job_is_fetched_and_a_running_one_is_not(
    pair: tuple[LocalEndpoint, LocalEndpoint], tmp_path: Path, gate: Gate
) -> None:
    eps = endpoints(pair, Journal(tmp_path / "j"), [])
    job_id = submit(eps, "primary", "a")
    wait_for(lambda: eps.callers["primary"].status(job_id)["status"] == Status.IN_PROGRESS)
    assert eps.fetch_ended(job_id, "primary") is None
    gate.open("a")
    wait_for(lambda: eps.fetch_ended(job_id, "primary") is not None)
    # A job recorded under an endpoint no longer configured is asked of the primary.
    ended = eps.fetch_ended(job_id, "gone")
    assert ended is not None and ended["status"] == Status.COMPLETED and ended["id"] == job_id
    assert eps.cancel("k", job_id, "primary", "too late") == Status.COMPLETED


def test_the_end_of_a_run_waits_for_a_cancel_still_waiting_on_its_answer(
    tmp_path: Path
) -> None:
    # A job's poll can see it cancelled before the cancel's own answer is read; the run must
    # not close its journal and exit before that answer is recorded.
    asked, answer = threading.Event(), threading.Event()

    def script(op: str, job: FakeJob | None) -> None:
        if op == "cancel":
            asked.set()
            answer.wait(60)

    fake = FakeEndpoint(script)
    try:
        journal = Journal(tmp_path / "j")
        one = Caller(RunPodClient(fake.base_url, fake.endpoint_id, None), Limiters(None),
                     max_retries=0)
        eps = Endpoints({"ep": one}, journal, say=lambda _: None, wall=lambda: 0.0)
        job_id = str(one.submit(b'{"input": {"image": "x"}}')["id"])
        journal.submitted("k", job_id, "ep", fake.base_url)
        eps.cancel_later([(job_id, "k", "ep")], "interrupted", queued_only=False)
        assert asked.wait(60)
        settled = threading.Event()
        threading.Thread(target=lambda: (eps.settle(), settled.set()), daemon=True).start()
        assert not settled.wait(0.5)  # no answer yet: the end waits
        answer.set()
        assert settled.wait(60)
        entry = journal.get("k")
        assert entry is not None and entry.state == Stage.CANCELLED
    finally:
        answer.set()
        fake.stop()
