"""Webhook delivery for finished jobs of the local endpoint."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request

from rpq.local.config import EndpointConfig

log = logging.getLogger("rpq.serve")


def post_webhook(url: str, body: bytes, config: EndpointConfig, stop: threading.Event) -> None:
    """POST body to url in the background, retrying as configured until stop is set."""
    threading.Thread(
        target=_deliver, args=(url, body, config, stop), name="rpq-webhook", daemon=True
    ).start()


def _deliver(url: str, body: bytes, cfg: EndpointConfig, stop: threading.Event) -> None:
    # Proxies from the environment are bypassed: a local endpoint calls local receivers.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for attempt in range(cfg.webhook_attempts):
        if attempt and stop.wait(cfg.webhook_retry_interval):
            return
        if stop.is_set():
            return
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with opener.open(request, timeout=cfg.webhook_timeout) as response:
                if 200 <= response.status < 300:
                    return
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.debug("webhook %s attempt %d failed: %s", url, attempt + 1, exc)
