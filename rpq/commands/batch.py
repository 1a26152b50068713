"""`rpq batch`: push every image of a folder through the endpoint."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, replace
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
    settings_from,
    with_options,
)
from rpq.settings import ENDPOINT, OUTPUT, BatchSettings


@with_options(BatchSettings)
def batch(
    folder: Annotated[str | None, typer.Argument(
        help="Folder of images (searched recursively), or s3://BUCKET/PREFIX; optional with "
        "--files-from.", metavar="FOLDER", show_default=False)] = None,
    endpoint: EndpointOpt = None,
    api_key: ApiKeyOpt = None,
    profile: ProfileOpt = None,
    base_url: BaseUrlOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
    json_out: Annotated[bool, typer.Option("--json", rich_help_panel=OUTPUT,
                        help="Print the summary as JSON on stdout.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", rich_help_panel=OUTPUT,
                       help="Show what would be sent; send nothing.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", rich_help_panel=OUTPUT,
                           help="One plain line per job instead of the live table.")] = False,
    local_workers: Annotated[int, typer.Option("--local-workers", min=1, metavar="N",
                             rich_help_panel=ENDPOINT,
                             help="Workers of the built-in local endpoint.")] = 2,
    **values: Any,
) -> None:
    """Process every image in FOLDER through the endpoint and write the results."""
    from rpq.errors import ExitCode
    from rpq.settings import EndpointSettings, resolve_endpoint

    logs.configure(verbose, quiet)
    places = _places(folder, values)
    ep = resolve_endpoint(endpoint, api_key, base_url, profile=profile)
    settings = settings_from(BatchSettings, values, endpoint=ep, **places)
    _check_files(settings)
    view = View(json_summary=json_out, dry_run=dry_run, live=not no_progress)
    if not ep.local:
        raise typer.Exit(int(run_batch(settings, view)))
    from rpq.local import LocalEndpoint

    with LocalEndpoint(handler="remove-background", workers_max=local_workers,
                       workers_min=local_workers) as local:
        logs.note(f"rpq: no endpoint configured; using the built-in local endpoint "
                  f"(remove-background, {local_workers} workers) at {local.base_url}")
        local_ep = EndpointSettings(endpoint_id=local.endpoint_id, base_url=local.base_url)
        code = run_batch(replace(settings, endpoint=local_ep), view)
    if code != ExitCode.OK:
        raise typer.Exit(int(code))


def _places(folder: str | None, values: dict[str, Any]) -> dict[str, Any]:
    """Input and output, each a folder or a bucket prefix: the settings fields they fill."""
    from rpq.errors import UsageError
    from rpq.storage import BucketPath, is_bucket, state_dir

    out = values.get("out")
    places: dict[str, Any] = {}
    if is_bucket(folder):
        if values.get("files_from") is not None:
            raise UsageError("--files-from lists local files: pass it without an s3:// input.")
        if out is None:
            raise UsageError("an s3:// input needs --out: a folder or s3://BUCKET/PREFIX.")
        places.update(bucket_in=str(BucketPath.parse(str(folder))), root=Path("."))
    elif folder is None:
        if values.get("files_from") is None:
            raise UsageError("pass the FOLDER of images, or --files-from FILE to list them.")
        if out is None:
            raise UsageError("--files-from without a FOLDER needs --out DIR for the results.")
        places["root"] = Path.cwd()
    else:
        root = Path(folder)
        if not root.is_dir():
            raise UsageError(f"{root} is not a folder. Pass the folder that holds your images.")
        places["root"] = root
    if is_bucket(out):
        bucket_out = str(BucketPath.parse(str(out)))
        journal_dir = values.get("journal_dir")
        places.update(bucket_out=bucket_out,
                      out=Path(journal_dir) if journal_dir else state_dir(bucket_out))
    else:
        root = places["root"]
        places["out"] = Path(out) if out else root.with_name(root.resolve().name + "_out")
    return places


def _check_files(settings: BatchSettings) -> None:
    """The files options name, checked before any endpoint starts or is asked anything."""
    from rpq.errors import UsageError
    from rpq.pipeline import build_template

    if settings.out.exists() and not settings.out.is_dir():
        raise UsageError(f"--out {settings.out} is a file, not a folder. Pass the folder "
                         "results go to (it is created if missing).")
    build_template(settings)  # --input-template / --workflow: readable, valid JSON, the right shape


@dataclass(frozen=True)
class View:
    """How a run shows itself: command-line choices the engine never reads."""

    json_summary: bool = False
    dry_run: bool = False
    live: bool = True


def run_batch(settings: BatchSettings, view: View | None = None) -> int:
    """Run the batch with the right reporter and Ctrl-C handling; returns the exit code."""
    from rpq.errors import ExitCode
    from rpq.lock import OutputLock
    from rpq.pipeline import Batch
    from rpq.progress import LiveReporter, PlainReporter, Reporter

    view = view or View()
    reporter: Reporter
    if logs.verbosity() == logs.QUIET:
        reporter = PlainReporter(failures_only=True)
    elif view.live and sys.stderr.isatty():
        reporter = LiveReporter(logs.console())
    else:
        reporter = PlainReporter()
    runner = Batch(settings, reporter)
    runner.check_input()
    runner.check_endpoint()
    if view.dry_run:
        print(json.dumps(runner.dry_run(), indent=2, ensure_ascii=False))
        return ExitCode.OK

    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        runner.interrupt()

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        with OutputLock(settings.out) as lock:  # one batch per output folder at a time
            if lock.warning:
                print(lock.warning, file=sys.stderr)
            result = runner.run()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    _print_summary(result, settings, view)
    if result.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED if result.failed or result.stop_reason else ExitCode.OK


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stopped_counts(result: Any, stats: dict[str, Any]) -> str:
    """A stopped run against the whole folder: "42 done, 5 cancelled, 43 not started, of 90"."""
    total = int(stats.get("total_jobs") or 0)
    cancelled = int(stats.get("cancelled") or 0)
    failed = int(stats.get("failed") or 0) - cancelled
    not_started = (result.found - total) if result.found is not None else result.not_started
    parts = [f"{stats.get('completed', 0)} done"]
    parts += [f"{failed} failed"] if failed else []
    parts += [f"{cancelled} cancelled"] if cancelled else []
    parts.append(f"{max(not_started, 0)} not started")
    found = result.found if result.found is not None else f"at least {total + not_started}"
    return ", ".join(parts) + f", of {found}"


def _print_summary(result: Any, settings: BatchSettings, view: View) -> None:
    stats = result.summary["stats"]
    if view.json_summary:
        print(json.dumps(result.summary, indent=2, ensure_ascii=False))
    cancelled = int(stats.get("cancelled") or 0)
    failed = int(stats.get("failed") or 0) - cancelled
    lines = [
        _stopped_counts(result, stats) if result.interrupted or result.stop_reason else
        f"{stats.get('completed', 0)} of {stats.get('total_jobs', 0)} images done, "
        f"{failed} failed" + (f", {cancelled} cancelled" if cancelled else "")
        + (f" (success {stats.get('success_rate')}%)" if stats.get("total_jobs") else ""),
        f"results in {settings.bucket_out or settings.out}   metrics in "
        f"{result.summary['metrics']}"
        + (f"   journal in {settings.out}" if settings.bucket_out else ""),
    ]
    if stats.get("p95_total_time") is not None:
        lines.append(
            f"total time per job: avg {stats.get('avg_total_time')}s, "
            f"p50 {stats.get('p50_total_time')}s, p95 {stats.get('p95_total_time')}s"
        )
    strays = int((result.summary["run"].get("not_images") or {}).get("count") or 0)
    if strays:
        lines.append(f"{strays} file(s) that are not images were skipped (listed in the "
                     "metrics file, run.not_images)")
    if result.skipped:
        lines.append(f"{result.skipped} image(s) were already handled by an earlier run "
                     "(--retry-failed retries earlier failures, --fresh redoes everything)")
    if result.twins:
        lines.append(f"{result.twins} image(s) sent the same request as another image of this "
                     "run: sent once, its result copied")
    if result.orphans:
        lines.append(f"note: {result.orphans} submit(s) of an earlier run were cut off before the "
                     "endpoint answered; those images were sent again.")
    if result.stop_reason:
        lines.append(f"stopped early, {result.stop_reason}. Rerun the same command to "
                     "continue.")
    elif result.interrupted:
        lines.append("interrupted: rerun the same command to finish; "
                     f"`rpq cancel --journal {settings.out}` stops anything left running.")
    spend = result.summary["run"].get("estimated_cost")
    if spend is not None:
        lines.append(f"estimated spend ${spend:.4f} (execution time x --cost-per-hour)")
    for line in lines:
        print(line, file=sys.stderr)
