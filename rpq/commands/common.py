"""Options shared by every command that talks to an endpoint, and options built from fields."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

import typer

from rpq.options import Opt, options_of

EndpointOpt = Annotated[
    str | None,
    typer.Option("--endpoint", "-e", envvar="RUNPOD_ENDPOINT_ID", show_envvar=True,
                 help="Endpoint id; 'local' (or none at all) uses the built-in local endpoint."),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RUNPOD_API_KEY", show_envvar=True, show_default=False,
                 help="RunPod API key; else ~/.runpod/config.toml [default] api_key."),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option("--base-url", envvar="RUNPOD_ENDPOINT_BASE_URL", show_envvar=True,
                 help="API base URL (default https://api.runpod.ai/v2)."),
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
