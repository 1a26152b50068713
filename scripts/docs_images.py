"""Make the README's pictures from a real run against `rpq serve` (make docs-images).

docs/live-table.svg: the live table of `rpq batch` as it stands mid-run (Rich's SVG export).
docs/timeline.png:   `rpq report --plot` of the same run.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from PIL import Image, ImageDraw
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
RPQ = Path(sys.executable).with_name("rpq")
SERVE = ["serve", "--port", "0", "--json", "--handler", "remove-background",
         "--workers-max", "4", "--cold-start", "1.5", "--idle-timeout", "30",
         "--process-time", "0.4-1.6", "--faults", "fail=0.08,500=0.05", "--seed", "3"]


def make_inputs(folder: Path, count: int, seed: int = 7) -> None:
    """Product-like shots: one coloured object on a light gradient, all different."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.new("RGB", (320, 240))
        draw = ImageDraw.Draw(image)
        top = rng.randint(215, 245)
        for y in range(240):
            shade = top - y // 12
            draw.line([(0, y), (319, y)], fill=(shade, shade, shade + 5))
        colour = tuple(rng.randint(20, 200) for _ in range(3))
        x, y, w, h = rng.randint(60, 140), rng.randint(40, 90), rng.randint(70, 120), \
            rng.randint(60, 110)
        shape = draw.ellipse if i % 2 else draw.rounded_rectangle
        shape([x, y, x + w, y + h], fill=colour)
        image.save(folder / f"product_{i:03d}.png")


def start_serve() -> tuple[subprocess.Popen[str], dict[str, str]]:
    proc = subprocess.Popen([str(RPQ), *SERVE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("rpq serve did not start")
    env: dict[str, str] = json.loads(line)["env"]
    return proc, env


def run_batch(src: Path, out: Path, env: dict[str, str], svg: Path, width: int) -> None:
    """`rpq batch` in this process with the live table drawn to a buffer; one frame to SVG."""
    from rpq.pipeline import Batch
    from rpq.progress import LiveReporter
    from rpq.settings import BatchSettings, EndpointSettings

    settings = BatchSettings(
        root=src, out=out, concurrency=6, cost_per_hour=0.69, max_queue_time=30,
        endpoint=EndpointSettings(endpoint_id=env["RUNPOD_ENDPOINT_ID"],
                                  base_url=env["RUNPOD_ENDPOINT_BASE_URL"]))
    screen = Console(file=io.StringIO(), force_terminal=True, width=width)
    reporter = LiveReporter(screen)
    batch = Batch(settings, reporter)
    batch.check_endpoint()
    done = threading.Event()

    def snapshot_mid_run() -> None:
        # The frame a user sees once about 40% of the images are finished.
        while not done.wait(0.05):
            tracker = reporter.tracker
            if tracker is None or not tracker.total:
                continue
            counts = tracker.snapshot().counts
            if counts["done"] + counts["failed"] >= 0.4 * tracker.total:
                frame = Console(record=True, file=io.StringIO(), width=width)
                frame.print(reporter.render())
                svg.write_text(frame.export_svg(title="rpq batch products/ -e local"))
                return

    watcher = threading.Thread(target=snapshot_mid_run, daemon=True)
    watcher.start()
    try:
        result = batch.run()
    finally:
        done.set()
        watcher.join(timeout=5)
    if not svg.exists():
        raise SystemExit("the run ended before a mid-run frame was taken")
    stats = result.summary["stats"]
    print(f"run: {stats['completed']} of {stats['total_jobs']} done", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--width", type=int, default=100)
    args = parser.parse_args(argv)
    args.out.mkdir(exist_ok=True)
    svg, png = args.out / "live-table.svg", args.out / "timeline.png"
    svg.unlink(missing_ok=True)
    proc, env = start_serve()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src, out = Path(tmp) / "products", Path(tmp) / "products_out"
            make_inputs(src, args.images)
            run_batch(src, out, env, svg, args.width)
            subprocess.run([str(RPQ), "report", str(out), "--plot", str(png), "-q"],
                           check=False, stdout=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    if not png.exists():
        raise SystemExit("rpq report --plot wrote no picture")
    print(f"wrote {svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg} and {png.name}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
