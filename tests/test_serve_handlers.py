"""rpq serve handlers: built-ins, user worker files, and the runpod-python result contract."""

from __future__ import annotations

import base64
import io
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import wait_for
from PIL import Image

from rpq.local import HandlerLoadError, LocalEndpoint

Make = Callable[..., LocalEndpoint]


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def runsync(http: requests.Session, ep: LocalEndpoint, inp: dict[str, Any]) -> dict[str, Any]:
    r = http.post(f"{ep.url}/runsync", json={"input": inp}, timeout=30)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def worker_file(tmp_path: Path, source: str, name: str = "worker.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def png_b64(size: tuple[int, int] = (48, 32)) -> str:
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste((200, 30, 30), (12, 8, 36, 24))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# ---- built-ins -------------------------------------------------------------------------


def test_sleep_builtin(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="sleep")
    doc = runsync(http, ep, {"seconds": 0.2})
    assert doc["status"] == "COMPLETED" and doc["output"] == {"slept": 0.2}
    assert doc["executionTime"] >= 200
    doc = runsync(http, ep, {"seconds": "long"})
    assert doc["status"] == "FAILED" and "seconds" in doc["error"]


@pytest.mark.parametrize("data_uri", [False, True])
def test_remove_background_returns_png_with_alpha(
    http: requests.Session, make_endpoint: Make, data_uri: bool
) -> None:
    ep = make_endpoint(handler="remove-background")
    image = png_b64((48, 32))
    if data_uri:
        image = "data:image/png;base64," + image
    doc = runsync(http, ep, {"image": image})
    assert doc["status"] == "COMPLETED", doc
    with Image.open(io.BytesIO(base64.b64decode(doc["output"]["image"]))) as out:
        assert out.format == "PNG"
        assert out.size == (48, 32)
        assert "A" in out.getbands()


@pytest.mark.parametrize(
    ("inp", "words"),
    [
        ({}, "input.image is required"),
        ({"image": 5}, "input.image is required"),
        ({"image": "not base64!!"}, "not valid base64"),
        ({"image": base64.b64encode(b"plain text, no image").decode()}, "not a readable image"),
        ({"image": "data:image/png;base64"}, "not valid base64"),
    ],
)
def test_remove_background_bad_input_fails_clearly(
    http: requests.Session, make_endpoint: Make, inp: dict[str, Any], words: str
) -> None:
    ep = make_endpoint(handler="remove-background")
    doc = runsync(http, ep, inp)
    assert doc["status"] == "FAILED"
    assert words in doc["error"]


def test_process_time_adds_execution_time(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler="echo", process_time=0.2)
    assert runsync(http, ep, {})["executionTime"] >= 200
    ep = make_endpoint(handler="echo", process_time=(0.05, 0.15), seed=4)
    times = [runsync(http, ep, {})["executionTime"] for _ in range(4)]
    assert all(50 <= t < 1000 for t in times)


# ---- the runpod-python result contract --------------------------------------------------


def test_raising_handler_fails_with_runpod_error(
    http: requests.Session, make_endpoint: Make
) -> None:
    def boom(job: dict[str, Any]) -> None:
        raise ValueError("no good")

    ep = make_endpoint(handler=boom)
    doc = runsync(http, ep, {})
    assert doc["status"] == "FAILED" and "output" not in doc
    error = json.loads(doc["error"])
    assert error["error_type"] == "<class 'ValueError'>"
    assert error["error_message"] == "no good"
    assert "ValueError: no good" in error["error_traceback"]
    assert error["worker_id"] == doc["workerId"]
    assert {"hostname", "runpod_version"} <= set(error)
    assert http.get(f"{ep.url}/health").json()["jobs"]["failed"] == 1
    assert runsync(http, ep, {})["status"] == "FAILED"  # still serving


def test_error_dict_fails_and_keeps_the_rest(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler=lambda job: {"error": "bad width", "details": [1]})
    doc = runsync(http, ep, {})
    assert doc["status"] == "FAILED" and doc["error"] == "bad width"
    assert doc["output"] == {"details": [1]}
    ep = make_endpoint(handler=lambda job: {"error": "only this"})
    doc = runsync(http, ep, {})
    assert doc["status"] == "FAILED" and doc["error"] == "only this" and "output" not in doc


@pytest.mark.parametrize(
    ("result", "output"),
    [
        ({}, None),
        ({"error": None, "x": 1}, {"x": 1}),
        ({"refresh_worker": True, "y": 2}, {"y": 2}),
        ([1, 2], [1, 2]),
        ("text", "text"),
        (False, False),
        (None, None),
    ],
)
def test_results_map_like_runpod(
    http: requests.Session, make_endpoint: Make, result: Any, output: Any
) -> None:
    ep = make_endpoint(handler=lambda job: result)
    doc = runsync(http, ep, {})
    assert doc["status"] == "COMPLETED"
    assert doc.get("output") == output


def test_unserialisable_output_fails(http: requests.Session, make_endpoint: Make) -> None:
    ep = make_endpoint(handler=lambda job: {"x": object()})
    doc = runsync(http, ep, {})
    assert doc["status"] == "FAILED" and "TypeError" in json.loads(doc["error"])["error_type"]


def test_async_handlers(http: requests.Session, make_endpoint: Make) -> None:
    async def coro(job: dict[str, Any]) -> dict[str, Any]:
        return {"async": job["input"]["v"]}

    async def agen(job: dict[str, Any]) -> Any:
        for i in range(3):
            yield i

    assert runsync(http, make_endpoint(handler=coro), {"v": 1})["output"] == {"async": 1}
    ep = make_endpoint(handler=agen)
    doc = runsync(http, ep, {})
    assert doc["status"] == "COMPLETED" and doc["output"] == []  # no return_aggregate_stream
    chunks = http.get(f"{ep.url}/stream/{doc['id']}", timeout=10).json()["stream"]
    assert [c["output"] for c in chunks] == [0, 1, 2]


def test_generator_that_raises_midway(http: requests.Session, make_endpoint: Make) -> None:
    def gen(job: dict[str, Any]) -> Iterator[int]:
        yield 1
        raise RuntimeError("stream broke")

    ep = make_endpoint(handler=gen)
    doc = runsync(http, ep, {})
    assert doc["status"] == "FAILED" and "stream broke" in doc["error"]
    stream = http.get(f"{ep.url}/stream/{doc['id']}").json()
    assert stream == {"status": "FAILED", "stream": [{"output": 1}]}


# ---- user worker files -----------------------------------------------------------------


def test_file_with_function(http: requests.Session, make_endpoint: Make, tmp_path: Path) -> None:
    path = worker_file(
        tmp_path,
        """
        import helper_mod  # a sibling module, importable while the file loads

        def handle(job):
            return {"sum": job["input"]["a"] + helper_mod.ONE}
        """,
    )
    (tmp_path / "helper_mod.py").write_text("ONE = 1\n")
    ep = make_endpoint(handler=f"{path}:handle")
    assert runsync(http, ep, {"a": 2})["output"] == {"sum": 3}


def test_file_using_runpod_start(
    http: requests.Session, make_endpoint: Make, tmp_path: Path
) -> None:
    import importlib.util

    before = sys.modules.get("runpod")
    flag = tmp_path / "go"
    path = worker_file(
        tmp_path,
        f"""
        import os, time
        import runpod

        log = runpod.RunPodLogger()

        def handler(job):
            log.info("starting")
            runpod.serverless.progress_update(job, "halfway")
            deadline = time.monotonic() + 10
            while not os.path.exists({str(flag)!r}) and time.monotonic() < deadline:
                time.sleep(0.01)
            return {{"done": job["input"]}}

        runpod.serverless.start({{"handler": handler}})
        """,
    )
    ep = make_endpoint(handler=str(path))
    assert sys.modules.get("runpod") is before  # the stand-in is gone after loading
    job_id = http.post(f"{ep.url}/run", json={"input": {"k": 1}}).json()["id"]
    doc = wait_for(
        lambda: (d := http.get(f"{ep.url}/status/{job_id}").json()).get("output") == "halfway"
        and d
    )
    assert doc["status"] == "IN_PROGRESS"
    flag.touch()
    doc = wait_for(
        lambda: (d := http.get(f"{ep.url}/status/{job_id}").json())["status"] == "COMPLETED"
        and d
    )
    assert doc["output"] == {"done": {"k": 1}}
    assert importlib.util.find_spec("runpod") is not None or before is None


def test_file_with_guarded_start_uses_handler_function(
    http: requests.Session, make_endpoint: Make, tmp_path: Path
) -> None:
    path = worker_file(
        tmp_path,
        """
        import runpod

        def handler(job):
            return "ok"

        if __name__ == "__main__":
            runpod.serverless.start({"handler": handler})
        """,
    )
    assert runsync(http, make_endpoint(handler=str(path)), {})["output"] == "ok"


def test_file_raising_handler_and_error_dict(
    http: requests.Session, make_endpoint: Make, tmp_path: Path
) -> None:
    path = worker_file(
        tmp_path,
        """
        def explode(job):
            raise KeyError("missing")

        def refuse(job):
            return {"error": "Validation Error: width", "hint": "use 512"}
        """,
    )
    doc = runsync(http, make_endpoint(handler=f"{path}:explode"), {})
    assert doc["status"] == "FAILED"
    assert json.loads(doc["error"])["error_type"] == "<class 'KeyError'>"
    doc = runsync(http, make_endpoint(handler=f"{path}:refuse"), {})
    assert doc["status"] == "FAILED" and doc["error"] == "Validation Error: width"
    assert doc["output"] == {"hint": "use 512"}


def test_file_generator_streams(
    http: requests.Session, make_endpoint: Make, tmp_path: Path
) -> None:
    path = worker_file(
        tmp_path,
        """
        import runpod

        def handler(job):
            for word in job["input"]["text"].split():
                yield {"word": word}

        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
        """,
    )
    ep = make_endpoint(handler=str(path))
    job_id = http.post(f"{ep.url}/run", json={"input": {"text": "a b c"}}).json()["id"]
    words: list[str] = []
    while True:
        part = http.get(f"{ep.url}/stream/{job_id}?wait=1000", timeout=10).json()
        words += [c["output"]["word"] for c in part["stream"]]
        if part["status"] == "COMPLETED" and not part["stream"]:
            break
    assert words == ["a", "b", "c"]
    doc = http.get(f"{ep.url}/status/{job_id}").json()
    assert doc["output"] == [{"word": "a"}, {"word": "b"}, {"word": "c"}]


@pytest.mark.parametrize(
    ("source", "spec", "words"),
    [
        (None, "{dir}/absent.py", "absent.py does not exist"),
        (None, "{dir}/absent.py:handler", "absent.py does not exist"),
        ("def f(job):\n    return 1\n", "{path}:nope", "no function 'nope'"),
        ("X = 1\n", "{path}:X", "no function 'X'"),
        ("def f(job):\n    return 1\n", "{path}", "neither calls runpod.serverless.start"),
        ("raise RuntimeError('import time boom')\n", "{path}", "import time boom"),
        ("import sys\nsys.exit(3)\n", "{path}", "failed to import"),
        ("def f(:\n", "{path}", "SyntaxError"),
        (
            "import runpod\nrunpod.serverless.start({'handler': 5})\n",
            "{path}",
            "without a callable 'handler'",
        ),
        (None, "no-such-builtin", "unknown handler 'no-such-builtin'"),
        (
            "from runpod.serverless.utils import rp_upload\n",
            "{path}",
            "imports runpod.serverless.utils, which rpq serve does not provide",
        ),
        ("import no_such_module_xyz\n", "{path}", "No module named 'no_such_module_xyz'"),
    ],
)
def test_bad_handlers_fail_at_start_naming_the_file(
    tmp_path: Path, source: str | None, spec: str, words: str
) -> None:
    path = tmp_path / "worker.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(HandlerLoadError, match=words) as info:
        LocalEndpoint(handler=spec.format(dir=tmp_path, path=path))
    if "{" in spec:
        assert str(tmp_path) in str(info.value)
    assert not any(name.startswith("_rpq_worker_") and "worker" in name for name in sys.modules
                   if sys.modules[name] is None)


def test_server_keeps_serving_after_handler_errors(
    http: requests.Session, make_endpoint: Make
) -> None:
    def bad(job: dict[str, Any]) -> Any:
        if job["input"].get("exit"):
            raise SystemExit(1)
        raise MemoryError("pretend")

    ep = make_endpoint(handler=bad)
    assert runsync(http, ep, {"exit": True})["status"] == "FAILED"
    assert runsync(http, ep, {})["status"] == "FAILED"
    assert http.get(f"{ep.url}/health").json()["jobs"]["failed"] == 2
