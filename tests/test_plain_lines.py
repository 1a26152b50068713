"""Plain output (`--no-progress`, or stderr not a terminal): one whole line per job."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from batchkit import batch_args, endpoint_env, rpq_process, stop
from imaging import make_images


def test_jobs_ending_together_each_get_one_whole_line(tmp_path: Path, make_endpoint: Any) -> None:
    ep = make_endpoint(handler="echo", workers_max=16, workers_min=16)
    src, out = tmp_path / "in", tmp_path / "out"
    n = 200
    make_images(src, n)
    (src / "cut.jpg").write_bytes(_truncated_jpeg())
    proc = rpq_process(*batch_args(src, out, "--concurrency", "16"), env=endpoint_env(ep))
    try:
        _, stderr = proc.communicate(timeout=120)
    finally:
        stop(proc)
    assert proc.returncode == 1, stderr  # the cut JPEG failed, the rest is done
    lines = stderr.splitlines()
    assert "" not in lines, stderr
    done = [line for line in lines if line.startswith("done ")]
    assert len(done) == n, stderr
    assert all(line.count(".png") == 2 for line in done), stderr  # img_i.png -> img_i.png
    cut = [line for line in lines if "cut.jpg" in line]
    assert len(cut) == 1 and cut[0].startswith("bad_input cut.jpg: truncated or corrupt image")
    assert cut[0].count("cut.jpg") == 1, cut


def _truncated_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_noise((200, 150), 60).convert("RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()[: buf.tell() // 2]
