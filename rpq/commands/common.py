"""Options shared by every command that talks to an endpoint."""

from __future__ import annotations

from typing import Annotated

import typer

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
