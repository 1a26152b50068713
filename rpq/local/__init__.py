"""rpq serve: a local endpoint that speaks RunPod's serverless queue API."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpq.local.config import EndpointConfig
    from rpq.local.faults import FaultSpec, parse_faults
    from rpq.local.handlers import HandlerLoadError
    from rpq.local.server import LocalEndpoint

# Imported on first use, so `rpq --help` and `rpq serve --help` need only the config.
_HOMES = {
    "EndpointConfig": "rpq.local.config",
    "FaultSpec": "rpq.local.faults",
    "parse_faults": "rpq.local.faults",
    "HandlerLoadError": "rpq.local.handlers",
    "LocalEndpoint": "rpq.local.server",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'rpq.local' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


__all__ = ["EndpointConfig", "FaultSpec", "HandlerLoadError", "LocalEndpoint", "parse_faults"]
