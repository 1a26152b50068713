"""Frozen settings, resolved once: flag > environment variable > config file > default.

    endpoint id   -e/--endpoint   RUNPOD_ENDPOINT_ID       (none at all: the built-in local one)
    API key       --api-key       RUNPOD_API_KEY      ~/.runpod/config.toml [default] api_key
    base URL      --base-url      RUNPOD_ENDPOINT_BASE_URL                        https://api.runpod.ai/v2

`--profile NAME` reads [NAME] of the config file instead of [default] (as `runpod config
--profile NAME` writes it); being a flag, it wins over RUNPOD_API_KEY, and --api-key over it.

The key is kept out of every repr; `http://` is accepted for loopback hosts only.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rpq.budget import DEFAULT_BUDGET_MB
from rpq.errors import UsageError
from rpq.hosts import is_loopback
from rpq.options import option, public_values
from rpq.shard import Shard

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


def config_file_key(home: Path | None = None, profile: str | None = None) -> str | None:
    """`[default] api_key` (or `[PROFILE]`) from ~/.runpod/config.toml, as runpod's tools read it.

    A profile asked for by name must be there; the default one may be missing.
    """
    path = (home or Path.home()) / ".runpod" / "config.toml"
    if not path.exists():
        if profile is not None:
            raise UsageError(f"--profile {profile}: there is no {path}. Create the profile "
                             f"with `runpod config --profile {profile}`, or pass --api-key.")
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        # The parser's message may quote the line that holds the key: name the file only.
        raise UsageError(
            f"{path} is not valid TOML. Fix it, or pass --api-key / set RUNPOD_API_KEY."
        ) from None
    section = data.get(profile or "default")
    key = section.get("api_key") if isinstance(section, dict) else None
    if profile is not None and not (isinstance(key, str) and key):
        found = ", ".join(sorted(k for k, v in data.items() if isinstance(v, dict))) or "none"
        what = "has no api_key" if isinstance(section, dict) else "is not in the file"
        raise UsageError(f"--profile {profile}: [{profile}] {what} ({path}; profiles there: "
                         f"{found}). Pick one of those, or pass --api-key.")
    return key if isinstance(key, str) and key else None


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
    profile: str | None = None,
) -> EndpointSettings:
    """Apply flag > env > config file > default; no endpoint at all means the local one."""
    env = dict(os.environ) if env is None else env
    endpoint = endpoint or env.get("RUNPOD_ENDPOINT_ID") or None
    base = base_url or env.get("RUNPOD_ENDPOINT_BASE_URL") or None
    key = api_key or (None if profile else env.get("RUNPOD_API_KEY")) or None
    if endpoint is None and base is None:
        endpoint = LOCAL
    if endpoint is None:
        raise UsageError(
            "a base URL is set but no endpoint id. Pass --endpoint ID or set RUNPOD_ENDPOINT_ID."
        )
    if endpoint == LOCAL and base is None:
        return EndpointSettings(endpoint_id=LOCAL, base_url="", api_key=None, local=True)
    if not key:
        key = config_file_key(home, profile)
    return EndpointSettings(
        endpoint_id=endpoint,
        base_url=check_base_url(base or DEFAULT_BASE_URL),
        api_key=key,
    )


# Option groups of `rpq batch --help`, in the order they are shown.
ENDPOINT, INPUT, REQUEST, FLOW, OUTPUT, ALERTS = (
    "Endpoint", "Input", "Request", "Flow control", "Output", "Alerts and cost")


def _format(text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in ("png", "jpeg", "jpg", "webp"):
        raise ValueError(f"{text!r}: use png, jpeg or webp")
    return "jpeg" if fmt == "jpg" else fmt


def _concurrency(text: str) -> int | None:
    """"auto" -> None (follow the endpoint); otherwise a pinned number of jobs out."""
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(f"{text!r}: use auto or a number of jobs from 1 to 400") from None
    if not 1 <= n <= 400:
        raise ValueError(f"{n} is out of range: use auto or a number from 1 to 400")
    return n


def _poll_mode(text: str) -> str:
    if text not in ("auto", "sync", "status"):
        raise ValueError(f"{text!r}: use auto, sync or status")
    return text


def _rate(text: str) -> str:
    from rpq.limiter import Rate

    Rate.parse(text)  # a UsageError naming --rate and the forms it takes
    return text


def _halt_rule(text: str) -> str:
    from rpq.guards import HaltRule

    HaltRule.parse(text)  # a UsageError naming --halt-on-fail
    return text


def _webhook(text: str) -> str:
    # The URL carries the webhook's token: the message describes it, never quotes it.
    parts = urlsplit(text.strip())
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("not an http(s) URL (it does not start with https:// or http://). "
                         "Pass the webhook's whole URL, e.g. https://hooks.slack.com/services/...")
    if not parts.hostname:
        raise ValueError("not an http(s) URL (it names no host). Pass the webhook's whole URL, "
                         "e.g. https://hooks.slack.com/services/...")
    return text.strip()


_ENDPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_FALLBACK_FORMS = "an endpoint id (e.g. abc123xyz) or a whole endpoint URL " \
    "(e.g. https://api.runpod.ai/v2/abc123xyz)"


def _fallback(text: str) -> str:
    text = text.strip()
    if "://" not in text:
        if not _ENDPOINT_ID.fullmatch(text):
            raise ValueError(f"{text!r} is neither {_FALLBACK_FORMS}")
        return text
    scheme = text.split("://", 1)[0]
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"{text!r} is a {scheme}:// URL: give {_FALLBACK_FORMS}")
    base, _, endpoint_id = text.rstrip("/").rpartition("/")
    if "://" not in base or not urlsplit(base).path.strip("/") or \
            not _ENDPOINT_ID.fullmatch(endpoint_id):
        raise ValueError(f"{text!r} does not end with the base URL's path and an endpoint id: "
                         f"give {_FALLBACK_FORMS}")
    try:
        check_base_url(base)  # http:// only for loopback: the key goes there too
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    return text


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """Everything the engine needs for `rpq batch`, after validation; nothing mutates it.

    Each field set on the command line declares its option here, once (see rpq.options).
    """

    root: Path
    endpoint: EndpointSettings
    out: Path = option("--out", "-o", metavar="DIR|s3://BUCKET/PREFIX", group=OUTPUT,
                       cli_type=str,
                       help="Output folder or bucket prefix (default: FOLDER_out next to "
                       "FOLDER).")
    include: tuple[str, ...] = option(
        "--include", default=(), metavar="GLOB", group=INPUT,
        help="Only files matching this glob (repeatable), e.g. '*.jpg'.")
    exclude: tuple[str, ...] = option(
        "--exclude", default=(), metavar="GLOB", group=INPUT,
        help="Skip files matching this glob (repeatable).")
    recursive: bool = option("--recursive/--no-recursive", default=True, group=INPUT,
                             help="Descend into subfolders.")
    files_from: Path | None = option(
        "--files-from", default=None, metavar="FILE|-", group=INPUT,
        help="Send the images this file lists (one path, s3:// or http(s):// URL per line, - "
        "reads stdin) instead of walking FOLDER; relative paths are taken from FOLDER, else "
        "the current folder.")
    bucket_in: str | None = None  # s3://BUCKET/PREFIX the images are listed from
    bucket_out: str | None = None  # s3://BUCKET/PREFIX results go to; `out` keeps the journal
    journal_dir: Path | None = option(
        "--journal-dir", default=None, metavar="DIR", group=OUTPUT,
        help="Where the journal of an s3:// output lives (default: "
        "~/.cache/rpq/buckets/BUCKET_PREFIX_HASH); a rerun must find it to resume.")
    url_expiry: int = option(
        "--url-expiry", default=3600, min=60, max=604800, metavar="SECONDS", group=REQUEST,
        help="How long the presigned URL that {{image_url}} sends stays valid.")
    shard: Shard | None = option(
        "--shard", default=None, metavar="I/N", group=INPUT, parse=Shard.parse, cli_type=str,
        help="Take only shard I of N (by a hash of each image's path), so N machines split one "
        "input with no coordinator, e.g. --shard 2/8.")
    template: Path | None = option(
        "--input-template", default=None, metavar="FILE.json", group=REQUEST,
        help="JSON request template with {{image_base64}} etc.")
    workflow: Path | None = option(
        "--workflow", default=None, metavar="FILE.json", group=REQUEST,
        help="ComfyUI workflow (API format) for a worker-comfyui endpoint.")
    max_side: int | None = option(
        "--max-side", default=None, min=16, metavar="PX", group=REQUEST,
        help="Downscale so the long side is at most PX before sending (a JPEG may land up "
        "to 1/32 under PX, at the decoder's own scale).")
    fmt: str | None = option(
        "--format", default=None, metavar="png|jpeg|webp", group=REQUEST, parse=_format,
        help="Re-encode before sending.")
    execution_timeout: float | None = option(
        "--execution-timeout", default=None, min=1, metavar="SECONDS", group=REQUEST,
        help="policy.executionTimeout: the endpoint stops a job running longer.")
    ttl: float | None = option(
        "--ttl", default=None, min=1, metavar="SECONDS", group=REQUEST,
        help="policy.ttl: a job's lifetime from submission.")
    low_priority: bool = option("--low-priority", default=False, group=REQUEST,
                                help="policy.lowPriority: do not trigger scale-up.")
    concurrency: int | None = option(
        "--concurrency", "-c", default=None, metavar="auto|N", group=FLOW, cli_type=str,
        parse=_concurrency,
        help="Jobs out at once. auto (the default): the endpoint's workers plus a short queue "
        "for its scaler, fewer when the batch's jobs queue up. N (1-400) pins it.")
    memory_budget: int = option(
        "--memory-budget", default=DEFAULT_BUDGET_MB, min=16, metavar="MB", group=FLOW,
        help="Image bytes held at once (decoded pixels, request bodies, results), whatever "
        "the concurrency; jobs only waiting on the endpoint hold none.")
    rate: str | None = option("--rate", default=None, metavar="N/SECONDS", group=FLOW,
                              parse=_rate,
                              help="Cap submissions, e.g. 5/60, 5/60s, 5/min or 300/h.")
    max_retries: int = option("--max-retries", default=3, min=0, metavar="N", group=FLOW,
                              help="Retries of one request on 429, 5xx or connection errors.")
    max_queue_time: float = option(
        "--max-queue-time", default=60.0, min=1, metavar="SECONDS", group=FLOW,
        help="Without progress for this long, a queued job counts as stuck (cancelled and "
        "resubmitted).")
    job_retries: int = option("--job-retries", default=1, min=0, metavar="N", group=FLOW,
                              help="Resubmissions of one image: a stuck job, or a failed "
                              "submit (a 5xx, 429 or lost connection past --max-retries) sent "
                              "again after a pause.")
    max_wait: float = option("--max-wait", default=600.0, min=1, metavar="SECONDS", group=FLOW,
                             help="Longest one job may take in all; then cancel and fail.")
    poll_mode: str = option(
        "--poll", default="auto", metavar="auto|sync|status", group=FLOW, parse=_poll_mode,
        help="sync: status-sync long polls; status: adaptive /status polls.")
    fallback_endpoint: str | None = option(
        "--fallback-endpoint", default=None, metavar="ID|URL", group=ENDPOINT, parse=_fallback,
        help="Endpoint id (same base URL and key) or full endpoint URL to move queued jobs to "
        "when the endpoint is unhealthy or stalls.")
    output_key: str | None = option(
        "--output-key", default=None, metavar="PATH", group=OUTPUT,
        help="Dotted path of the image inside the output, e.g. images.0.data.")
    save_json: bool = option("--save-json", default=False, group=OUTPUT,
                             help="Also write each job's JSON next to its image.")
    retry_failed: bool = option("--retry-failed", default=False, group=OUTPUT,
                                help="Retry images that failed in an earlier run.")
    fresh: bool = option("--fresh", default=False, group=OUTPUT,
                         help="Ignore the journal: redo everything.")
    metrics: Path | None = option(
        "--metrics", default=None, metavar="FILE.json", group=OUTPUT,
        help="Where to write job_metrics.json (default: DIR/job_metrics.json).")
    download_max_mb: int = 100
    alert_webhook: str | None = option(
        "--alert-webhook", default=None, metavar="URL", group=ALERTS, secret=True,
        parse=_webhook,
        help="POST alerts and the final summary here (Slack/Discord compatible JSON).")
    alert_queue_time: float = option(
        "--alert-queue-time", default=60.0, min=0, metavar="SECONDS", group=ALERTS,
        help="Alert when a job waits longer in the queue.")
    alert_process_time: float = option(
        "--alert-process-time", default=120.0, min=0, metavar="SECONDS", group=ALERTS,
        help="Alert when a job runs longer.")
    alert_failure_rate: float = option(
        "--alert-failure-rate", default=20.0, min=0, max=100, metavar="PERCENT", group=ALERTS,
        help="Alert when this share of finished jobs failed.")
    cost_per_hour: float | None = option(
        "--cost-per-hour", default=None, min=0, metavar="PRICE", group=ALERTS,
        help="Worker price in USD per hour, for the live spend.")
    budget: float | None = option(
        "--budget", default=None, min=0, metavar="PRICE", group=ALERTS,
        help="Stop submitting when the estimated spend reaches this many USD (needs "
        "--cost-per-hour).")
    halt_on_fail: str | None = option(
        "--halt-on-fail", default=None, metavar="N|PERCENT%", group=ALERTS, parse=_halt_rule,
        help="Stop submitting when this many (e.g. 5) or this share (e.g. 20%) of finished "
        "jobs failed.")

    def __post_init__(self) -> None:
        if self.budget is not None and self.cost_per_hour is None:
            raise UsageError("--budget needs --cost-per-hour to estimate the spend.")
        if self.fallback_endpoint is not None and \
                self.fallback_endpoint == self.endpoint.endpoint_id:
            raise UsageError("--fallback-endpoint is the same as the endpoint: name another one.")

    @property
    def most_jobs_out(self) -> int:
        """The pinned --concurrency, or the most that auto ever keeps out."""
        from rpq.concurrency import AUTO_CEILING

        return self.concurrency or AUTO_CEILING

    @property
    def metrics_path(self) -> Path:
        return self.metrics or self.out / "job_metrics.json"

    def public(self) -> dict[str, Any]:
        """The settings recorded in job_metrics.json: never the key or the webhook URL."""
        values = {
            "root": self.bucket_in or str(self.root),
            "endpoint": self.endpoint.endpoint_id,
            "base_url": self.endpoint.base_url or "(built-in local endpoint)",
            **public_values(self),
            "concurrency": self.concurrency or "auto",
        }
        if self.bucket_out:
            values["out"], values["journal_dir"] = self.bucket_out, str(self.out)
        return values
