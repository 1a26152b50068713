"""What people read on stderr: -v/-q levels, log lines and notes through one Rich console."""

from __future__ import annotations

import logging
import time
from typing import Any

# -q: errors and the final summary; default: warnings and notes; -v: retries and pacing;
# -vv: every request.
QUIET, NORMAL, VERBOSE, DEBUG = -1, 0, 1, 2
_LEVELS = {QUIET: logging.ERROR, NORMAL: logging.WARNING, VERBOSE: logging.INFO,
           DEBUG: logging.DEBUG}
_STYLES = {logging.DEBUG: "dim", logging.INFO: "cyan", logging.WARNING: "yellow",
           logging.ERROR: "bold red"}

_state: dict[str, Any] = {"verbosity": NORMAL, "console": None}


def console() -> Any:
    """The one stderr console: a live table and log lines drawn through it never collide."""
    if _state["console"] is None:
        from rich.console import Console

        _state["console"] = Console(stderr=True, highlight=False)
    return _state["console"]


def verbosity() -> int:
    return int(_state["verbosity"])


def configure(verbose: int = 0, quiet: bool = False) -> None:
    """Route rpq's loggers to stderr at the level -v/-q ask for (quiet wins)."""
    level = QUIET if quiet else min(verbose, DEBUG)
    _state["verbosity"] = level
    _state["console"] = None  # a fresh one for this command's stderr
    logger = logging.getLogger("rpq")
    # Only ever lower the logger's level (a test's caplog may have set it lower still); the
    # handler decides what is printed.
    logger.setLevel(min(logger.getEffectiveLevel(), _LEVELS[level]))
    handler = next((h for h in logger.handlers if isinstance(h, _RichLines)), None)
    if handler is None:
        handler = _RichLines()
        logger.addHandler(handler)
    handler.setLevel(_LEVELS[level])


def note(text: str) -> None:
    """A line for people (what rpq chose, where things went); hidden by -q."""
    if verbosity() > QUIET:
        console().print(text, markup=False, highlight=False, soft_wrap=True)


class _RichLines(logging.Handler):
    """One line per record: time, level word, message; printed above a live table if any."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from rich.text import Text

            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            word = record.levelname.lower()
            line = Text.assemble((stamp, "dim"), " ", (f"{word:<7}", _STYLES.get(
                record.levelno, "")), " ", record.getMessage())
            console().print(line, soft_wrap=True)
        except Exception:  # a log line must never break a run
            self.handleError(record)
