"""`rpq report`: analyse a run's job_metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rpq import logs
from rpq.commands.common import QuietOpt, VerboseOpt

_SLA_HELP = (
    "SLA on total time (submit to result) as PERCENT:SECONDS pairs; "
    "exit code 1 when any line fails."
)


def report(
    metrics: Annotated[
        list[Path],
        typer.Argument(
            help="job_metrics.json written by `rpq batch` (or the folder holding it); several "
            "(one per --shard or machine) are reported as one run.",
            show_default=False,
            metavar="METRICS.json",
        ),
    ],
    sla: Annotated[
        str, typer.Option("--sla", metavar="PCT:SECS,...", help=_SLA_HELP)
    ] = "95:60,99:120",
    compare: Annotated[
        Path | None,
        typer.Option(
            "--compare", metavar="FILE.json",
            help="Another run's job_metrics.json: side by side, with deltas.",
        ),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot", metavar="FILE.png", help="Write a timeline of every job to this PNG file."
        ),
    ] = None,
    cost_per_hour: Annotated[
        float | None,
        typer.Option(
            "--cost-per-hour",
            min=0.0,
            metavar="PRICE",
            help="GPU price in $/hour: estimate what the run cost.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")
    ] = False,
    slowest: Annotated[
        int,
        typer.Option("--slowest", min=0, metavar="N", help="How many of the slowest jobs to list."),
    ] = 5,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Summarise a run: latency percentiles, SLA check, failures, slowest jobs, cost.

    Several metrics files (the shards of one input, run on several machines) are pooled into
    one run: percentiles and SLA over every job, wall time from the first submit to the last
    result; an input found in more than one file is named in a note.

    The report goes to stdout (tables, or JSON with --json); notes go to stderr.
    Exit code 0 when every SLA line passes, 1 when one fails, 2 for a bad file or option.
    Cold starts are taken from the run's records; where unknown, a job counts as one when its
    queue time is more than 5 s above, and more than twice, the run's median queue time.
    """
    import json

    from rpq import report as rep
    from rpq.errors import ExitCode
    from rpq.metrics import load_metrics

    logs.configure(verbose, quiet)
    options = rep.ReportOptions(
        sla=rep.parse_sla(sla), slowest=slowest, cost_per_hour=cost_per_hour
    )
    sources = [str(path) for path in metrics]
    current, merged = rep.combine([load_metrics(path) for path in metrics], sources)
    baseline = load_metrics(compare) if compare is not None else None
    document = rep.build_report(
        current,
        options,
        source=", ".join(sources),
        baseline=baseline,
        baseline_source=str(compare or ""),
        merged=merged,
    )
    if merged["overlap"]["count"]:
        logs.note(
            f"note: {merged['overlap']['count']} input(s) appear in more than one metrics file; "
            "shards never overlap, so a file may have been given twice"
        )
    if plot is not None:
        document["plot_title"] = rep.plot_timeline(current.jobs, plot)
        document["plot"] = str(plot)
        logs.note(f"wrote timeline plot to {plot}")
    if as_json:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console

        rep.render_text(document, Console(highlight=False))
    if not document["sla"]["passed"]:
        typer.echo("SLA not met: see the SLA lines of the report", err=True)
        raise typer.Exit(int(ExitCode.FAILED))
