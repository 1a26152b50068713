"""rpq serve: a local endpoint that speaks RunPod's serverless queue API."""

from rpq.local.faults import FaultSpec, parse_faults
from rpq.local.fleet import EndpointConfig
from rpq.local.handlers import HandlerLoadError
from rpq.local.server import LocalEndpoint

__all__ = ["EndpointConfig", "FaultSpec", "HandlerLoadError", "LocalEndpoint", "parse_faults"]
