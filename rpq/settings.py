"""Frozen settings, resolved once: flag > environment variable > config file > default.

    endpoint id   --endpoint      RUNPOD_ENDPOINT_ID       (none at all: the built-in local one)
    API key       --api-key       RUNPOD_API_KEY      ~/.runpod/config.toml [default] api_key
    base URL      --base-url      RUNPOD_ENDPOINT_BASE_URL                        https://api.runpod.ai/v2

The key is kept out of every repr; `http://` is accepted for loopback hosts only.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rpq.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_BASE_URL = "https://api.runpod.ai/v2"
LOCAL = "local"


@dataclass(frozen=True, kw_only=True)
class EndpointSettings:
    """Where requests go. `local` means: start the built-in endpoint in this process."""

    endpoint_id: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    local: bool = False

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.endpoint_id}"


def config_file_key(home: Path | None = None) -> str | None:
    """`[default] api_key` from ~/.runpod/config.toml, as the official SDK reads it."""
    path = (home or Path.home()) / ".runpod" / "config.toml"
    if not path.exists():
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        # The parser's message may quote the line that holds the key: name the file only.
        raise UsageError(
            f"{path} is not valid TOML. Fix it, or pass --api-key / set RUNPOD_API_KEY."
        ) from None
    section = data.get("default")
    key = section.get("api_key") if isinstance(section, dict) else None
    return key if isinstance(key, str) and key else None


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"base URL {base_url!r} is not an http(s) URL. Use e.g. {DEFAULT_BASE_URL}."
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(
            f"refusing plain http:// for {parts.hostname}: the API key would cross the network "
            "unencrypted. Use https://, or http:// only for a local endpoint (127.0.0.1)."
        )
    return base_url.rstrip("/")


def resolve_endpoint(
    endpoint: str | None,
    api_key: str | None,
    base_url: str | None,
    env: dict[str, str] | None = None,
    home: Path | None = None,
) -> EndpointSettings:
    """Apply flag > env > config file > default; no endpoint at all means the local one."""
    env = dict(os.environ) if env is None else env
    endpoint = endpoint or env.get("RUNPOD_ENDPOINT_ID") or None
    base = base_url or env.get("RUNPOD_ENDPOINT_BASE_URL") or None
    key = api_key or env.get("RUNPOD_API_KEY") or None
    if endpoint is None and base is None:
        endpoint = LOCAL
    if endpoint is None:
        raise UsageError(
            "a base URL is set but no endpoint id. Pass --endpoint ID or set RUNPOD_ENDPOINT_ID."
        )
    if endpoint == LOCAL and base is None:
        return EndpointSettings(endpoint_id=LOCAL, base_url="", api_key=None, local=True)
    if not key:
        key = config_file_key(home)
    return EndpointSettings(
        endpoint_id=endpoint,
        base_url=check_base_url(base or DEFAULT_BASE_URL),
        api_key=key,
    )


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """Everything `rpq batch` needs, after validation; the CLI builds it, nothing mutates it."""

    root: Path
    out: Path
    endpoint: EndpointSettings
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    recursive: bool = True
    template: Path | None = None
    workflow: Path | None = None
    max_side: int | None = None
    fmt: str | None = None
    execution_timeout: float | None = None
    ttl: float | None = None
    low_priority: bool = False
    concurrency: int = 8
    rate: str | None = None
    max_retries: int = 3
    max_queue_time: float = 60.0
    job_retries: int = 1
    max_wait: float = 600.0
    output_key: str | None = None
    save_json: bool = False
    retry_failed: bool = False
    fresh: bool = False
    metrics: Path | None = None
    json_summary: bool = False
    dry_run: bool = False
    progress: str = "auto"  # auto | live | plain | none
    poll_mode: str = "auto"  # auto | sync | status
    download_max_mb: int = 100
    fallback_endpoint: str | None = None
    alert_webhook: str | None = None
    alert_queue_time: float = 60.0
    alert_process_time: float = 120.0
    alert_failure_rate: float = 20.0
    cost_per_hour: float | None = None
    budget: float | None = None
    halt_on_fail: str | None = None

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out / "job_metrics.json"

    def public(self) -> dict[str, Any]:
        """The settings recorded in job_metrics.json: never the key."""
        return {
            "root": str(self.root),
            "out": str(self.out),
            "endpoint": self.endpoint.endpoint_id,
            "base_url": self.endpoint.base_url or "(built-in local endpoint)",
            "include": list(self.include),
            "exclude": list(self.exclude),
            "recursive": self.recursive,
            "template": str(self.template) if self.template else None,
            "workflow": str(self.workflow) if self.workflow else None,
            "max_side": self.max_side,
            "format": self.fmt,
            "execution_timeout": self.execution_timeout,
            "ttl": self.ttl,
            "low_priority": self.low_priority,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "max_retries": self.max_retries,
            "max_queue_time": self.max_queue_time,
            "job_retries": self.job_retries,
            "max_wait": self.max_wait,
            "output_key": self.output_key,
            "fallback_endpoint": self.fallback_endpoint,
            "alert_webhook": bool(self.alert_webhook),
            "cost_per_hour": self.cost_per_hour,
            "budget": self.budget,
            "halt_on_fail": self.halt_on_fail,
        }
