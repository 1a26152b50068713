"""`rpq batch`: push every image of a folder through the endpoint."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from rpq.commands.common import ApiKeyOpt, BaseUrlOpt, EndpointOpt


def batch(
    folder: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    endpoint: EndpointOpt = None,
    api_key: ApiKeyOpt = None,
    base_url: BaseUrlOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o",
                   help="Output folder (default: <FOLDER>_out).")] = None,
    include: Annotated[list[str] | None, typer.Option(
        "--include", help="Only files matching this glob (repeatable), e.g. '*.jpg'.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Skip files matching this glob (repeatable).")] = None,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive",
                         help="Descend into subfolders.")] = True,
    input_template: Annotated[Path | None, typer.Option(
        "--input-template", help="JSON request template with {{image_base64}} etc.")] = None,
    workflow: Annotated[Path | None, typer.Option(
        "--workflow", help="ComfyUI workflow (API format) for a worker-comfyui endpoint.")] = None,
    max_side: Annotated[int | None, typer.Option(
        "--max-side", min=16, help="Downscale so the long side is at most PX before sending.")
    ] = None,
    fmt: Annotated[str | None, typer.Option(
        "--format", help="Re-encode before sending: png, jpeg or webp.")] = None,
    execution_timeout: Annotated[float | None, typer.Option(
        "--execution-timeout", min=1, help="policy.executionTimeout in seconds.")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", min=1,
                   help="policy.ttl in seconds (job lifetime from submission).")] = None,
    low_priority: Annotated[bool, typer.Option("--low-priority",
                            help="policy.lowPriority: do not trigger scale-up.")] = False,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, max=400,
                           help="Jobs in flight at once.")] = 8,
    rate: Annotated[str | None, typer.Option(
        "--rate", help="Cap submissions, N/SECONDS (e.g. 5/60).")] = None,
    max_retries: Annotated[int, typer.Option("--max-retries", min=0,
                           help="Retries of one request on 429, 5xx or connection errors.")] = 3,
    max_queue_time: Annotated[float, typer.Option(
        "--max-queue-time", min=1, help="Seconds without progress before a queued job counts "
        "as stuck (cancelled and resubmitted).")] = 60.0,
    job_retries: Annotated[int, typer.Option("--job-retries", min=0,
                           help="Resubmissions of a stuck job.")] = 1,
    max_wait: Annotated[float, typer.Option("--max-wait", min=1,
                        help="Seconds one job may take in all; then cancel and fail.")] = 600.0,
    output_key: Annotated[str | None, typer.Option(
        "--output-key", help="Dotted path of the image inside the output, e.g. images.0.data.")
    ] = None,
    save_json: Annotated[bool, typer.Option("--save-json",
                         help="Also write each job's JSON next to its image.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed",
                            help="Retry images that failed in an earlier run.")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore the journal: redo everything.")
                     ] = False,
    metrics: Annotated[Path | None, typer.Option(
        "--metrics", help="Where to write job_metrics.json (default: OUT/job_metrics.json).")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
                        ] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would be sent; send nothing.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress",
                           help="One plain line per job instead of the live table.")] = False,
    poll: Annotated[str, typer.Option("--poll", help="auto, sync (status-sync long polls) "
                    "or status (adaptive /status polls).")] = "auto",
    local_workers: Annotated[int, typer.Option("--local-workers", min=1,
                             help="Workers of the built-in local endpoint.")] = 2,
    fallback_endpoint: Annotated[str | None, typer.Option(
        "--fallback-endpoint", help="Endpoint id (same base URL and key) or full endpoint URL "
        "to move queued jobs to when the endpoint is unhealthy or stalls.")] = None,
    alert_webhook: Annotated[str | None, typer.Option(
        "--alert-webhook", help="POST alerts and the final summary here (Slack/Discord "
        "compatible JSON).")] = None,
    alert_queue_time: Annotated[float, typer.Option(
        "--alert-queue-time", min=0, help="Alert when a job waits longer in the queue (s).")
    ] = 60.0,
    alert_process_time: Annotated[float, typer.Option(
        "--alert-process-time", min=0, help="Alert when a job runs longer (s).")] = 120.0,
    alert_failure_rate: Annotated[float, typer.Option(
        "--alert-failure-rate", min=0, max=100,
        help="Alert when this % of finished jobs failed.")] = 20.0,
    cost_per_hour: Annotated[float | None, typer.Option(
        "--cost-per-hour", min=0, help="Worker price in USD per hour, for the live spend.")
    ] = None,
    budget: Annotated[float | None, typer.Option(
        "--budget", min=0, help="Stop submitting when the estimated spend reaches USD "
        "(needs --cost-per-hour).")] = None,
    halt_on_fail: Annotated[str | None, typer.Option(
        "--halt-on-fail", help="Stop submitting when this many (e.g. 5) or this share "
        "(e.g. 20%) of finished jobs failed.")] = None,
) -> None:
    """Process every image in FOLDER through the endpoint and write the results."""
    from rpq.errors import ExitCode, UsageError
    from rpq.settings import BatchSettings, EndpointSettings, resolve_endpoint

    if fmt is not None and fmt.lower() not in ("png", "jpeg", "jpg", "webp"):
        raise UsageError(f"--format {fmt!r}: use png, jpeg or webp.")
    if poll not in ("auto", "sync", "status"):
        raise UsageError(f"--poll {poll!r}: use auto, sync or status.")
    if budget is not None and cost_per_hour is None:
        raise UsageError("--budget needs --cost-per-hour to estimate the spend.")
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder. Pass the folder that holds your images.")
    ep = resolve_endpoint(endpoint, api_key, base_url)
    settings = BatchSettings(
        root=folder, out=out or folder.with_name(folder.resolve().name + "_out"), endpoint=ep,
        include=tuple(include or ()), exclude=tuple(exclude or ()), recursive=recursive,
        template=input_template, workflow=workflow, max_side=max_side,
        fmt=("jpeg" if fmt and fmt.lower() == "jpg" else fmt.lower() if fmt else None),
        execution_timeout=execution_timeout, ttl=ttl, low_priority=low_priority,
        concurrency=concurrency, rate=rate, max_retries=max_retries,
        max_queue_time=max_queue_time, job_retries=job_retries, max_wait=max_wait,
        output_key=output_key, save_json=save_json, retry_failed=retry_failed, fresh=fresh,
        metrics=metrics, json_summary=json_out, dry_run=dry_run,
        progress="plain" if no_progress else "auto", poll_mode=poll,
        fallback_endpoint=fallback_endpoint, alert_webhook=alert_webhook,
        alert_queue_time=alert_queue_time, alert_process_time=alert_process_time,
        alert_failure_rate=alert_failure_rate, cost_per_hour=cost_per_hour, budget=budget,
        halt_on_fail=halt_on_fail,
    )
    if not ep.local:
        raise typer.Exit(run_batch(settings))
    from rpq.local import LocalEndpoint

    with LocalEndpoint(handler="remove-background", workers_max=local_workers,
                       workers_min=local_workers) as local:
        print(f"rpq: no endpoint configured; using the built-in local endpoint "
              f"(remove-background, {local_workers} workers) at {local.base_url}",
              file=sys.stderr)
        local_ep = EndpointSettings(endpoint_id=local.endpoint_id, base_url=local.base_url)
        code = run_batch(_replace_endpoint(settings, local_ep))
    if code != ExitCode.OK:
        raise typer.Exit(code)


def _replace_endpoint(settings: Any, ep: Any) -> Any:
    from dataclasses import replace

    return replace(settings, endpoint=ep)


def run_batch(settings: Any) -> int:
    """Run the batch with the right reporter and Ctrl-C handling; returns the exit code."""
    from rpq.errors import ExitCode
    from rpq.pipeline import Batch
    from rpq.progress import LiveReporter, PlainReporter, Reporter

    reporter: Reporter
    if settings.progress == "auto" and sys.stderr.isatty():
        reporter = LiveReporter()
    else:
        reporter = PlainReporter()
    runner = Batch(settings, reporter)
    runner.check_endpoint()
    if settings.dry_run:
        print(json.dumps(runner.dry_run(), indent=2, ensure_ascii=False))
        return ExitCode.OK

    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        runner.interrupt()

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        result = runner.run()
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    _print_summary(result, settings)
    if result.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.FAILED if result.failed or result.stop_reason else ExitCode.OK


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _print_summary(result: Any, settings: Any) -> None:
    stats = result.summary["stats"]
    if settings.json_summary:
        print(json.dumps(result.summary, indent=2, ensure_ascii=False))
    cancelled = int(stats.get("cancelled") or 0)
    failed = int(stats.get("failed") or 0) - cancelled
    lines = [
        f"{stats.get('completed', 0)} of {stats.get('total_jobs', 0)} images done, "
        f"{failed} failed" + (f", {cancelled} cancelled" if cancelled else "")
        + (f" (success {stats.get('success_rate')}%)" if stats.get("total_jobs") else ""),
        f"results in {settings.out}   metrics in {result.summary['metrics']}",
    ]
    if stats.get("p95_total_time") is not None:
        lines.append(
            f"total time per job: avg {stats.get('avg_total_time')}s, "
            f"p50 {stats.get('p50_total_time')}s, p95 {stats.get('p95_total_time')}s"
        )
    if result.skipped:
        lines.append(f"{result.skipped} image(s) were already handled by an earlier run "
                     "(--retry-failed retries earlier failures, --fresh redoes everything)")
    if result.orphans:
        lines.append(f"note: {result.orphans} submit(s) of an earlier run were cut off before the "
                     "endpoint answered; those images were sent again.")
    if result.stop_reason:
        lines.append(f"stopped early, {result.stop_reason}; {result.not_started} image(s) not "
                     "sent. Rerun the same command to continue.")
    elif result.interrupted:
        lines.append("interrupted: rerun the same command to finish; "
                     "`rpq cancel --journal OUT` stops anything left running.")
    spend = result.summary["run"].get("estimated_cost")
    if spend is not None:
        lines.append(f"estimated spend ${spend:.4f} (execution time x --cost-per-hour)")
    for line in lines:
        print(line, file=sys.stderr)
