"""The live table tells the truth: queued vs running, fresh workers, a bar, a title."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from batchkit import gated_template
from helpers import Gate, wait_for
from imaging import make_images
from rich.console import Console

from rpq.pipeline import Batch
from rpq.progress import LiveReporter
from rpq.settings import BatchSettings, EndpointSettings


def frame(reporter: LiveReporter) -> str:
    console = Console(record=True, width=140, file=open("/dev/null", "w"))  # noqa: SIM115
    try:
        console.print(reporter.render())
        return console.export_text()
    finally:
        console.file.close()


def counts(text: str) -> dict[str, int]:
    """The table's header and its row of numbers, as a dict."""
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if "queued" in line and "running" in line)
    names = re.findall(r"[a-z]+", lines[header])
    row = next(line for line in lines[header + 1:] if re.search(r"\d", line))
    return dict(zip(names, (int(n) for n in re.findall(r"\d+", row)), strict=True))


def test_the_live_table_shows_running_jobs_and_a_fresh_picture(tmp_path: Path,
                                                                make_endpoint) -> None:
    gate = Gate(timeout=60)
    ep = make_endpoint(handler=gate.echo, workers_max=3)
    src = tmp_path / "photos"
    make_images(src, 8)
    out = tmp_path / "out"
    template = gated_template(tmp_path)
    settings = BatchSettings(
        root=src, out=out, template=template, concurrency=8,
        endpoint=EndpointSettings(endpoint_id=ep.endpoint_id, base_url=ep.base_url))
    reporter = LiveReporter(Console(file=open("/dev/null", "w")))  # noqa: SIM115
    batch = Batch(settings, reporter)
    runner = threading.Thread(target=batch.run)
    runner.start()
    try:
        wait_for(lambda: len(gate.started) == 3 and ep.calls().get("run", 0) == 8, timeout=30)
        # Three workers busy, five jobs waiting: the table says so once rpq has looked.
        wait_for(lambda: counts(frame(reporter)).get("running") == 3, timeout=30)
        busy = frame(reporter)
        assert counts(busy)["queued"] == 5, busy
        assert "photos" in busy.splitlines()[0] and ep.endpoint_id in busy.splitlines()[0]
        assert "0/8" in busy
    finally:
        gate.open_all()
        runner.join(timeout=60)
        reporter.console.file.close()
    last = frame(reporter)
    assert counts(last)["done"] == 8 and counts(last)["running"] == 0, last
    assert "8/8" in last
    workers = [line for line in last.splitlines() if line.startswith("workers")]
    assert not any("running 3" in line for line in workers), last
