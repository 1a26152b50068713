"""Job handlers for the local endpoint: built-ins, user worker files, the runpod contract."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import importlib.util
import inspect
import io
import json
import logging
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rpq.local.config import HandlerFunc

RUNPOD_VERSION = "rpq-local"


class HandlerLoadError(ValueError):
    """A handler name, file or function that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Handler:
    """A resolved handler, a name for messages, and the options of its start() call."""

    func: HandlerFunc
    name: str
    aggregate: bool = False  # return_aggregate_stream
    refresh: bool = False  # refresh_worker: a new worker after every job
    concurrency: Callable[[int], int] | None = None  # concurrency_modifier


@dataclass(frozen=True)
class Outcome:
    """What one handler call produced, already mapped the way runpod-python maps it.

    size: characters of the output as JSON; refresh: the worker must be replaced.
    """

    ok: bool
    output: Any = None
    error: str | None = None
    refresh: bool = False
    size: int = 0


class Stopper:
    """Stops a running handler as the SDK's job-stop does: an async handler's task is
    cancelled, a generator is not read any further; plain sync code runs on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop: Callable[[], None] | None = None
        self.requested = False

    def attach(self, stop: Callable[[], None]) -> None:
        with self._lock:
            self._stop = stop
            requested = self.requested
        if requested:
            stop()

    def request(self) -> None:
        with self._lock:
            self.requested = True
            stop = self._stop
        if stop is not None:
            stop()


# Where progress_update() sends a payload: job id -> sink. Job ids are uuids, so one
# registry serves every endpoint in the process.
_progress_sinks: dict[str, Callable[[Any], None]] = {}
_local = threading.local()


def progress_update(job: dict[str, Any], progress: Any) -> None:
    """Stand-in for runpod.serverless.progress_update: becomes the job's IN_PROGRESS output."""
    sink = _progress_sinks.get(str(job.get("id"))) if isinstance(job, dict) else None
    if sink is not None:
        sink(progress)


def handler_sleep(seconds: float) -> None:
    """Sleep that ends early when the endpoint stops, so stop() stays prompt."""
    stop: threading.Event | None = getattr(_local, "stop", None)
    if stop is None:
        time.sleep(seconds)
    else:
        stop.wait(seconds)


def runpod_error(
    error_type: str, message: str, tb: str, worker_id: str
) -> str:
    """The JSON string runpod-python puts in `error` when a handler raises."""
    return json.dumps(
        {
            "error_type": error_type,
            "error_message": message,
            "error_traceback": tb,
            "hostname": socket.gethostname(),
            "worker_id": worker_id,
            "runpod_version": RUNPOD_VERSION,
        }
    )


def call_handler(
    func: HandlerFunc,
    job: dict[str, Any],
    *,
    worker_id: str,
    on_chunk: Callable[[Any], None],
    on_progress: Callable[[Any], None],
    stop: threading.Event,
    aggregate: bool = False,
    stopper: Stopper | None = None,
) -> Outcome:
    """Run one job the way runpod-python's worker does and map the result.

    Generators stream each chunk to `on_chunk`; the output is the list of chunks with
    `aggregate` (return_aggregate_stream), else []. A chunk {"error": ...} ends the stream
    and fails the job. A dict with a truthy "error" fails the job; the rest of the dict
    becomes the output.
    """
    job_id = str(job["id"])
    _progress_sinks[job_id] = on_progress
    _local.stop = stop
    stopper = stopper or Stopper()
    try:
        result = func(job)
        if inspect.isawaitable(result):
            result = _run_coroutine(result, stopper)
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            return _stream(result, on_chunk, aggregate, stopper)
        outcome = _map_result(result)
        if outcome.output is not None:
            # Fails here, not when a client asks for it; the size is checked against limits.
            outcome = replace(outcome, size=len(json.dumps(outcome.output)))
        return outcome
    except asyncio.CancelledError:
        return Outcome(ok=False, error="the job was stopped")
    except (Exception, SystemExit) as exc:  # a worker survives sys.exit() in a handler
        return Outcome(
            ok=False,
            error=runpod_error(str(type(exc)), str(exc), traceback.format_exc(), worker_id),
        )
    finally:
        _progress_sinks.pop(job_id, None)
        _local.stop = None


def _run_coroutine(awaitable: Any, stopper: Stopper) -> Any:
    async def wrap() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is not None:

            def cancel() -> None:
                with contextlib.suppress(RuntimeError):  # the loop has already ended
                    loop.call_soon_threadsafe(task.cancel)

            stopper.attach(cancel)
        return await awaitable

    return asyncio.run(wrap())


