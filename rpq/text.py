"""Shortening text for messages and tables: clipped with an ellipsis, or folded to one line."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """`text` if it fits in `limit` characters, else its start and an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str, limit: int) -> str:
    """`text` with each run of white space (newlines too) made one space, then clipped."""
    return clip(" ".join(text.split()), limit)
