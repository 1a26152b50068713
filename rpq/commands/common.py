"""Options every command shares, options built from fields, and help laid out in groups."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand

from rpq.options import Opt, options_of

ENDPOINT, GENERAL = "Endpoint", "General"

# The environment variables are read by rpq.settings.resolve_endpoint, not by Typer: a flag
# that came from the environment could not be told from one typed (--profile beats
# RUNPOD_API_KEY, and a positional id must not clash with RUNPOD_ENDPOINT_ID).

EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", "-e", metavar="ID", rich_help_panel=ENDPOINT,
                 help="Endpoint id. `rpq batch` without one (or with 'local') starts its own "
                 "built-in local endpoint.  [env var: RUNPOD_ENDPOINT_ID]"),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", show_default=False, metavar="KEY", rich_help_panel=ENDPOINT,
                 help="RunPod API key; else ~/.runpod/config.toml [default] api_key.  "
                 "[env var: RUNPOD_API_KEY]"),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option("--profile", metavar="NAME", rich_help_panel=ENDPOINT,
                 help="Take the API key from [NAME] of ~/.runpod/config.toml (as `runpod "
                 "config --profile NAME` writes it) instead of [default] or RUNPOD_API_KEY."),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", metavar="URL", rich_help_panel=ENDPOINT,
                 help="API base URL (default https://api.runpod.ai/v2).  "
                 "[env var: RUNPOD_ENDPOINT_BASE_URL]"),
]
VerboseOpt = Annotated[
    int,
    typer.Option("--verbose", "-v", count=True, rich_help_panel=GENERAL, show_default=False,
                 help="More on stderr: -v retries and pacing, -vv every request."),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", rich_help_panel=GENERAL,
                 help="Only errors and the final summary on stderr."),
]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def with_options(*sources: type) -> Callable[[F], F]:
    """Add one Typer option per `option()` field of each dataclass to a command's signature.

    The command takes them as `**values` and hands them to `settings_from`; each option's
    flag, default, help and env var are written once, on its field.
    """

    def decorate(func: F) -> F:
        own = inspect.signature(func, eval_str=True)
        params = [p for p in own.parameters.values() if p.kind is not p.VAR_KEYWORD]
        hints = {p.name: p.annotation for p in params}
        for cls in sources:
            field_types = typing.get_type_hints(cls)
            for f, spec in options_of(cls):
                annotation, default = _typer_param(f, spec, field_types[f.name])
                hints[f.name] = annotation
                params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                                annotation=annotation, default=default))
        func.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        func.__annotations__ = {**hints, "return": own.return_annotation}
        return func

    return decorate


def settings_from(cls: type[T], values: Mapping[str, Any], **fixed: Any) -> T:
    """Build `cls` from a command's option values: parsed, converted, defaults where unset."""
    from rpq.errors import UsageError

    kwargs: dict[str, Any] = {}
    for f, spec in options_of(cls):
        if f.name in fixed or f.name not in values:
            continue
        value = values[f.name]
        if value is None:
            continue  # not given: the field's default (or the command's `fixed` value)
        if isinstance(value, list):
            value = tuple(value)
        if spec.parse is not None and isinstance(value, str):
            try:
                value = spec.parse(value)
            except ValueError as exc:
                raise UsageError(f"{spec.flag}: {exc}") from None
        kwargs[f.name] = value
    return cls(**kwargs, **fixed)


def _typer_param(f: dataclasses.Field[Any], spec: Opt, field_type: Any) -> tuple[Any, Any]:
    default = spec.default_for(f)
    cli_type = spec.cli_type or field_type
    if default is dataclasses.MISSING:
        default = None
        cli_type = cli_type | None
    if typing.get_origin(cli_type) is tuple or _is_optional_tuple(cli_type):
        cli_type, default = list[str] | None, None
    info = typer.Option(
        *spec.flags, help=spec.help, metavar=spec.metavar, envvar=spec.envvar,
        show_envvar=spec.envvar is not None, min=spec.min, max=spec.max,
        rich_help_panel=spec.group, show_default=not spec.secret and default not in (None, ""),
    )
    return Annotated[cli_type, info], default


def _is_optional_tuple(tp: Any) -> bool:
    return isinstance(tp, types.UnionType) and any(
        typing.get_origin(arg) is tuple for arg in typing.get_args(tp))


class GroupedHelp(TyperCommand):
    """Help with options under headings (their rich_help_panel) and the epilog as EXAMPLES.

    Plain text, without Rich: `rpq --help` stays fast.
    """

    group_order: tuple[str, ...] = ()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param.metavar or (param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args: list[tuple[str, str]] = []
        groups: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((param.metavar or (param.name or "").upper(),
                             getattr(param, "help", None) or ""))
            else:
                group = getattr(param, "rich_help_panel", None) or GENERAL
                groups.setdefault(group, []).append(record)
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        titles = dict.fromkeys([*self.group_order, *groups])  # in order, once each
        titles.pop(GENERAL, None)
        for title in [*titles, GENERAL]:  # -v, -q and --help last
            if groups.get(title):
                with formatter.section(title):
                    formatter.write_dl(groups[title])

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        if not self.epilog:
            return
        formatter.write_paragraph()
        formatter.write("Examples:\n")
        for line in self.epilog.strip("\n").splitlines():
            formatter.write(f"  {line}\n" if line.strip() else "\n")


def grouped(*order: str) -> type[GroupedHelp]:
    """A GroupedHelp command class that shows these groups first, in this order."""
    return type("GroupedHelp", (GroupedHelp,), {"group_order": order})
