"""The official runpod-python client works unchanged against rpq serve."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from helpers import wait_for

from rpq.local import LocalEndpoint


def test_runpod_sdk_round_trip(
    make_endpoint: Callable[..., LocalEndpoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    runpod = pytest.importorskip("runpod")
    ep = make_endpoint(handler="echo", api_key="sdk-key", endpoint_id="ep123", rate_limits={})
    # RunPodClient reads both module attributes each time it is created.
    monkeypatch.setattr(runpod, "api_key", "sdk-key")
    monkeypatch.setattr(runpod, "endpoint_url_base", ep.base_url)

    endpoint = runpod.Endpoint("ep123")
    try:
        job = endpoint.run({"prompt": "hi"})
        wait_for(lambda: (ep.job(job.job_id) or {}).get("status") == "COMPLETED")
        assert job.status() == "COMPLETED"
        assert job.output() == {"echo": {"prompt": "hi"}}

        assert endpoint.run_sync({"input": {"n": 1}}, timeout=10) == {"echo": {"n": 1}}

        health = endpoint.health()
        assert health["jobs"]["completed"] == 2
        assert set(health["workers"]) >= {"idle", "running"}

        ep.pause()
        queued = endpoint.run({"n": 2})
        other = endpoint.run({"n": 3})
        assert queued.cancel() == {"id": queued.job_id, "status": "CANCELLED"}
        assert endpoint.purge_queue() == {"removed": 1, "status": "completed"}
        assert ep.job(other.job_id) is None
        ep.resume()
    finally:
        endpoint.rp_client.rp_session.close()

    wrong = runpod.Endpoint("ep123", api_key="not-the-key")
    try:
        with pytest.raises(RuntimeError, match="401"):
            wrong.health()
    finally:
        wrong.rp_client.rp_session.close()
