"""`rpq serve` on the command line: the installed script, signals, and usage errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from rpq.cli import app
from rpq.local.config import parse_process_time, parse_rate_limits

RPQ = Path(sys.executable).with_name("rpq")
LINE = re.compile(
    r"^rpq serve: (http://127\.0\.0\.1:(\d+)/v2) endpoint (\S+) "
    r"\(RUNPOD_ENDPOINT_BASE_URL=\1 RUNPOD_ENDPOINT_ID=\3\)$"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_subprocess_stops_cleanly(sig: signal.Signals) -> None:
    env = {**os.environ, "RPQ_SERVE_API_KEY": "cli-key"}
    proc = subprocess.Popen(
        [str(RPQ), "serve", "--port", "0", "--handler", "echo", "--endpoint-id", "cli"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().rstrip("\n")
        match = LINE.match(line)
        assert match, line
        base, port, endpoint_id = match.group(1), int(match.group(2)), match.group(3)
        assert port > 0 and endpoint_id == "cli"
        with requests.Session() as http:
            r = http.get(f"{base}/cli/health", headers={"Authorization": "cli-key"}, timeout=5)
            assert r.status_code == 200 and r.json()["jobs"]["inQueue"] == 0
            r = http.get(f"{base}/cli/health", timeout=5)
            assert r.status_code == 401
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0, stderr
        assert stdout == ""  # exactly one line on stdout
        assert "cli-key" not in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--workers-max", "0"], "--workers-max must be >= 1"),
        (["--workers-min", "5"], "--workers-min must be between 0 and --workers-max - --throttled"),
        (["--throttled", "9"], "--throttled must be between 0 and --workers-max"),
        (["--faults", "boom=1"], "--faults: unknown fault kind"),
        (["--process-time", "fast"], "--process-time"),
        (["--process-time", "2-1"], "--process-time"),
        (["--host", "0.0.0.0"], "--api-key"),
        (["--handler", "missing.py"], "--handler: handler file missing.py does not exist"),
        (["--handler", "nope"], "unknown handler"),
        (["--rate-limits", "run=x"], "--rate-limits"),
        (["--rate-limits", "walk=3"], "unknown operation 'walk'"),
        (["--endpoint-id", "a/b"], "--endpoint-id 'a/b' must be letters, digits"),
    ],
)
def test_usage_errors(args: list[str], words: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert words in result.stderr
    assert result.stdout == ""


def test_port_in_use_is_usage_error() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "--handler", "echo"])
    assert result.exit_code == 2
    assert "--port 0" in result.stderr


def test_option_parsers() -> None:
    assert parse_process_time("0.5") == 0.5
    assert parse_process_time(" 0.2-0.8 ") == (0.2, 0.8)
    assert parse_rate_limits("default") is None
    assert parse_rate_limits("off") == {}
    assert parse_rate_limits("run=5, status=100") == {"run": 5, "status": 100}
    with pytest.raises(ValueError, match="seconds"):
        parse_process_time("-1")
    with pytest.raises(ValueError, match="N >= 1"):
        parse_rate_limits("run=0")
