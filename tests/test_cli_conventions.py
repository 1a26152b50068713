"""Conventions a CLI user expects: --version, -v/-q, grouped help, -e everywhere, --json,
--profile, shell completion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

from rpq import __version__

KEY = "rpq_VERBOSEKEY_9f8e7d6c5b4a"
RPQ = Path(sys.executable).with_name("rpq")
COMMANDS = ("batch", "serve", "health", "cancel", "purge", "report")


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    from importlib.metadata import version

    run = rpq(flag)
    assert run.code == 0 and run.stdout == f"rpq {__version__}\n"
    assert __version__ == version("rpq")


# --- -v / -q ----------------------------------------------------------------------------------


def _noisy_run(tmp_path: Path, make_endpoint: Any, *flags: str) -> Any:
    # The endpoint takes 3 submissions a second and answers 429 to more, so rpq retries;
    # --rate makes it pace its submissions.
    ep = make_endpoint(handler="echo", api_key=KEY, rate_limits={"run": 3}, rate_window=1.0)
    src = tmp_path / "in"
    if not src.exists():
        make_images(src, 6)
    out = tmp_path / f"out{len(flags)}{''.join(flags)}"
    run = rpq(*batch_args(src, out, "--rate", "50/1", "--max-retries", "10", *flags),
              env=endpoint_env(ep, key=KEY))
    assert run.code == 0, run.stderr
    assert KEY not in run.stdout + run.stderr
    return run


def test_verbose_levels_show_retries_pacing_then_requests_and_never_the_key(
        tmp_path: Path, make_endpoint: Any) -> None:
    plain = _noisy_run(tmp_path, make_endpoint)
    once = _noisy_run(tmp_path, make_endpoint, "-v")
    twice = _noisy_run(tmp_path, make_endpoint, "-vv")
    retry = re.compile(r"^\d\d:\d\d:\d\d info +(retrying|polling again) in [\d.]+s after: ",
                       re.MULTILINE)
    pacing = re.compile(r"^\d\d:\d\d:\d\d info +pacing: waited [\d.]+s before submitting "
                        r"\(--rate\)$", re.MULTILINE)
    request = re.compile(r"^\d\d:\d\d:\d\d debug +POST local/run (200|429) \d+ ms$", re.MULTILINE)
    assert not retry.search(plain.stderr) and not pacing.search(plain.stderr)
    assert retry.search(once.stderr) and pacing.search(once.stderr)
    assert not request.search(once.stderr)
    assert retry.search(twice.stderr) and pacing.search(twice.stderr)
    assert len(request.findall(twice.stderr)) >= 7  # every submission, refused ones too
    assert "GET local/status" in twice.stderr
    for run in (plain, once, twice):
        assert "done    img_000.png" in run.stderr  # per-job lines stay
        assert "6 of 6 images done" in run.stderr


def test_quiet_shows_only_failures_and_the_summary(tmp_path: Path, make_endpoint: Any) -> None:
    src = tmp_path / "in"
    make_images(src, 3)
    (src / "broken.png").write_text("not an image")
    run = rpq(*batch_args(src, tmp_path / "out", "-q"))  # no endpoint: the built-in one
    assert run.code == 1
    lines = run.stderr.splitlines()
    assert not any(line.startswith("done") for line in lines)
    assert "built-in local endpoint" not in run.stderr  # a note, hidden by -q
    assert any("broken.png" in line for line in lines)
    assert any(line.startswith("3 of 4 images done, 1 failed") for line in lines)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_verbose_and_quiet(command: str) -> None:
    text = rpq(command, "--help").stdout
    assert "-v, --verbose" in text and "-q, --quiet" in text


# --- help -------------------------------------------------------------------------------------


def _sections(text: str) -> list[str]:
    return [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Z][\w ]*:", line)]


def test_batch_and_serve_help_is_grouped_with_examples() -> None:
    batch = rpq("batch", "--help").stdout
    assert _sections(batch) == ["Arguments", "Endpoint", "Input", "Request", "Flow control",
                                "Output", "Alerts and cost", "General", "Examples"]
    for placeholder in ("--out DIR", "--input-template FILE.json", "--rate N/SECONDS",
                        "--cost-per-hour PRICE", "--max-wait SECONDS", "-c, --concurrency auto|N"):
        assert placeholder in batch, placeholder
    serve = rpq("serve", "--help").stdout
    assert _sections(serve) == ["Endpoint", "Workers", "Faults and limits", "General",
                                "Examples"]
    assert "--process-time S|LO-HI" in serve


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_examples_and_readable_placeholders(command: str) -> None:
    text = rpq(command, "--help").stdout
    examples = text.split("\nExamples:\n", 1)[1]
    assert examples.strip().startswith(f"rpq {command}")
    options = text.split("\nExamples:\n")[0]
    for machine_type in ("<str>", "<int", "<float", "<path>", "list["):
        assert machine_type not in options, machine_type
    assert not re.search(r"\{[A-Z]", options)  # no {FOLDER} placeholders


def test_help_does_not_load_the_heavy_modules() -> None:
    # What keeps `rpq --help` fast (measured in the README): no Rich, requests, Pillow or
    # HTTP server behind the command line until a command runs.
    code = ("import sys, rpq.cli; print(sorted(m for m in ('rich', 'requests', 'PIL', "
            "'rpq.local.server', 'rpq.pipeline', 'http.server') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# --- -e on every command that talks to an endpoint ------------------------------------------


def test_health_cancel_and_purge_take_dash_e(make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    where = ["-e", ep.endpoint_id, "--base-url", ep.base_url]
    assert rpq("health", *where, "--json").code == 0
    assert rpq("purge", *where, "--yes").code == 0
    run = rpq("cancel", *where, "no-such-job")
    assert run.code == 1 and "404" in run.stdout
    # the positional id stays as a shortcut, and may not disagree with -e
    assert rpq("health", ep.endpoint_id, "--base-url", ep.base_url, "--json").code == 0
    run = rpq("health", "other", *where)
    assert run.code == 2 and "two endpoints given" in run.stderr


def test_health_without_an_endpoint_says_how_to_give_one() -> None:
    run = rpq("health")
    assert run.code == 2 and "Pass -e ID (or set RUNPOD_ENDPOINT_ID)" in run.stderr
    run = rpq("health", "local")
    assert run.code == 2
    assert "'local' is the endpoint `rpq batch` starts inside itself" in run.stderr
    assert "rpq serve" in run.stderr and "--base-url" in run.stderr


# --- --json on serve and purge ---------------------------------------------------------------


def test_serve_json_says_where_it_listens(make_endpoint: Any) -> None:
    proc = subprocess.Popen([str(RPQ), "serve", "--port", "0", "--handler", "echo", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc["base_url"] == f"http://127.0.0.1:{doc['port']}/v2" and doc["port"] > 0
        assert doc["env"] == {"RUNPOD_ENDPOINT_BASE_URL": doc["base_url"],
                              "RUNPOD_ENDPOINT_ID": "local"}
        assert doc["handler"] == "echo" and doc["api_key_required"] is False
        run = rpq("health", "--json", env=doc["env"])
        assert run.code == 0 and json.loads(run.stdout)["endpoint"] == "local"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


# --- --profile --------------------------------------------------------------------------------


def _config(text: str) -> None:
    folder = Path(os.environ["HOME"]) / ".runpod"
    folder.mkdir()
    (folder / "config.toml").write_text(text)


def test_profile_picks_a_section_of_the_runpod_config(make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", api_key="work-key-123")
    _config('[default]\napi_key = "home-key-456"\n\n[work]\napi_key = "work-key-123"\n')
    where = ["-e", ep.endpoint_id, "--base-url", ep.base_url]
    assert rpq("health", *where).code == 3  # [default]: the wrong key, 401
    assert rpq("health", *where, "--profile", "work").code == 0
    # a flag: it wins over RUNPOD_API_KEY (and --api-key over it)
    run = rpq("health", *where, "--profile", "work", env={"RUNPOD_API_KEY": "home-key-456"})
    assert run.code == 0
    assert rpq("health", *where, "--profile", "work", "--api-key", "nope").code == 3
    run = rpq("health", *where, "--profile", "play")
    assert run.code == 2
    assert "[play] is not in the file" in run.stderr and "profiles there: default, work" \
        in run.stderr
    assert "key-" not in run.stderr


def test_profile_without_a_config_file_says_how_to_make_one(make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo")
    run = rpq("health", "-e", ep.endpoint_id, "--base-url", ep.base_url, "--profile", "work")
    assert run.code == 2 and "runpod config --profile work" in run.stderr


# --- shell completion -------------------------------------------------------------------------


def test_shell_completion_completes_commands_and_options() -> None:
    # What `rpq --install-completion` writes into the shell's profile, per shell.
    for shell, marker in (("bash", "complete -o default -F _rpq_completion rpq"),
                          ("zsh", "#compdef rpq"), ("fish", "complete --command rpq")):
        done = subprocess.run([str(RPQ)], env={**os.environ, "_RPQ_COMPLETE": f"source_{shell}"},
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0 and marker in done.stdout, (shell, done.stdout[:300])

    def complete(line: str) -> list[str]:
        env = {**os.environ, "_RPQ_COMPLETE": "complete_bash", "COMP_WORDS": line,
               "COMP_CWORD": str(len(line.split()) - (0 if line.endswith(" ") else 1))}
        done = subprocess.run([str(RPQ)], env=env, capture_output=True, text=True, timeout=60,
                              check=False)
        return done.stdout.split()

    assert "batch" in complete("rpq ba")
    assert "--max-queue-time" in complete("rpq batch --max-q")
