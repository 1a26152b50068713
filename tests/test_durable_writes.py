"""Files rpq keeps (job_metrics.json) survive a power cut: data, then the rename, on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from imaging import make_images


def test_the_folder_is_flushed_after_the_metrics_file_is_renamed_into_it(
        tmp_path: Path, make_endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Watch the real calls (they still happen): which files and folders reach the disk, when.
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            events.append(("fsync folder", (info.st_dev, info.st_ino)))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        real_replace(src, dst, **kw)
        events.append(("rename", Path(dst).name))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    ep = make_endpoint(handler="echo")
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    renamed = events.index(("rename", "job_metrics.json"))
    folder = os.stat(out)
    assert ("fsync folder", (folder.st_dev, folder.st_ino)) in events[renamed + 1:], events
