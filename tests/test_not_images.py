"""Files that are not images are skipped and listed apart, never failures; a folder (or a
filter) with no image at all says so and exits 2."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

KNOWN_STRAYS = {"README.txt": "not an image (content is text)",
                "specs.pdf": "not an image (content is PDF)"}


def _strays(src: Path) -> None:
    (src / "README.txt").write_text("how these photos were taken\n")
    (src / "specs.pdf").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n")


def test_files_that_are_not_images_are_skipped_not_failed(tmp_path: Path,
                                                          make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    _strays(src)
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    lines = run.stderr.splitlines()
    for name, reason in KNOWN_STRAYS.items():
        assert f"ignored {name}: {reason}" in lines, run.stderr
    assert "3 of 3 images done, 0 failed" in run.stderr
    assert "2 file(s) that are not images were skipped" in run.stderr
    metrics = run.metrics(out)
    assert sorted(j["input"] for j in metrics["jobs"]) == [f"img_00{i}.png" for i in range(3)]
    assert metrics["stats"]["failed"] == 0
    assert metrics["run"]["not_images"] == {
        "count": 2, "files": [{"file": n, "reason": r} for n, r in sorted(KNOWN_STRAYS.items())]}
    assert ep.calls().get("run") == 3
    report = rpq("report", out / "job_metrics.json")
    assert report.code == 0, report.stdout + report.stderr  # the SLA holds: 3 of 3 in time


def test_a_broken_image_beside_them_is_still_a_failure(tmp_path: Path,
                                                       make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    _strays(src)
    (src / "cut.jpg").write_bytes(_truncated_jpeg())
    (src / "text.png").write_text("named like an image, but text")
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1, run.stderr
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert jobs["cut.jpg"]["status"] == "FAILED" and jobs["cut.jpg"]["error_kind"] == "bad_input"
    assert jobs["text.png"]["status"] == "FAILED"
    assert "README.txt" not in jobs and "specs.pdf" not in jobs
    assert "2 of 4 images done, 2 failed" in run.stderr


def test_an_empty_folder_says_no_image_was_found(tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 2, run.stderr
    assert f"no image found in {src}" in run.stderr and "done" not in run.stderr
    assert not (out / "job_metrics.json").exists()
    assert ep.calls().get("run", 0) == 0


def test_a_folder_of_files_that_are_not_images_says_so(tmp_path: Path,
                                                       make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _strays(src)
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 2, run.stderr
    assert f"no image found in {src}" in run.stderr
    assert "2 file(s) that are not images" in run.stderr


def test_filters_that_match_nothing_say_so(tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    first = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert first.code == 0, first.stderr
    before = (out / "job_metrics.json").read_text()
    run = rpq(*batch_args(src, out, "--include", "*.jpg"), env=endpoint_env(ep))
    assert run.code == 2, run.stderr
    assert f"no image found in {src}" in run.stderr and "--include '*.jpg'" in run.stderr
    assert (out / "job_metrics.json").read_text() == before  # the earlier run's report stays
    dry = rpq(*batch_args(src, out, "--exclude", "*.png", "--dry-run"), env=endpoint_env(ep))
    assert dry.code == 2 and "--exclude '*.png'" in dry.stderr


def _truncated_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((200, 150), 60).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()[: buf.tell() // 2]
