"""Bad input into `rpq batch`, end to end: each bad file is reported by name, with its reason,
and the rest of the batch is unharmed. (tests/test_batch.py covers truncated JPEG, zero
bytes, text named .png and a decompression bomb in a batch; tests/test_images.py and
tests/test_template.py the units.)"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from chaoskit import NOBODY, as_nobody_in_a_fork, shared_folder
from imaging import decodes, jpeg_bytes, make_images, png_bytes
from PIL import Image


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


def test_odd_and_broken_files_in_one_batch(tmp_path: Path, make_endpoint: Callable[..., Any]
                                           ) -> None:
    ep = make_endpoint(handler="echo", workers_max=4)
    src = tmp_path / "in"
    src.mkdir()
    good = {"ok.png": png_bytes(1), "a b ünï 日本.png": png_bytes(3),
            "new\nline.png": png_bytes(4), "tab\there.jpg": jpeg_bytes(5)}
    for name, data in good.items():
        (src / name).write_bytes(data)
    (src / "trunc.png").write_bytes(png_bytes(2, (300, 300))[:200])
    (src / "loop").symlink_to(src)
    (src / "self.png").symlink_to(src / "self.png")
    (src / "dangling.png").symlink_to(src / "nowhere.png")
    # 100 megapixels: a flat PNG is small, so it is sent as it is, and comes back whole.
    Image.new("RGB", (10_000, 10_000), (10, 200, 30)).save(src / "huge100mp.png")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 1
    jobs = _jobs(out)
    for name, data in good.items():
        assert jobs[name]["status"] == "COMPLETED", jobs[name]
        assert (out / name).read_bytes() == data
    assert jobs["huge100mp.png"]["status"] == "COMPLETED"
    assert (out / "huge100mp.png").read_bytes() == (src / "huge100mp.png").read_bytes()
    reasons = {"trunc.png": "truncated or corrupt", "loop": "symlink loop",
               "self.png": "symlink loop", "dangling.png": "broken symlink"}
    for name, reason in reasons.items():
        assert jobs[name]["error_kind"] == "bad_input" and reason in jobs[name]["error"]
    assert ep.calls()["run"] == len(good) + 1
    # One line per image on stderr, even for a name with a newline or a tab in it.
    lines = run.stderr.splitlines()
    for name, reason in reasons.items():
        assert any(line.startswith("bad_input") and name in line and reason in line
                   for line in lines), name
    for shown in ("ok.png", "a b ünï 日本.png", "new\\nline.png", "tab\\there.jpg"):
        assert any(line.startswith("done") and shown in line for line in lines), shown
    assert not any(line.startswith(("line.png", "here.jpg")) for line in lines)


def test_output_folder_inside_the_input_folder_is_not_read_back(
        tmp_path: Path, make_endpoint: Callable[..., Any]) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "photos"
    make_images(src, 3)
    out = src / "results"
    for _ in range(3):
        run = rpq(*batch_args(src, out), env=endpoint_env(ep))
        assert run.code == 0, run.stderr
    assert sorted(_jobs(out)) == ["img_000.png", "img_001.png", "img_002.png"]
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*.png")) == [
        "img_000.png", "img_001.png", "img_002.png",
        "results/img_000.png", "results/img_001.png", "results/img_002.png"]
    assert ep.calls()["run"] == 3


def test_output_folder_that_is_the_input_folder_is_refused(
        tmp_path: Path, make_endpoint: Callable[..., Any]) -> None:
    # Results named like their inputs would replace them.
    ep = make_endpoint(handler="echo")
    src = tmp_path / "photos"
    make_images(src, 2)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for out in (src, src / "." , tmp_path / "x" / ".." / "photos"):
        run = rpq(*batch_args(src, out), env=endpoint_env(ep))
        assert run.code == 2, run.stderr
        assert "--out" in run.stderr and "input folder" in run.stderr
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert ep.calls()["run"] == 0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('{"input": {"image": "{{image_base64}}"', "line 1"),  # invalid JSON
        ('{"input": {"image": "{{imagebase64}}"}}', "imagebase64"),  # unknown placeholder
        ('{"input": {"prompt": "a cat"}}', "no image placeholder"),
    ],
)
def test_a_bad_template_stops_before_anything_is_sent(
        tmp_path: Path, make_endpoint: Callable[..., Any], text: str, words: str) -> None:
    ep = make_endpoint(handler="echo")
    src = tmp_path / "in"
    make_images(src, 2)
    template = tmp_path / "t.json"
    template.write_text(text)
    run = rpq(*batch_args(src, tmp_path / "out", "--input-template", template),
              env=endpoint_env(ep))
    assert run.code == 2, run.stderr
    assert run.stderr.startswith("error: ") and str(template) in run.stderr
    assert words in run.stderr
    assert ep.calls()["run"] == 0 and not (tmp_path / "out").exists()


def test_an_invalid_config_file_is_named_without_its_content(
        tmp_path: Path, make_endpoint: Callable[..., Any]) -> None:
    ep = make_endpoint(handler="echo")
    config = Path.home() / ".runpod" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[default]\napi_key = "rpq_SECRET_1234\n')  # unterminated string
    src = tmp_path / "in"
    make_images(src, 1)
    env = {"RUNPOD_ENDPOINT_BASE_URL": ep.base_url, "RUNPOD_ENDPOINT_ID": ep.endpoint_id}
    run = rpq(*batch_args(src, tmp_path / "out"), env=env)
    assert run.code == 2
    assert str(config) in run.stderr and "not valid TOML" in run.stderr
    assert "rpq_SECRET_1234" not in run.stderr + run.stdout
    assert ep.calls()["run"] == 0


def test_unreadable_file_and_folder_are_reported_and_skipped(
        make_endpoint: Callable[..., Any]) -> None:
    # File modes do not stop root: the batch runs as the user nobody (see chaoskit).
    ep = make_endpoint(handler="echo")
    with shared_folder() as shared:
        src, out = shared / "in", shared / "out"
        src.mkdir()
        (src / "ok.png").write_bytes(png_bytes(1))
        (src / "locked.png").write_bytes(png_bytes(2))
        (src / "private").mkdir()
        (src / "private" / "p.png").write_bytes(png_bytes(3))
        for path in (src / "ok.png", src / "private" / "p.png"):
            path.chmod(0o644)
        (src / "locked.png").chmod(0o000)
        (src / "private").chmod(0o700)
        out.mkdir()
        os.chown(out, NOBODY, NOBODY)
        env = {**endpoint_env(ep), "HOME": str(shared)}
        args = [str(a) for a in batch_args(src, out)]
        warm = rpq(*batch_args(src, shared / "warm", "--include", "ok.png"), env=env)
        assert warm.code == 0, warm.stderr  # every module loaded before the fork
        log = shared / "log"
        code = as_nobody_in_a_fork(args, env, log)
        stderr = log.read_text()
        assert code == 1, stderr
        jobs = _jobs(out)
        assert jobs["ok.png"]["status"] == "COMPLETED"
        for name in ("locked.png", "private"):
            assert jobs[name]["error_kind"] == "bad_input", jobs[name]
            assert "permission denied" in jobs[name]["error"].lower()
            assert any(name in line and "permission denied" in line.lower()
                       for line in stderr.splitlines()), name
        assert "Traceback" not in stderr