def _stream(
    result: Any, on_chunk: Callable[[Any], None], aggregate: bool, stopper: Stopper
) -> Outcome:
    """Read a generator's chunks as runpod-python's handle_job does."""
    chunks: list[Any] = []
    try:
        for chunk in _chunks(result):
            if stopper.requested:
                return Outcome(ok=False, error="the job was stopped")
            if isinstance(chunk, dict) and chunk.get("error"):
                return Outcome(ok=False, error=str(chunk["error"]))
            json.dumps(chunk)
            on_chunk(chunk)
            if aggregate:
                chunks.append(chunk)
    except Exception as exc:
        # The SDK's own wording for a generator that raises.
        return Outcome(ok=False, error=f"handler: {exc} \ntraceback: {traceback.format_exc()}")
    return Outcome(ok=True, output=chunks, size=len(json.dumps(chunks)))


def _chunks(result: Any) -> Iterator[Any]:
    if inspect.isgenerator(result):
        try:
            yield from result
        finally:
            result.close()
        return
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(result.__anext__())
            except StopAsyncIteration:
                break
    finally:
        loop.run_until_complete(result.aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _map_result(result: Any) -> Outcome:
    if isinstance(result, dict):
        rest = dict(result)  # the handler may reuse its dict; popping must not touch it
        error = rest.pop("error", None)
        refresh = bool(rest.pop("refresh_worker", None))
        output = rest or None
        if error:
            message = error if isinstance(error, str) else json.dumps(error)
            return Outcome(ok=False, output=output, error=message, refresh=refresh)
        return Outcome(ok=True, output=output, refresh=refresh)
    return Outcome(ok=True, output=result)


def split_chunk(chunk: Any, limit: int) -> list[Any]:
    """A text chunk over `limit` UTF-8 bytes becomes several, as RunPod's /stream does."""
    if not isinstance(chunk, str) or len(chunk) * 4 <= limit:
        return [chunk]
    data = chunk.encode("utf-8")
    parts: list[Any] = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1  # never cut a character in two
        parts.append(data[start:end].decode("utf-8"))
        start = end
    return parts


# ---- built-in handlers ---------------------------------------------------------------


def echo(job: dict[str, Any]) -> Any:
    """Return the input; an "image" field comes back as {"image": same} for round trips."""
    inp = job["input"]
    if isinstance(inp, dict) and "image" in inp:
        rest = {k: v for k, v in inp.items() if k != "image"}
        return {"image": inp["image"], "echo": rest} if rest else {"image": inp["image"]}
    return {"echo": inp}


def sleep(job: dict[str, Any]) -> Any:
    """Sleep input.seconds, then return {"slept": seconds}."""
    inp = job["input"]
    seconds = inp.get("seconds", 1.0) if isinstance(inp, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return {"error": "input.seconds must be a number of seconds >= 0"}
    handler_sleep(float(seconds))
    return {"slept": seconds}


def remove_background(job: dict[str, Any]) -> Any:
    """Decode input.image (base64 or data URI), remove its background, return a base64 PNG."""
    inp = job["input"]
    data = inp.get("image") if isinstance(inp, dict) else None
    if not isinstance(data, str) or not data.strip():
        return {"error": "input.image is required: a base64 string or a data URI of an image"}
    try:
        raw = decode_base64_image(data)
    except ValueError as exc:
        return {"error": f"input.image is not valid base64: {exc}"}

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as opened:
            opened.load()
            # The PNG out carries no EXIF, so bake the orientation into the pixels.
            image = ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        return {"error": f"input.image is not a readable image: {exc}"}

    from rpq.local.removebg import remove_background as remove

    result = remove(image)
    buf = io.BytesIO()
    result.save(buf, format="PNG")
    return {"image": base64.b64encode(buf.getvalue()).decode("ascii")}


def decode_base64_image(data: str) -> bytes:
    """Base64 or data URI to bytes; raises ValueError on anything else."""
    text = data.strip()
    if text.startswith("data:"):
        _, sep, text = text.partition(",")
        if not sep:
            raise ValueError("data URI has no comma before the data")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(str(exc)) from None


BUILTINS: dict[str, HandlerFunc] = {
    "echo": echo,
    "sleep": sleep,
    "remove-background": remove_background,
}


# ---- loading user handlers -----------------------------------------------------------


def resolve_handler(spec: str | HandlerFunc) -> Handler:
    """A built-in name, "path/worker.py", "path/worker.py:func", or a callable."""
    if callable(spec):
        return Handler(func=spec, name=getattr(spec, "__name__", repr(spec)))
    if not isinstance(spec, str) or not spec.strip():
        raise HandlerLoadError(_usage(f"handler must be a name or a path, not {spec!r}"))
    spec = spec.strip()
    if spec in BUILTINS:
        return Handler(func=BUILTINS[spec], name=spec)
    path_text, func_name = _split_spec(spec)
    path = Path(path_text).expanduser()
    if not path.is_file():
        if path.suffix != ".py" and func_name is None:
            raise HandlerLoadError(_usage(f"unknown handler {spec!r}"))
        raise HandlerLoadError(f"handler file {path} does not exist; check the path")
    module = _import_worker_file(path)
    if func_name is not None:
        func = getattr(module.module, func_name, None)
        if not callable(func):
            raise HandlerLoadError(
                f"handler file {path} has no function {func_name!r}; "
                f"name one it defines after the colon"
            )
        return Handler(func=func, name=f"{path}:{func_name}")
    if module.started is not None:
        options = module.options
        modifier = options.get("concurrency_modifier")
        return Handler(
            func=module.started,
            name=str(path),
            aggregate=bool(options.get("return_aggregate_stream")),
            refresh=bool(options.get("refresh_worker")),
            concurrency=modifier if callable(modifier) else None,
        )
    fallback = getattr(module.module, "handler", None)
    if callable(fallback):
        return Handler(func=fallback, name=f"{path}:handler")
    raise HandlerLoadError(
        f"handler file {path} neither calls runpod.serverless.start({{'handler': ...}}) "
        f"at import nor defines a function named 'handler'; use {path}:FUNCTION"
    )


def _usage(problem: str) -> str:
    names = ", ".join(BUILTINS)
    return f"{problem}: use a built-in ({names}), path/to/worker.py or path/to/worker.py:function"


def _split_spec(spec: str) -> tuple[str, str | None]:
    path_text, sep, func_name = spec.rpartition(":")
    # Only split when the tail is a Python name, so "C:\\w.py" stays one path.
    if sep and path_text and func_name.isidentifier():
        return path_text, func_name
    return spec, None


@dataclass
class _Loaded:
    module: types.ModuleType
    started: HandlerFunc | None
    options: dict[str, Any]


def _import_worker_file(path: Path) -> _Loaded:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    name = f"_rpq_worker_{resolved.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"handler file {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    captured: dict[str, Any] = {}
    stand_in = _runpod_stand_in(captured, path)
    # The real SDK's modules, if this process has imported them, are hidden meanwhile: the
    # stand-in must be all the file sees, whatever was imported before.
    saved = {key: sys.modules.pop(key, None) for key in list(sys.modules)
             if key == "runpod" or key.startswith("runpod.")}
    for key in ("runpod", "runpod.serverless"):
        saved.setdefault(key, None)
    sys.modules["runpod"] = stand_in
    sys.modules["runpod.serverless"] = stand_in.serverless
    # Registered so dataclasses and pickling inside the worker file find their module.
    sys.modules[name] = module
    sys.path.insert(0, str(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except HandlerLoadError:
        sys.modules.pop(name, None)
        raise
    except ModuleNotFoundError as exc:
        sys.modules.pop(name, None)
        if (exc.name or "").startswith("runpod."):
            raise HandlerLoadError(
                f"handler file {path} imports {exc.name}, which rpq serve does not provide "
                f"in-process (--handler stands in for runpod.serverless.start, "
                f"progress_update and RunPodLogger only); run it as a real worker process "
                f"with the runpod SDK instead: rpq serve --worker \"python {path}\""
            ) from None
        raise HandlerLoadError(
            f"handler file {path} failed to import: {type(exc).__name__}: {exc}"
        ) from None
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise HandlerLoadError(
            f"handler file {path} failed to import: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(resolved.parent))
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return _Loaded(
        module=module, started=captured.get("handler"), options=captured.get("options", {})
    )


def _runpod_stand_in(captured: dict[str, Any], path: Path) -> Any:
    """A minimal `runpod` module so worker files import and register their handler."""
    runpod = types.ModuleType("runpod")
    runpod.__path__ = []  # a package, so `import runpod.serverless` resolves
    runpod.__version__ = RUNPOD_VERSION  # type: ignore[attr-defined]
    serverless = types.ModuleType("runpod.serverless")

    def start(config: dict[str, Any]) -> None:
        handler = config.get("handler") if isinstance(config, dict) else None
        if not callable(handler):
            raise HandlerLoadError(
                f"handler file {path} calls runpod.serverless.start() without a callable "
                f"'handler' in its config"
            )
        captured["handler"] = handler
        captured["options"] = dict(config)

    serverless.start = start  # type: ignore[attr-defined]
    serverless.progress_update = progress_update  # type: ignore[attr-defined]
    runpod.serverless = serverless  # type: ignore[attr-defined]
    runpod.RunPodLogger = _RunPodLogger  # type: ignore[attr-defined]
    return runpod


class _RunPodLogger:
    """Stand-in for runpod.RunPodLogger, which many worker files create at import."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._log = logging.getLogger("rpq.serve.worker")

    def debug(self, message: Any, request_id: str | None = None) -> None:
        self._log.debug("%s", message)

    def info(self, message: Any, request_id: str | None = None) -> None:
        self._log.info("%s", message)

    def warn(self, message: Any, request_id: str | None = None) -> None:
        self._log.warning("%s", message)

    warning = warn

    def error(self, message: Any, request_id: str | None = None) -> None:
        self._log.error("%s", message)
