"""Shared fixtures: per-test isolation and local endpoints on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import Gate, Handle, LoopbackServer
from hypothesis import settings

from rpq.local import LocalEndpoint

# CI explores the same examples every run (a red build is reproducible); locally, each run
# explores new ones. `HYPOTHESIS_PROFILE=ci` reproduces CI on a laptop.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

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


@pytest.fixture
def make_endpoint() -> Iterator[Callable[..., LocalEndpoint]]:
    """Factory: make_endpoint(**LocalEndpoint kwargs) -> a started endpoint, stopped at teardown."""
    started: list[LocalEndpoint] = []

    def make(**kwargs: Any) -> LocalEndpoint:
        endpoint = LocalEndpoint(**kwargs).start()
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        endpoint.stop()


@pytest.fixture
def loopback() -> Iterator[Callable[..., LoopbackServer]]:
    """Factory: loopback(handle, protocol=...) -> a LoopbackServer, closed at teardown."""
    started: list[LoopbackServer] = []

    def make(handle: Handle, *, protocol: str = "HTTP/1.0") -> LoopbackServer:
        server = LoopbackServer(handle, protocol=protocol)
        started.append(server)
        return server

    yield make
    for server in started:
        server.close()


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
