"""Shared fixtures: per-test isolation, local and scripted endpoints, loopback servers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from chaoskit import shared_folder
from endpointkit import FakeEndpoint, Script, ScriptedEndpoint
from helpers import FakeClock, Gate, LoopbackServer, WebhookReceiver
from hypothesis import settings
from s3kit import S3Server, s3_server

from rpq.api import RunPodClient
from rpq.limiter import Limiters
from rpq.local import LocalEndpoint
from rpq.submit import Caller

# CI explores the same examples every run (a red build is reproducible); locally, each run
# explores new ones. `HYPOTHESIS_PROFILE=ci` reproduces CI on a laptop.
# No per-example deadline: a wall-clock limit fails on a loaded machine, not on a wrong answer.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True, deadline=None)
settings.register_profile("dev", deadline=None)
# `make mutants` runs the tests once per mutant: fewer examples, same seed every time.
settings.register_profile("mutants", settings.get_profile("ci"), max_examples=10)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

T = TypeVar("T")

_CLEARED = ("RUNPOD_API_KEY", "RUNPOD_ENDPOINT_ID", "RUNPOD_ENDPOINT_BASE_URL")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A private HOME and no RunPod or rpq settings leaking in from the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in list(os.environ):
        if name in _CLEARED or name.startswith("RPQ_"):
            monkeypatch.delenv(name, raising=False)


def _factory(make: Callable[..., T], stop: Callable[[T], object]) -> Iterator[Callable[..., T]]:
    """A fixture's factory: everything it makes is stopped at teardown, in order."""
    made: list[T] = []

    def factory(*args: Any, **kwargs: Any) -> T:
        thing = make(*args, **kwargs)
        made.append(thing)
        return thing

    yield factory
    for thing in made:
        stop(thing)


@pytest.fixture
def make_endpoint() -> Iterator[Callable[..., LocalEndpoint]]:
    """Factory: make_endpoint(**LocalEndpoint kwargs) -> a started endpoint, stopped at teardown."""
    yield from _factory(lambda **kwargs: LocalEndpoint(**kwargs).start(), LocalEndpoint.stop)


@pytest.fixture
def loopback() -> Iterator[Callable[..., LoopbackServer]]:
    """Factory: loopback(handle, protocol=...) -> a LoopbackServer, closed at teardown."""
    yield from _factory(LoopbackServer, LoopbackServer.close)


@pytest.fixture
def webhook(loopback: Callable[..., LoopbackServer]) -> Callable[..., WebhookReceiver]:
    """Factory: webhook(status=200, failures=0) -> a WebhookReceiver on 127.0.0.1."""
    return lambda **kwargs: WebhookReceiver(loopback, **kwargs)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A requests session for raw API calls, closed at teardown."""
    with requests.Session() as session:
        yield session


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A handler that holds jobs until the test opens them; all opened at teardown."""
    g = Gate()
    yield g
    g.open_all()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, shared by the tests of one module."""
    with s3_server() as server:
        yield server


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder an unprivileged child process can reach (pytest's tmp_path is private)."""
    with shared_folder() as path:
        yield path


@pytest.fixture
def fake_endpoint() -> Iterator[Callable[[Script], FakeEndpoint]]:
    """Factory: fake_endpoint(script) -> a FakeEndpoint answering on cue, stopped at teardown."""
    yield from _factory(FakeEndpoint, FakeEndpoint.stop)


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock, starting at 1000 s."""
    return FakeClock(1000.0)


@pytest.fixture
def scripted(clock: FakeClock, loopback: Callable[..., LoopbackServer]) -> ScriptedEndpoint:
    """/status and /status-sync answered from a script; answers move `clock`."""
    return ScriptedEndpoint(clock, loopback)


@pytest.fixture
def caller(scripted: ScriptedEndpoint, clock: FakeClock) -> Iterator[Caller]:
    """A Caller on the scripted endpoint, its limiters and sleeps on `clock`."""
    client = RunPodClient(scripted.server.url + "/v2", "ep", None)
    yield Caller(client, Limiters(clock=clock, sleep=clock.sleep), sleep=clock.sleep)
    client.close()
