"""`rpq health`, `rpq cancel`, `rpq purge`: look at and tidy an endpoint."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from rpq import logs
from rpq.commands.common import (
    ApiKeyOpt,
    BaseUrlOpt,
    EndpointOpt,
    ProfileOpt,
    QuietOpt,
    VerboseOpt,
)

EndpointArg = Annotated[
    str | None,
    typer.Argument(metavar="ID", show_default=False,
                   help="Endpoint id, a shortcut for -e ID."),
]


def _client(endpoint: str | None, api_key: str | None, base_url: str | None,
            profile: str | None = None, shortcut: str | None = None) -> Any:
    from rpq.api import RunPodClient
    from rpq.errors import UsageError
    from rpq.settings import LOCAL, resolve_endpoint

    if shortcut is not None and endpoint is not None and shortcut != endpoint:
        raise UsageError(f"two endpoints given: {shortcut} and -e {endpoint}. Pass one.")
    ep = resolve_endpoint(shortcut or endpoint, api_key, base_url, profile=profile)
    if ep.local and (shortcut or endpoint) == LOCAL:
        raise UsageError(
            "'local' is the endpoint `rpq batch` starts inside itself for one run; there is "
            "none to reach here. Start one with `rpq serve` and pass the base URL it prints: "
            "--base-url http://127.0.0.1:8000/v2 -e local (or set RUNPOD_ENDPOINT_BASE_URL)."
        )
    if ep.local:
        raise UsageError(
            "no endpoint given. Pass -e ID (or set RUNPOD_ENDPOINT_ID); for a local endpoint, "
            "start `rpq serve` and pass --base-url with the URL it prints, and -e local."
        )
    return RunPodClient(ep.base_url, ep.endpoint_id, ep.api_key)


def health(
    shortcut: EndpointArg = None,
    endpoint: EndpointOpt = None,
    api_key: ApiKeyOpt = None,
    profile: ProfileOpt = None,
    base_url: BaseUrlOpt = None,
    watch: Annotated[float | None, typer.Option("--watch", min=0.5, metavar="SECONDS",
                     help="Refresh every SECONDS until Ctrl-C.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the reply and the diagnosis "
                        "as JSON on stdout.")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Workers and jobs of an endpoint, with a diagnosis. Exit 0 healthy, 1 degraded."""
    from rpq.health import diagnose

    logs.configure(verbose, quiet)
    client = _client(endpoint, api_key, base_url, profile, shortcut)
    with client:
        if watch is None or json_out:
            reply = client.health()
            diagnosis = diagnose(reply)
            if json_out:
                print(json.dumps({"endpoint": client.endpoint_id, "health": reply,
                                  **diagnosis.to_dict()}, indent=2))
            else:
                from rich.console import Console

                Console().print(_health_view(client.endpoint_id, diagnosis))
            raise typer.Exit(1 if diagnosis.degraded else 0)
        from rich.console import Console
        from rich.live import Live

        degraded = False
        # Ctrl-C sets an event rather than raising in the middle of the loop: a
        # KeyboardInterrupt landing while Live's lock is held would leave the lock taken, and
        # leaving Live would then wait for it forever. A second Ctrl-C interrupts at once.
        stop = threading.Event()

        def on_sigint(signum: int, frame: Any) -> None:
            if stop.is_set():
                raise KeyboardInterrupt
            stop.set()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            with Live(console=Console(), refresh_per_second=2) as live:
                while not stop.is_set():
                    diagnosis = diagnose(client.health())
                    degraded = diagnosis.degraded
                    live.update(_health_view(client.endpoint_id, diagnosis))
                    stop.wait(watch)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise typer.Exit(1 if degraded else 0)


def _health_view(endpoint_id: str, diagnosis: Any) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    workers = Table(title=f"endpoint {endpoint_id}: workers", title_justify="left")
    for key in diagnosis.workers:
        workers.add_column(key, justify="right")
    workers.add_row(*(str(v) for v in diagnosis.workers.values()))
    jobs = Table(title="jobs", title_justify="left")
    for key in diagnosis.jobs:
        jobs.add_column(key, justify="right")
    jobs.add_row(*(str(v) for v in diagnosis.jobs.values()))
    style = "yellow" if diagnosis.degraded else "green"
    notes = [Text(f"- {line}", style=style) for line in diagnosis.findings]
    return Group(workers, jobs, Text("diagnosis:", style="bold"), *notes)


