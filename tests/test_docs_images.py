"""make docs-images: the README's pictures come from a real run against `rpq serve`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_docs_images_script_draws_the_live_table_and_the_timeline(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "docs_images.py"), "--out", str(tmp_path),
         "--images", "10"], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    svg = (tmp_path / "live-table.svg").read_text()
    assert svg.startswith("<svg") and "finished" in svg and "jobs/min" in svg
    assert "queued" in svg and "estimated&#160;spend" in svg
    with Image.open(tmp_path / "timeline.png") as im:
        assert im.format == "PNG" and im.width >= 800
