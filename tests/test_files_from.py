"""`rpq batch --files-from`: send the images a list names, from a file or stdin."""

from __future__ import annotations

from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images
from typer.testing import CliRunner

from rpq.cli import app


def test_only_listed_images_are_sent_and_a_missing_one_is_reported(
        tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    src = tmp_path / "in"
    make_images(src, 5)
    make_images(src, 2, start=10, sub="nested")
    (src / "notes.txt").write_text("hello")
    listing = tmp_path / "list.txt"
    listing.write_text("# picked by hand\nimg_001.png\n\nnested/img_011.png\r\n"
                       "  img_003.png  \ngone.png\n")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--files-from", listing), env=endpoint_env(ep))
    assert run.code == 1, run.stderr  # one listed file is missing
    assert ep.calls()["run"] == 3
    assert (out / "nested" / "img_011.png").read_bytes() == \
        (src / "nested" / "img_011.png").read_bytes()
    assert not (out / "img_000.png").exists()
    jobs = {j["input"]: j for j in run.metrics(out)["jobs"]}
    assert sorted(jobs) == ["gone.png", "img_001.png", "img_003.png", "nested/img_011.png"]
    assert "list.txt (line 6) but not found" in jobs["gone.png"]["error"]
    assert jobs["gone.png"]["error_kind"] == "bad_input"


def test_stdin_list_without_a_folder(tmp_path: Path, make_endpoint,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ep = make_endpoint(handler="echo", workers_max=2)
    make_images(tmp_path / "a", 2)
    make_images(tmp_path / "b", 1, start=5)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["batch", "--files-from", "-", "--out", "out", "--no-progress"],
        input="a/img_000.png\nb/img_005.png\n", env=endpoint_env(ep), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert ep.calls()["run"] == 2  # read once from stdin, yet counted and sent
    assert (tmp_path / "out" / "a" / "img_000.png").is_file()
    assert (tmp_path / "out" / "b" / "img_005.png").is_file()
    assert not (tmp_path / "out" / "a" / "img_001.png").exists()


def test_absolute_paths_outside_the_folder_stay_inside_out(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    make_images(tmp_path / "elsewhere", 1)
    elsewhere = tmp_path / "elsewhere" / "img_000.png"
    src = tmp_path / "in"
    src.mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{elsewhere}\n")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--files-from", listing), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    expected = out / elsewhere.relative_to(elsewhere.anchor)
    assert expected.read_bytes() == elsewhere.read_bytes()


def test_a_url_rpq_cannot_read_is_a_usage_error_naming_the_line(tmp_path: Path,
                                                             make_endpoint) -> None:
    ep = make_endpoint(handler="echo", workers_max=1)
    src = tmp_path / "in"
    make_images(src, 1)
    listing = tmp_path / "list.txt"
    listing.write_text("img_000.png\nftp://example.com/a.png\n")
    run = rpq(*batch_args(src, tmp_path / "out", "--files-from", listing), env=endpoint_env(ep))
    assert run.code == 2
    assert "list.txt line 2" in run.stderr and "is a URL rpq cannot read" in run.stderr
    assert ep.calls().get("run", 0) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["batch", "--no-progress"], "pass the FOLDER of images, or --files-from"),
    (["batch", "--files-from", "list.txt"], "needs --out"),
    (["batch", "--files-from", "nope.txt", "--out", "o"], "nope.txt: no such file"),
])
def test_missing_pieces_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("a.png\n")
    run = rpq(*args)
    assert run.code == 2
    assert message in run.stderr
