"""Command-line entry point: options in, one call, errors to exit codes."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from rpq.commands import batch as batch_cmd
from rpq.commands import ops as ops_cmd
from rpq.commands import report as report_cmd
from rpq.commands import serve as serve_cmd


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
    help="Push folders of images through RunPod Serverless queue endpoints, reliably and fast.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)

app.command("batch")(batch_cmd.batch)
app.command("serve")(serve_cmd.serve)
app.command("health")(ops_cmd.health)
app.command("cancel")(ops_cmd.cancel)
app.command("purge")(ops_cmd.purge)
app.command("report")(report_cmd.report)


def main() -> None:
    app(prog_name="rpq")
