"""The wheel a user installs: license, typing marker, metadata and the `rpq` script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_wheel_carries_license_typing_marker_and_metadata(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "rpq", src / "rpq", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
         str(src)], capture_output=True, text=True, timeout=540, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = (tmp_path / "dist").glob("rpq-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(whl.read(f"{info}/METADATA").decode())
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
        scripts = whl.read(f"{info}/entry_points.txt").decode()
    assert "rpq/py.typed" in names and "rpq/cli.py" in names
    assert not any("tests/" in n or "__pycache__" in n for n in names)
    assert license_text.startswith("MIT License") and "rpq authors" in license_text
    assert meta["License-Expression"] == "MIT"
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert meta.get_all("Project-URL")
    assert meta["Requires-Python"] == ">=3.10"
    assert "rpq = rpq.cli:main" in scripts
