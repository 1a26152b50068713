"""Bad input into `rpq batch`, end to end: each bad file is reported by name, with its reason,
and the rest of the batch is unharmed. (tests/test_batch.py covers truncated JPEG, zero
bytes, text named .png and a decompression bomb in a batch; tests/test_images.py and
tests/test_template.py the units.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, rpq
from imaging import decodes, png_bytes


def _jobs(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "job_metrics.json").read_text())
    jobs: dict[str, dict[str, Any]] = {}
    for job in data["jobs"]:
        assert job["input"] not in jobs, f"two records for {job['input']}"
        jobs[job["input"]] = job
    return jobs


def test_identical_images_each_keep_their_own_record(tmp_path: Path,
                                                     make_endpoint: Callable[..., Any]) -> None:
    # Same bytes under three names are sent once; when that one job fails, every copy is
    # reported failed under its own name (not the first copy's name, twice).
    worker = tmp_path / "w.py"
    worker.write_text("def handler(job):\n    raise ValueError('cannot segment this')\n")
    ep = make_endpoint(handler=f"{worker}:handler")
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png", "sub/c.png"):
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes(png_bytes(1))
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1
    jobs = _jobs(out)
    assert sorted(jobs) == ["a.png", "b.png", "sub/c.png"]
    assert {j["error"] for j in jobs.values()} == {"ValueError: cannot segment this"}
    assert ep.calls()["run"] == 1
    for name in jobs:
        assert any(name in line for line in run.stderr.splitlines()), name
    # And when it works, each copy gets its own output.
    ep2 = make_endpoint(handler="echo")
    out2 = tmp_path / "out2"
    run = rpq(*batch_args(src, out2), env=endpoint_env(ep2))
    assert run.code == 0, run.stderr
    assert sorted(_jobs(out2)) == ["a.png", "b.png", "sub/c.png"]
    assert all(decodes(out2 / name) for name in ("a.png", "b.png", "sub/c.png"))
    assert ep2.calls()["run"] == 1
