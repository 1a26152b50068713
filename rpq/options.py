"""Command-line options declared once, on the dataclass fields they fill."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_KEY = "rpq.option"
_UNSET: Any = object()


@dataclass(frozen=True)
class Opt:
    """How one dataclass field is set on the command line.

    The field's own default is the option's default unless `cli_default` says otherwise (the
    library and the command line may want different ones, e.g. the port of `rpq serve`).
    `parse` turns the option's text into the field's value; its ValueError names what is wrong
    and becomes a usage error that names the option. Fields without a default are optional on
    the command line (None), and the command fills them in.
    """

    flags: tuple[str, ...]
    help: str
    metavar: str | None = None
    envvar: str | None = None
    group: str | None = None
    min: float | None = None
    max: float | None = None
    parse: Callable[[str], Any] | None = None
    cli_type: Any = None
    cli_default: Any = _UNSET
    secret: bool = False

    def default_for(self, f: dataclasses.Field[Any]) -> Any:
        """The option's default: `cli_default` when given, else the field's (maybe MISSING)."""
        return f.default if self.cli_default is _UNSET else self.cli_default

    @property
    def flag(self) -> str:
        """The long flag, as error messages name the option."""
        return next((f.split("/")[0] for f in self.flags if f.startswith("--")), self.flags[0])


def option(
    *flags: str,
    help: str,
    default: Any = dataclasses.MISSING,
    metavar: str | None = None,
    envvar: str | None = None,
    group: str | None = None,
    min: float | None = None,
    max: float | None = None,
    parse: Callable[[str], Any] | None = None,
    cli_type: Any = None,
    cli_default: Any = _UNSET,
    secret: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option."""
    spec = Opt(flags, help, metavar, envvar, group, min, max, parse, cli_type, cli_default, secret)
    return dataclasses.field(default=default, repr=not secret, metadata={_KEY: spec})


def options_of(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Opt]]:
    """The fields of a dataclass that are options, in declaration order."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_KEY)
        if isinstance(spec, Opt):
            yield f, spec


def flag_of(cls: type, name: str) -> str:
    """The option that sets field `name`, or the field name for fields that are not options."""
    for f, spec in options_of(cls):
        if f.name == name:
            return spec.flag
    return name


def public_values(obj: Any) -> dict[str, Any]:
    """The option fields of a settings object as JSON values; secrets only as set or not."""
    values: dict[str, Any] = {}
    for f, spec in options_of(type(obj)):
        value = getattr(obj, f.name)
        if spec.secret:
            value = value is not None and value != ""
        elif isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (str, int, float, bool, list, dict)):
            value = str(value)
        values[f.name] = value
    return values


class FieldError(ValueError):
    """A field's value is wrong; the message can name fields as options (`{field}` slots)."""

    def __init__(self, name: str, problem: str, *others: str) -> None:
        self.name = name
        self.problem = problem
        self.others = others
        super().__init__(self.render(lambda field: field))

    def render(self, names: Callable[[str], str]) -> str:
        """The message with each field named by `names` (e.g. its option)."""
        problem = self.problem.format(**{o: names(o) for o in self.others}) if self.others \
            else self.problem  # a problem without slots may quote user text with braces
        return f"{names(self.name)} {problem}"