def cancel(
    job_ids: Annotated[list[str] | None, typer.Argument(
        metavar="JOB_ID", show_default=False, help="Job ids to cancel.")] = None,
    endpoint: EndpointOpt = None,
    api_key: ApiKeyOpt = None,
    profile: ProfileOpt = None,
    base_url: BaseUrlOpt = None,
    journal: Annotated[Path | None, typer.Option(
        "--journal", metavar="DIR", help="A batch's output folder (or its journal file): cancel "
        "every job it shows still in flight.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Cancel jobs, by id or everything a batch's journal shows still in flight."""
    from rpq.errors import APIError, UsageError
    from rpq.journal import JOURNAL_NAME, Journal
    from rpq.limiter import Limiters
    from rpq.submit import Caller

    logs.configure(verbose, quiet)
    targets: list[tuple[str, str | None]] = [(j, None) for j in job_ids or []]
    book = None
    if journal is not None:
        path = journal / JOURNAL_NAME if journal.is_dir() else journal
        if not path.exists():
            raise UsageError(f"no journal at {path}. Pass the output folder of a batch.")
        book = Journal(path)
        targets += [(e.job_id, e.key) for e in book.in_flight() if e.job_id]
        if endpoint is None:
            endpoints = {e.endpoint for e in book.in_flight() if e.endpoint}
            if len(endpoints) == 1:
                endpoint = endpoints.pop()
    if not targets:
        if journal is not None:
            logs.note("nothing to cancel: the journal shows no job in flight.")
            raise typer.Exit(0)
        raise UsageError("give job ids to cancel, or --journal OUT to cancel a batch's leftovers.")
    client = _client(endpoint, api_key, base_url, profile)
    caller = Caller(client, Limiters())
    answers = []
    failed = 0
    with client:
        client.health()  # an unknown endpoint, a refused key or no RunPod API: exit 3 here
        for job_id, key in targets:
            try:
                answer: Any = caller.cancel(job_id)
            except APIError as exc:
                _raise_if_endpoint_wide(exc, client, "cancel")
                failed += 1
                answer = {"error": str(exc)}
            answers.append({"id": job_id, "answer": answer})
            if book is not None and key is not None:
                book.cancelled(key, job_id, answer, "rpq cancel")
            if not json_out:
                status = answer.get("status") if isinstance(answer, dict) else None
                print(f"{job_id}: {status or answer.get('error') or answer}")
    if book is not None:
        book.close()
    if json_out:
        print(json.dumps(answers, indent=2))
    raise typer.Exit(1 if failed else 0)


def purge(
    shortcut: EndpointArg = None,
    endpoint: EndpointOpt = None,
    api_key: ApiKeyOpt = None,
    profile: ProfileOpt = None,
    base_url: BaseUrlOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the endpoint's answer as JSON "
                        "on stdout.")] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Remove every queued job of the endpoint (running jobs go on)."""
    from rpq.errors import APIError

    logs.configure(verbose, quiet)
    client = _client(endpoint, api_key, base_url, profile, shortcut)
    with client:
        health = client.health()  # an unknown endpoint, a refused key or no RunPod API: exit 3
        if not yes:
            jobs = health.get("jobs")
            queued = jobs.get("inQueue", "?") if isinstance(jobs, dict) else "?"
            if not sys.stdin.isatty():
                from rpq.errors import UsageError

                raise UsageError("purge needs confirmation: pass --yes when not on a terminal.")
            typer.confirm(f"Remove all {queued} queued job(s) of {client.endpoint_id}?",
                          abort=True, err=True)
        try:
            answer = client.purge()
        except APIError as exc:
            _raise_if_endpoint_wide(exc, client, "purge-queue")
            raise
    if json_out:
        print(json.dumps(answer))
        return
    removed = answer.get("removed", "?") if isinstance(answer, dict) else "?"
    print(f"removed {removed} queued job(s) from {client.endpoint_id}")


def _raise_if_endpoint_wide(exc: Any, client: Any, op: str) -> None:
    """A refused key or an answer that is not RunPod's ends the command with exit 3; other
    errors belong to one job."""
    from rpq.errors import EndpointError

    if isinstance(exc, EndpointError):
        raise exc
    if exc.status in (401, 403):
        raise client.refused(f"/{op}", exc.status) from None
