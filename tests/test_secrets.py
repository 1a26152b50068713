"""The API key never shows up in output, files, errors or tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images

from rpq.api import RunPodClient
from rpq.settings import resolve_endpoint

KEY = "rpq_TESTKEY_9f8e7d6c5b4a"


def _all_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file())


def test_key_never_written_or_printed(tmp_path: Path, make_endpoint) -> None:
    ep = make_endpoint(handler="echo", api_key=KEY, faults="500=0.2,fail=0.3", seed=2)
    src = tmp_path / "in"
    make_images(src, 6)
    (src / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    env = endpoint_env(ep, key=KEY)
    seen = []
    for args in (
        batch_args(src, out, "--save-json", "--max-retries", "6"),
        batch_args(src, out, "--retry-failed", "--json"),
        batch_args(src, out, "--dry-run"),
        ["health", "--json"],
        ["health"],
        ["cancel", "nope"],
        ["report", out / "job_metrics.json"],
        batch_args(src, tmp_path / "o2", "--input-template", tmp_path / "missing.json"),
    ):
        run = rpq(*args, env=env)
        seen += [run.stdout, run.stderr]
    run = rpq(*batch_args(src, tmp_path / "o3"), env=endpoint_env(ep, key=KEY + "x"))
    assert run.code == 3
    seen += [run.stdout, run.stderr]
    assert (out / "job_metrics.json").exists()
    assert KEY not in "\n".join(seen)
    assert KEY not in _all_text(tmp_path / "out")
    assert KEY not in json.dumps(json.loads((out / "job_metrics.json").read_text()))


def test_key_hidden_in_reprs_and_errors(tmp_path: Path) -> None:
    ep = resolve_endpoint("abc", KEY, "https://api.runpod.ai/v2", env={})
    assert KEY not in repr(ep)
    client = RunPodClient("http://127.0.0.1:9/v2", "abc", KEY)
    assert KEY not in repr(client)
    with pytest.raises(Exception) as info:
        client.health()
    assert KEY not in str(info.value) and KEY not in repr(info.value)
    client.close()


def test_key_from_runpod_config_file(tmp_path: Path) -> None:
    home = tmp_path / "h"
    (home / ".runpod").mkdir(parents=True)
    (home / ".runpod" / "config.toml").write_text(f'[default]\napi_key = "{KEY}"\n')
    ep = resolve_endpoint("abc", None, None, env={}, home=home)
    assert ep.api_key == KEY
    env_wins = resolve_endpoint("abc", None, None, env={"RUNPOD_API_KEY": "from-env"}, home=home)
    assert env_wins.api_key == "from-env"
    flag_wins = resolve_endpoint("abc", "flag", None, env={"RUNPOD_API_KEY": "env"}, home=home)
    assert flag_wins.api_key == "flag"


def test_broken_config_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    from rpq.errors import UsageError

    home = tmp_path / "h"
    (home / ".runpod").mkdir(parents=True)
    (home / ".runpod" / "config.toml").write_text(f'[default]\napi_key = "{KEY}\n')
    with pytest.raises(UsageError) as info:
        resolve_endpoint("abc", None, None, env={}, home=home)
    assert "config.toml" in str(info.value) and KEY not in str(info.value)


def test_endpoint_resolution_rules() -> None:
    from rpq.errors import UsageError

    assert resolve_endpoint(None, None, None, env={}).local
    assert resolve_endpoint("local", None, None, env={}).local
    remote = resolve_endpoint("local", None, "http://127.0.0.1:8000/v2", env={})
    assert not remote.local and remote.endpoint_id == "local"
    assert remote.base_url == "http://127.0.0.1:8000/v2"
    assert resolve_endpoint("abc", None, None, env={}).base_url == "https://api.runpod.ai/v2"
    with pytest.raises(UsageError, match="RUNPOD_ENDPOINT_ID"):
        resolve_endpoint(None, None, "https://x.example/v2", env={})
    with pytest.raises(UsageError, match="http://"):
        resolve_endpoint("abc", None, "http://10.0.0.5/v2", env={})
    assert resolve_endpoint("abc", None, "http://[::1]:8000/v2", env={}).base_url


def test_netrc_never_replaces_the_key(tmp_path: Path, make_endpoint) -> None:
    # requests would send ~/.netrc credentials instead of our Authorization header.
    home = Path.home()
    (home / ".netrc").write_text("machine 127.0.0.1 login someone password other-secret\n")
    (home / ".netrc").chmod(0o600)
    ep = make_endpoint(handler="echo", api_key=KEY)
    src = tmp_path / "in"
    make_images(src, 1)
    run = rpq(*batch_args(src, tmp_path / "out"), env=endpoint_env(ep, key=KEY))
    assert run.code == 0, run.stderr
