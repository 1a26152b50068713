"""Command-line entry point: options in, one call, errors to exit codes."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from rpq.commands import batch as batch_cmd
from rpq.commands import ops as ops_cmd
from rpq.commands import report as report_cmd
from rpq.commands import serve as serve_cmd
from rpq.commands.common import ENDPOINT, GENERAL, GroupedHelp, grouped
from rpq.local.config import FAULTS, WORKERS
from rpq.settings import ALERTS, FLOW, INPUT, OUTPUT, REQUEST


class _ErrorBoundary(TyperGroup):
    """The one place where RpqError becomes `error: ...` on stderr and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        from rpq.errors import ExitCode, RpqError

        try:
            return super().invoke(ctx)
        except RpqError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None


app = typer.Typer(
    name="rpq",
    cls=_ErrorBoundary,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=True,
)


def _show_version(value: bool) -> None:
    if value:
        from rpq import __version__

        typer.echo(f"rpq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", "-V", is_eager=True, callback=_show_version, rich_help_panel=GENERAL,
        help="Print rpq's version and exit.")] = False,
) -> None:
    """Push folders of images through RunPod Serverless queue endpoints, reliably and fast.

    Shell completion: `rpq --install-completion` (bash, zsh, fish, PowerShell).
    """


BATCH_EXAMPLES = """
rpq batch photos/                              # the built-in local endpoint, to try it
rpq batch photos/ -e abc123 -o cutouts/        # key from RUNPOD_API_KEY or ~/.runpod
rpq batch photos/ -e abc123 -c 32 --rate 100/60 --max-wait 300
rpq batch photos/ -e abc123 --workflow workflow_api.json --format jpeg --max-side 1024
rpq batch photos/ -e abc123 --cost-per-hour 0.69 --budget 5 --halt-on-fail 10%
rpq batch photos/ -e abc123 --dry-run          # what would be sent, nothing sent
"""
SERVE_EXAMPLES = """
rpq serve                                      # remove-background on 127.0.0.1:8000
rpq serve --handler echo --port 0 --json       # a free port, printed as JSON
rpq serve --handler worker.py:handler --workers-max 4 --cold-start 2
rpq serve --faults 500=0.1,429=0.05,stuck=0.02 --seed 1 --process-time 0.5-2
"""
HEALTH_EXAMPLES = """
rpq health -e abc123                           # or: rpq health abc123
rpq health -e abc123 --watch 5
rpq health -e abc123 --json | jq .diagnosis
"""
CANCEL_EXAMPLES = """
rpq cancel -e abc123 JOB_ID [JOB_ID...]
rpq cancel --journal photos_out/               # everything a batch left running
"""
PURGE_EXAMPLES = """
rpq purge -e abc123                            # asks first
rpq purge -e abc123 --yes --json
"""
REPORT_EXAMPLES = """
rpq report photos_out/                         # tables; exit 1 if an SLA line fails
rpq report photos_out/ --sla 95:30,99:60 --cost-per-hour 0.69
rpq report new_out/ --compare old_out/job_metrics.json
rpq report photos_out/ --plot timeline.png --json
"""

app.command("batch", cls=grouped(ENDPOINT, INPUT, REQUEST, FLOW, OUTPUT, ALERTS),
            epilog=BATCH_EXAMPLES)(batch_cmd.batch)
app.command("serve", cls=grouped(ENDPOINT, WORKERS, FAULTS), epilog=SERVE_EXAMPLES)(
    serve_cmd.serve)
app.command("health", cls=GroupedHelp, epilog=HEALTH_EXAMPLES)(ops_cmd.health)
app.command("cancel", cls=GroupedHelp, epilog=CANCEL_EXAMPLES)(ops_cmd.cancel)
app.command("purge", cls=GroupedHelp, epilog=PURGE_EXAMPLES)(ops_cmd.purge)
app.command("report", cls=GroupedHelp, epilog=REPORT_EXAMPLES)(report_cmd.report)


def main() -> None:
    app(prog_name="rpq")
