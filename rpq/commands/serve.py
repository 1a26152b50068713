"""`rpq serve`: run the local RunPod-compatible endpoint."""

from __future__ import annotations

import re
from typing import Annotated

import typer

_OPTION_NAMES = {
    "workers_max": "--workers-max",
    "workers_min": "--workers-min",
    "idle_timeout": "--idle-timeout",
    "cold_start": "--cold-start",
    "process_time": "--process-time",
    "throttled": "--throttled",
    "endpoint id": "--endpoint-id",
    "port": "--port",
}


def serve(
    host: Annotated[
        str, typer.Option(help="Interface to listen on; anything but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 8000,
    endpoint_id: Annotated[
        str, typer.Option("--endpoint-id", help="Endpoint id in the URL path.")
    ] = "local",
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="RPQ_SERVE_API_KEY",
            show_default=False,
            help="Require this key (Authorization: Bearer KEY or a raw key).",
        ),
    ] = None,
    handler: Annotated[
        str,
        typer.Option(
            help="Built-in (remove-background, echo, sleep), path/worker.py "
            "or path/worker.py:function.",
        ),
    ] = "remove-background",
    workers_max: Annotated[int, typer.Option(help="Most workers running at once.")] = 3,
    workers_min: Annotated[
        int, typer.Option(help="Always-on workers (cold-start once, never released).")
    ] = 0,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds an idle on-demand worker stays up.")
    ] = 5.0,
    cold_start: Annotated[float, typer.Option(help="Seconds a new worker takes to start.")] = 0.0,
    process_time: Annotated[
        str, typer.Option(help="Extra seconds per job: S, or LO-HI for a uniform spread.")
    ] = "0",
    faults: Annotated[
        str,
        typer.Option(
            help="Injected faults, e.g. 500=0.1,429=0.05,drop=0.02,slow=0.1,"
            "fail=0.05,stuck=0.02,crash=0.01.",
        ),
    ] = "",
    seed: Annotated[
        int | None, typer.Option(help="Seed for faults and timings (reproducible runs).")
    ] = None,
    throttled: Annotated[
        int, typer.Option(help="Worker slots that can never start (shown as throttled).")
    ] = 0,
    rate_limits: Annotated[
        str,
        typer.Option(
            help="'default' (RunPod's per-10 s limits), 'off', or OP=N,... "
            "(only the named operations are limited).",
        ),
    ] = "default",
    log_requests: Annotated[
        bool, typer.Option("--log-requests", help="One line per request on stderr.")
    ] = False,
) -> None:
    """Serve RunPod's serverless queue API locally, with real queue semantics."""
    import signal
    import sys
    import threading

    from rpq.errors import UsageError
    from rpq.local import HandlerLoadError, LocalEndpoint, parse_faults

    try:
        parse_faults(faults)
    except ValueError as exc:
        raise UsageError(f"--faults: {exc}") from None
    try:
        endpoint = LocalEndpoint(
            endpoint_id=endpoint_id,
            api_key=api_key,
            host=host,
            port=port,
            handler=handler,
            workers_max=workers_max,
            workers_min=workers_min,
            idle_timeout=idle_timeout,
            cold_start=cold_start,
            process_time=parse_process_time(process_time),
            faults=faults,
            seed=seed,
            throttled=throttled,
            rate_limits=parse_rate_limits(rate_limits),
            log_requests=log_requests,
        )
    except HandlerLoadError as exc:
        raise UsageError(f"--handler: {exc}") from None
    except ValueError as exc:
        raise UsageError(_name_options(str(exc))) from None

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


def parse_process_time(text: str) -> float | tuple[float, float]:
    """'0.5' -> 0.5; '0.2-0.8' -> (0.2, 0.8)."""
    from rpq.errors import UsageError

    parts = text.strip().split("-")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1 and values[0] >= 0:
        return values[0]
    if len(values) == 2 and 0 <= values[0] <= values[1]:
        return values[0], values[1]
    raise UsageError(
        f"--process-time {text!r}: give seconds like 0.5, or a range like 0.2-0.8"
    )


def parse_rate_limits(text: str) -> dict[str, int] | None:
    """'default' -> None (documented limits); 'off' -> {}; 'run=5,status=100' -> dict."""
    from rpq.errors import UsageError
    from rpq.local.fleet import OPS

    spec = text.strip().lower()
    if spec in ("", "default"):
        return None
    if spec in ("off", "none", "0"):
        return {}
    limits: dict[str, int] = {}
    for part in spec.split(","):
        op, sep, value = part.strip().partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise UsageError(
                f"--rate-limits {text!r}: write OP=N with N >= 1, e.g. run=1000,status=2000, "
                f"or 'off'"
            )
        if op.strip() not in OPS:
            raise UsageError(
                f"--rate-limits: unknown operation {op.strip()!r}; use one of " + ", ".join(OPS)
            )
        limits[op.strip()] = int(value)
    return limits


def _name_options(message: str) -> str:
    # Config errors use field names; on the command line they are options.
    for field, option in _OPTION_NAMES.items():
        message = re.sub(rf"\b{re.escape(field)}\b", option, message)
    return message
