"""`rpq serve`: run the local RunPod-compatible endpoint."""

from __future__ import annotations


def serve() -> None:
    """Serve the RunPod queue API locally."""
    raise NotImplementedError
