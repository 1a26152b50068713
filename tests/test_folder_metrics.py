"""job_metrics.json describes the whole output folder, whatever subset the last run touched."""

from __future__ import annotations

from pathlib import Path

from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

NAMES = ["a1", "a2", "a3", "b1", "b2", "c1", "c2", "c3"]


def test_a_rerun_on_a_subset_keeps_every_image_in_the_metrics(tmp_path: Path,
                                                               make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, NAMES)
    out = tmp_path / "out"
    full = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert full.code == 0, full.stderr
    (src / "a1.png").write_bytes(b"not an image any more")  # a's run changes one result
    subset = rpq(*batch_args(src, out, "--include", "a*"), env=endpoint_env(ep))
    data = subset.metrics(out)
    jobs = {j["input"]: j for j in data["jobs"]}
    assert sorted(jobs) == sorted(f"{n}.png" for n in NAMES)
    assert len(data["jobs"]) == len(NAMES)  # each image once, with its latest record
    assert jobs["a1.png"]["status"] == "FAILED"  # the latest record, not the first run's
    assert jobs["b1.png"]["status"] == "COMPLETED"
    assert data["stats"]["total_jobs"] == len(NAMES)
    assert data["stats"]["completed"] == len(NAMES) - 1
    # The run section is the last run's; the earlier run's summary is kept.
    assert data["run"]["settings"]["include"] == ["a*"]
    assert data["run"]["stats"]["total_jobs"] == 3
    assert len(data["runs"]) == 1
    assert data["runs"][0]["stats"]["total_jobs"] == len(NAMES)

    nothing = rpq(*batch_args(src, out, "--include", "zzz*"), env=endpoint_env(ep))
    after = nothing.metrics(out)
    assert sorted(j["input"] for j in after["jobs"]) == sorted(f"{n}.png" for n in NAMES)
    assert after["stats"]["total_jobs"] == len(NAMES)
