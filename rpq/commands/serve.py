"""`rpq serve`: run the local RunPod-compatible endpoint."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from rpq.commands.common import settings_from, with_options
from rpq.local.config import EndpointConfig


@with_options(EndpointConfig)
def serve(**values: Any) -> None:
    """Serve RunPod's serverless queue API locally, with real queue semantics."""
    from rpq.errors import UsageError
    from rpq.local import HandlerLoadError, LocalEndpoint
    from rpq.options import FieldError, flag_of

    try:
        config = settings_from(EndpointConfig, values)
        endpoint = LocalEndpoint(config)
    except HandlerLoadError as exc:
        raise UsageError(f"--handler: {exc}") from None
    except FieldError as exc:
        raise UsageError(exc.render(lambda name: flag_of(EndpointConfig, name))) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    host, port = config.host, config.port
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            endpoint.start()
        except OSError as exc:
            raise UsageError(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                f"choose another --port, or --port 0 for a free one"
            ) from None
        base = endpoint.base_url
        print(
            f"rpq serve: {base} endpoint {endpoint.endpoint_id} "
            f"(RUNPOD_ENDPOINT_BASE_URL={base} RUNPOD_ENDPOINT_ID={endpoint.endpoint_id})",
            flush=True,
        )
        print("rpq serve: press Ctrl-C to stop", file=sys.stderr, flush=True)
        while not stop.wait(0.25):
            pass
    finally:
        endpoint.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)
