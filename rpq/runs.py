"""The summaries of earlier runs into one output folder, kept beside its journal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUNS_NAME = ".rpq-runs.jsonl"
KEEP = 100  # summaries listed in job_metrics.json; older ones stay in the file only


class RunHistory:
    """One JSON line per finished run, appended; a torn last line is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """The latest KEEP runs' summaries, oldest first."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        runs: list[dict[str, Any]] = []
        for line in lines[-KEEP:]:
            try:
                run = json.loads(line)
            except ValueError:
                continue  # a run killed while appending its line
            if isinstance(run, dict):
                runs.append(run)
        return runs

    def append(self, run: dict[str, Any]) -> None:
        line = json.dumps(run, ensure_ascii=False, default=str, allow_nan=False) + "\n"
        with open(self.path, "ab") as f:
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
