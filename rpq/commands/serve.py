"""`rpq serve`: run the local RunPod-compatible endpoint."""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from typing import Annotated, Any

import typer

from rpq import logs
from rpq.commands.common import QuietOpt, VerboseOpt, settings_from, with_options
from rpq.local.config import EndpointConfig


@with_options(EndpointConfig)
def serve(
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print where it listens as one JSON line on stdout.")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    **values: Any,
) -> None:
    """Serve RunPod's serverless queue API locally, with real queue semantics.

    The first line on stdout says where it listens (JSON with --json); -vv logs every request.

    Workers run a handler in one of two ways. --handler (built-ins, or a worker file loaded
    into this process with a stand-in runpod module; its workers are threads) is light and
    needs no SDK. --worker "python worker.py" starts each worker as its own process with
    the environment RunPod gives a worker, so the worker's own runpod SDK runs its real loop
    against this endpoint: streaming, concurrency_modifier, refresh_worker, progress
    updates, cancel and timeouts as on RunPod, real start-up times and separate globals.
    """
    from rpq.errors import UsageError
    from rpq.local import HandlerLoadError, LocalEndpoint
    from rpq.options import FieldError, flag_of

    logs.configure(verbose, quiet)
    try:
        config = settings_from(EndpointConfig, values)
        if logs.verbosity() >= logs.DEBUG:
            config = replace(config, log_requests=True)
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
        _announce(endpoint, json_out)
        logs.note("rpq serve: press Ctrl-C to stop")
        while not stop.wait(0.25):
            pass
    finally:
        endpoint.stop()
        for sig, old in previous.items():
            signal.signal(sig, old)


def _announce(endpoint: Any, as_json: bool) -> None:
    base, endpoint_id = endpoint.base_url, endpoint.endpoint_id
    if as_json:
        import json

        handler = endpoint.config.handler
        print(json.dumps({
            "base_url": base, "endpoint_id": endpoint_id, "url": endpoint.url,
            "host": endpoint.host, "port": endpoint.port,
            "handler": handler if isinstance(handler, str) else getattr(handler, "__name__", "?"),
            "worker": endpoint.config.worker_command,
            "workers_max": endpoint.config.workers_max,
            "api_key_required": endpoint.config.api_key is not None,
            "env": {"RUNPOD_ENDPOINT_BASE_URL": base, "RUNPOD_ENDPOINT_ID": endpoint_id},
        }), flush=True)
        return
    print(f"rpq serve: {base} endpoint {endpoint_id} "
          f"(RUNPOD_ENDPOINT_BASE_URL={base} RUNPOD_ENDPOINT_ID={endpoint_id})", flush=True)
