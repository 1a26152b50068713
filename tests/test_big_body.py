"""A large answer (a result inline in a status reply) is announced before it is read."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Callable

from helpers import wait_for

from rpq.api import BIG_BODY, RunPodClient
from rpq.budget import Budget
from rpq.local import LocalEndpoint


def run_and_wait(client: RunPodClient, payload: str) -> dict[str, object]:
    job = client.run(json.dumps({"input": {"image": payload}}).encode())
    for _ in range(20):
        body = client.status(str(job["id"]), wait_ms=2000)
        if body.get("status") == "COMPLETED":
            return body
    raise AssertionError("the job never completed")


def test_a_large_result_is_announced_with_its_size_before_it_is_read(
    make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo", workers_max=1, workers_min=1)
    client = RunPodClient(ep.base_url, ep.endpoint_id, None)
    sizes: list[int] = []
    client.on_big_body = sizes.append
    small = run_and_wait(client, base64.b64encode(b"x" * 1000).decode())
    assert small["output"] and sizes == []
    image = base64.b64encode(os.urandom(2 * BIG_BODY)).decode()
    big = run_and_wait(client, image)
    assert big["output"] == {"image": image}  # echo: the same bytes come back, whole
    assert len(sizes) == 1 and sizes[0] > len(image)


def test_reading_a_large_result_waits_for_room_in_the_budget(
    make_endpoint: Callable[..., LocalEndpoint]
) -> None:
    ep = make_endpoint(handler="echo", workers_max=1, workers_min=1)
    client = RunPodClient(ep.base_url, ep.endpoint_id, None)
    budget = Budget(8 * BIG_BODY)
    client.on_big_body = lambda n: budget.charge_here(n)
    image = base64.b64encode(os.urandom(2 * BIG_BODY)).decode()
    job = client.run(json.dumps({"input": {"image": image}}).encode())
    assert budget.acquire(8 * BIG_BODY)  # other jobs hold it all
    got: list[dict[str, object]] = []

    def poll() -> None:
        got.append(client.status(str(job["id"]), wait_ms=5000))
        budget.release_here()

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    wait_for(lambda: budget.waiting == 1, timeout=20)  # the answer waits in the socket
    assert got == []
    budget.release(8 * BIG_BODY)
    poller.join(20)
    assert got and got[0]["output"] == {"image": image}
    assert budget.in_use == 0
