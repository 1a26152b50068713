"""A worker for {{image_url}} requests: fetch the URL itself, return the image (as echo would)."""

from __future__ import annotations

import base64
import urllib.request
from typing import Any


def handler(job: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(job["input"]["image_url"], timeout=30) as answer:
        data = answer.read()
    return {"image": base64.b64encode(data).decode("ascii")}
