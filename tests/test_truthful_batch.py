"""`rpq batch` sends each distinct request once and never fails an image on a passing fault."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images, png_bytes

SEEDS = {"a": 101, "b": 102, "c": 103}


def by_name(job: dict[str, Any]) -> dict[str, Any]:
    """Answers with a picture chosen by the request's name, not by its image."""
    return {"image": base64.b64encode(png_bytes(SEEDS[job["input"]["name"]])).decode()}


def test_identical_images_with_per_file_values_are_each_sent(tmp_path: Path,
                                                              make_endpoint) -> None:
    ep = make_endpoint(handler=by_name, workers_max=2)
    src = tmp_path / "in"
    src.mkdir()
    same = png_bytes(7)
    for name in SEEDS:
        (src / f"{name}.png").write_bytes(same)
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "name": "{{stem}}"}}))
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert ep.calls()["run"] == 3  # three different requests: three submits
    for name, seed in SEEDS.items():
        assert (out / f"{name}.png").read_bytes() == png_bytes(seed), name
    assert "earlier run" not in run.stderr
    # A rerun knows each request: nothing is sent again.
    again = rpq(*batch_args(src, out, "--input-template", template), env=endpoint_env(ep))
    assert again.code == 0, again.stderr
    assert ep.calls()["run"] == 3


def test_a_twin_in_the_same_run_is_not_called_earlier_work(tmp_path: Path,
                                                           make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b", "c"):
        (src / f"{name}.png").write_bytes(png_bytes(7))
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert ep.calls()["run"] == 1  # same bytes, same request: sent once, copied twice
    for name in ("a", "b", "c"):
        assert (out / f"{name}.png").read_bytes() == png_bytes(7)
    assert "earlier run" not in run.stderr
    assert "same request as" in run.stderr
    rerun = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert rerun.stderr.count("earlier run") >= 3


def test_submit_failures_past_the_request_retries_go_back_in_line(tmp_path: Path,
                                                                  make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=4, faults="500=0.4", seed=11)
    src = tmp_path / "in"
    make_images(src, 40)  # each image's two tries both fail 16% of the time: some will
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--max-retries", "1", "--job-retries", "6"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    jobs = run.metrics(out)["jobs"]
    assert [j for j in jobs if j["status"] != "COMPLETED"] == []
    assert len(jobs) == 40
    assert any(j["attempts"] > 1 for j in jobs)  # some did go back in line


def test_job_retries_help_says_failed_submits_count(tmp_path: Path) -> None:
    run = rpq("batch", "--help")
    text = " ".join(run.stdout.split())
    assert "--job-retries" in text
    assert "failed submit" in text.split("--job-retries", 1)[1][:300]
