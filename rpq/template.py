"""Request templates: turn one prepared image into the JSON body POSTed to /run."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rpq.errors import UsageError
from rpq.images import Prepared

# Placeholders, replaced inside JSON string values (never in keys):
#   {{image_base64}}    raw base64 of the bytes sent
#   {{image_data_uri}}  data:<mime>;base64,<...>
#   {{filename}}        file name with extension, e.g. "a b.jpg"
#   {{stem}}            file name without its last extension, e.g. "a b" (".hidden" keeps it all)
#   {{rel}}             path relative to the batch root, e.g. "sub/a b.jpg"
#   {{mime}}            MIME type of the bytes sent, e.g. "image/png"
#   {{image_url}}       (bucket inputs) a presigned GET URL of the object: no bytes sent
#   {{upload_name}}     (workflows) the name the image is uploaded to ComfyUI under
PLACEHOLDERS = ("image_base64", "image_data_uri", "image_url", "filename", "stem", "rel", "mime")
IMAGE_PLACEHOLDERS = frozenset({"image_base64", "image_data_uri", "image_url"})
#: Placeholders whose value needs the image's bytes (read, checked, maybe re-encoded).
BYTES_PLACEHOLDERS = frozenset({"image_base64", "image_data_uri", "upload_name"})
WORKFLOW_PLACEHOLDERS = (*PLACEHOLDERS, "upload_name")
# Values that differ from file to file for the same bytes (mime follows the content).
PER_FILE_PLACEHOLDERS = ("filename", "stem", "rel", "upload_name")

# Whitespace inside the braces is tolerated: "{{ filename }}" works too.
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_POLICY_CACHE_SIZE = 8

_EXPORT_HINT = (
    "In ComfyUI use Workflow > Export (API) (older menus: enable 'Dev mode' in Settings, "
    "then 'Save (API Format)'), and pass that file."
)


class RequestTemplate:
    """A request body with placeholders, compiled once so that each render is a few joins.

    Build one with `default()`, `from_file()` or `from_workflow()`. `warning` is a sentence
    the caller should show the user (None when there is nothing to say).
    """

    def __init__(self, body: dict[str, Any], *, source: str, warning: str | None = None) -> None:
        self._body = body
        self.source = source
        self.warning = warning
        self._compiled: dict[str, _Compiled] = {}
        self.names = frozenset(m.group(1) for _, text, _ in _walk_strings(body)
                               for m in _PLACEHOLDER.finditer(text))

    @property
    def needs_bytes(self) -> bool:
        """Whether a request carries the image itself (else only its URL and names)."""
        return bool(self.names & BYTES_PLACEHOLDERS)

    @property
    def needs_url(self) -> bool:
        return "image_url" in self.names

    # ----------------------------------------------------------------- construction

    @classmethod
    def default(cls) -> RequestTemplate:
        """{"input": {"image": "{{image_base64}}"}}: what most image workers expect."""
        return cls({"input": {"image": "{{image_base64}}"}}, source="<default template>")

    @classmethod
    def from_file(cls, path: Path) -> RequestTemplate:
        """Load a JSON template.

        A top-level object with an "input" key is the whole request body (it may also carry
        "policy", "webhook", ...); anything else is the input alone and is sent as
        {"input": <it>}. A worker whose input itself has an "input" key therefore needs the
        whole-body form. The template must contain {{image_base64}} or {{image_data_uri}}.
        """
        doc = _load_json(path)
        body = doc if isinstance(doc, dict) and "input" in doc else {"input": doc}
        _check_policy(body, path)
        names = _check_placeholders(body, str(path), PLACEHOLDERS)
        if not names & IMAGE_PLACEHOLDERS:
            raise UsageError(
                f"{path} has no image placeholder, so every image would send the same "
                'request. Put "{{image_base64}}" (or "{{image_data_uri}}", or "{{image_url}}" '
                'for a bucket input) where the worker expects the image, e.g. '
                '{"input": {"image": "{{image_base64}}"}}.'
            )
        return cls(body, source=str(path))

    @classmethod
    def from_workflow(cls, path: Path, image_node: str | None = None) -> RequestTemplate:
        """Load a ComfyUI API-format workflow and build worker-comfyui (>= 5) requests.

        Each request is {"input": {"workflow": ..., "images": [{"name", "image"}]}} with
        the image uploaded under a name unique to its content, and the LoadImage node's
        `inputs.image` set to that name. The file may also be a whole worker-comfyui request
        body; its other fields (and any images it already lists) are kept. With several
        LoadImage nodes and no `image_node`, the first by node id is used and `warning` says
        so.
        """
        outer, extra, workflow = _unwrap_workflow(_load_json(path), path)
        _check_api_format(workflow, path)
        workflow = copy.deepcopy(workflow)
        node_id, warning = _pick_image_node(workflow, path, image_node)
        workflow[node_id]["inputs"]["image"] = "{{upload_name}}"

        images = extra.pop("images", None) or []
        if not isinstance(images, list):
            raise UsageError(f"{path}: input.images must be a list of {{name, image}} objects.")
        body = {
            **outer,
            "input": {
                **extra,
                "workflow": workflow,
                "images": [*images, {"name": "{{upload_name}}", "image": "{{image_base64}}"}],
            },
        }
        _check_policy(body, path)
        _check_placeholders(body, str(path), WORKFLOW_PLACEHOLDERS)
        return cls(body, source=str(path), warning=warning)

    # ----------------------------------------------------------------- rendering

    def render(self, prepared: Prepared, *, policy: dict[str, Any] | None = None,
               url: str | None = None) -> bytes:
        """The JSON request body for one image, ready to POST (compact, ASCII).

        `policy`, when given, is merged into the body's "policy"; its keys win over the
        template's own. `url` is what {{image_url}} becomes.
        """
        return bytes(self.render_body(prepared, policy=policy, url=url))

    def render_body(self, prepared: Prepared, *, policy: dict[str, Any] | None = None,
                    url: str | None = None) -> RequestBody:
        """`render`'s body as its pieces, to send without joining them."""
        compiled = self._compile(policy)
        values = _Values(prepared, elide=False, url=url)
        return RequestBody(compiled.pieces(values.get))

    def render_preview(
        self, prepared: Prepared, *, policy: dict[str, Any] | None = None,
        url: str | None = None,
    ) -> dict[str, Any]:
        """The body `render` would send, with base64 shown as "<base64: N bytes>"."""
        compiled = self._compile(policy)
        values = _Values(prepared, elide=True, url=url)
        result: dict[str, Any] = json.loads(compiled.join(values.get))
        return result

    def body_size(self, prepared: Prepared, *, policy: dict[str, Any] | None = None,
                  url: str | None = None) -> int:
        """Exact length in bytes of `render(prepared, policy=policy)`, without building it."""
        compiled = self._compile(policy)
        values = _Values(prepared, elide=False, url=url)
        return compiled.literal_size + sum(values.size(name) for name in compiled.names)

    def fingerprint(self) -> str:
        """sha256 of the template's content: changes exactly when the requests would change.

        A CLI `policy` is not part of it; the caller adds that to its key if it matters.
        """
        canonical = json.dumps(
            {"rpq-template": 1, "body": self._body},
            sort_keys=True,
            ensure_ascii=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    def per_file(self, rel: str) -> str:
        """The per-file values a request carries besides the image ("" when it has none).

        Two files with the same bytes send different requests when the template names them:
        these values are part of what identifies a request, next to its content.
        """
        used = [name for name in PER_FILE_PLACEHOLDERS if name in self.names]
        if not used:
            return ""
        filename = file_name(rel)
        values = {"filename": filename, "stem": file_stem(filename), "rel": rel,
                  "upload_name": _safe_stem(rel)}
        return json.dumps([values[name] for name in used], ensure_ascii=True)

    def __repr__(self) -> str:
        return f"RequestTemplate(source={self.source!r})"

    def _compile(self, policy: dict[str, Any] | None) -> _Compiled:
        key = "" if policy is None else json.dumps(policy, sort_keys=True, default=str)
        compiled = self._compiled.get(key)
        if compiled is None:
            if len(self._compiled) >= _POLICY_CACHE_SIZE:
                self._compiled.clear()
            compiled = _Compiled.build(self._body, policy)
            self._compiled[key] = compiled
        return compiled


class _Compiled:
    """The body as JSON text cut at each placeholder: literals[0] name[0] literals[1] ..."""

    def __init__(self, literals: list[bytes], names: list[str]) -> None:
        self.literals = literals
        self.names = names
        self.literal_size = sum(len(part) for part in literals)

    @classmethod
    def build(cls, body: dict[str, Any], policy: dict[str, Any] | None) -> _Compiled:
        if policy is not None and not isinstance(policy, dict):
            raise UsageError(f"policy must be a JSON object, not {type(policy).__name__}.")
        plain = json.dumps([body, policy], ensure_ascii=True, default=str)
        nonce = secrets.token_hex(8)
        while nonce in plain:
            nonce = secrets.token_hex(8)
        # A sentinel is plain ASCII, so json.dumps leaves it as is and it can be found again.
        doc = _map_strings(
            body, lambda s: _PLACEHOLDER.sub(lambda m: f"@@{nonce}:{m.group(1)}@@", s)
        )
        if policy:
            own = doc.get("policy") or {}
            doc["policy"] = {**own, **policy}
        text = json.dumps(doc, ensure_ascii=True, separators=(",", ":"))
        pieces = re.split(f"@@{nonce}:([A-Za-z0-9_]+)@@", text)
        return cls([p.encode("ascii") for p in pieces[0::2]], pieces[1::2])

    def pieces(self, value: Callable[[str], bytes]) -> list[bytes]:
        out = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            out.append(value(name))
            out.append(literal)
        return out

    def join(self, value: Callable[[str], bytes]) -> bytes:
        return b"".join(self.pieces(value))


class RequestBody:
    """A request body as the pieces it is made of: the template's text around each value.

    It is sent piece by piece under its Content-Length (requests streams an iterable that has
    a length), never joined: the join would copy the image's base64 once more, 9 MB for a
    24 MP photo sent as it is, while the pieces are held too. Iterable any number of times,
    so a submit can be retried with it.
    """

    __slots__ = ("parts", "size")

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = tuple(parts)
        self.size = sum(len(part) for part in self.parts)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.parts)

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)


class _Values:
    """Placeholder values for one image, already escaped for use inside a JSON string."""

    def __init__(self, prepared: Prepared, *, elide: bool, url: str | None = None) -> None:
        self.prepared = prepared
        self.elide = elide
        self.url = url
        self._b64: bytes | None = None

    def _base64(self) -> bytes:
        if self._b64 is None:
            if self.elide:
                size = _b64_len(len(self.prepared.data))
                self._b64 = f"<base64: {size} bytes>".encode("ascii")
            else:
                self._b64 = base64.b64encode(self.prepared.data)
        return self._b64

    def get(self, name: str) -> bytes:
        p = self.prepared
        if name == "image_base64":
            return self._base64()
        if name == "image_data_uri":
            return _data_uri_prefix(p.mime) + self._base64()
        return _json_inner(self.text(name))

    def text(self, name: str) -> str:
        p = self.prepared
        if name == "filename":
            return file_name(p.source.rel)
        if name == "stem":
            return file_stem(file_name(p.source.rel))
        if name == "rel":
            return p.source.rel
        if name == "mime":
            return p.mime
        if name == "image_url":
            if self.url is None:
                raise UsageError("{{image_url}} needs the images in a bucket (s3://...): a "
                                 "local file has no URL the worker could fetch. Use "
                                 "{{image_base64}} for local folders.")
            return "<presigned URL>" if self.elide else self.url
        if name == "upload_name":
            return upload_name(p)
        raise KeyError(name)

    def size(self, name: str) -> int:
        b64 = _b64_len(len(self.prepared.data))
        if name == "image_base64":
            return b64
        if name == "image_data_uri":
            return len(_data_uri_prefix(self.prepared.mime)) + b64
        return len(self.get(name))


def upload_name(prepared: Prepared) -> str:
    """The file name an image is uploaded to ComfyUI under: safe characters, unique content.

    The digest part keeps two inputs named alike (a/x.png, b/x.png) apart on one worker.
    """
    return f"{_safe_stem(prepared.source.rel)}-{prepared.digest[:12]}.{prepared.ext}"


def _safe_stem(rel: str) -> str:
    stem = _UNSAFE_NAME_CHARS.sub("_", file_stem(file_name(rel))).strip("._")
    return stem[:60] or "image"


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def _data_uri_prefix(mime: str) -> bytes:
    return b"data:" + _json_inner(mime) + b";base64,"


def file_name(rel: str) -> str:
    """The last part of `rel` exactly as it is: a path library would read "." as no name."""
    return rel.rsplit("/", 1)[-1]


def file_stem(name: str) -> str:
    """`name` without its last extension. Leading dots are part of the name, not an
    extension (".hidden", "..", "."), and neither is a dot at the end ("a.")."""
    dots = len(name) - len(name.lstrip("."))
    cut = name.rfind(".", dots)
    return name[:cut] if 0 < cut < len(name) - 1 else name


def _json_inner(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=True)[1:-1].encode("ascii")


def _map_strings(node: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(node, dict):
        return {key: _map_strings(value, fn) for key, value in node.items()}
    if isinstance(node, list):
        return [_map_strings(value, fn) for value in node]
    if isinstance(node, str):
        return fn(node)
    return node


def _walk_strings(node: Any, where: str = "") -> Iterator[tuple[str, str, bool]]:
    """Every string in `node` as (location, text, is_key)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            yield here, str(key), True
            yield from _walk_strings(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{where}[{i}]")
    elif isinstance(node, str):
        yield where, node, False


def _check_placeholders(body: Any, source: str, allowed: tuple[str, ...]) -> set[str]:
    """The placeholder names used in `body`; UsageError for unknown ones or ones in keys."""
    known = ", ".join("{{" + name + "}}" for name in allowed)
    used: set[str] = set()
    for where, text, is_key in _walk_strings(body):
        for match in _PLACEHOLDER.finditer(text):
            name = match.group(1)
            if is_key:
                raise UsageError(
                    f"{source}: placeholder {match.group(0)} is in a key at {where}; "
                    "placeholders are only replaced in string values."
                )
            if name not in allowed:
                raise UsageError(
                    f"{source}: unknown placeholder {match.group(0)} at {where}. "
                    f"Known placeholders: {known}."
                )
            used.add(name)
    return used


def _check_policy(body: dict[str, Any], path: Path) -> None:
    if "policy" in body and not isinstance(body["policy"], dict):
        raise UsageError(f'{path}: "policy" must be a JSON object.')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _load_json(path: Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"{path} not found.") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path} is not UTF-8 text; save it as UTF-8 JSON.") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path} ({exc.strerror or exc}).") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}."
        ) from None
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}; use null or a number.") from None


# ----------------------------------------------------------------- ComfyUI workflows


def _check_api_format(workflow: Any, path: Path) -> None:
    if (
        isinstance(workflow, dict)
        and isinstance(workflow.get("nodes"), list)
        and isinstance(workflow.get("links"), list)
    ):
        raise UsageError(f"{path} is a ComfyUI UI export, not API format. {_EXPORT_HINT}")
    if not isinstance(workflow, dict) or not workflow:
        raise UsageError(
            f"{path} is not a ComfyUI API-format workflow (expected an object of "
            f'node id -> {{"class_type", "inputs"}}). {_EXPORT_HINT}'
        )
    for node_id, node in workflow.items():
        if (
            not isinstance(node, dict)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs"), dict)
        ):
            raise UsageError(
                f'{path}: node "{node_id}" lacks "class_type" or "inputs", so this is not '
                f"an API-format workflow. {_EXPORT_HINT}"
            )


def _unwrap_workflow(doc: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Split a file into (body fields besides input, input fields besides workflow, workflow).

    The file may be the workflow itself, {"workflow": ...} or {"input": {"workflow": ...}}.
    Node ids are arbitrary strings, so a key is only taken as a wrapper when its value is
    not a node.
    """
    if not isinstance(doc, dict):
        return {}, {}, doc
    inner = doc.get("input")
    if isinstance(inner, dict) and "class_type" not in inner:
        if "workflow" not in inner:
            raise UsageError(
                f"{path} looks like a request body but has no input.workflow. "
                f"Pass a ComfyUI API-format workflow. {_EXPORT_HINT}"
            )
        extra = dict(inner)
        return {k: v for k, v in doc.items() if k != "input"}, extra, extra.pop("workflow")
    wrapped = doc.get("workflow")
    if isinstance(wrapped, dict) and "class_type" not in wrapped:
        extra = dict(doc)
        return {}, extra, extra.pop("workflow")
    return {}, {}, doc


def _node_sort_key(node_id: str) -> tuple[Any, ...]:
    # ComfyUI ids are numbers as strings ("10"), or "10:3" inside subgraphs: sort numerically.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in node_id.split(":"))


def _describe_node(workflow: dict[str, Any], node_id: str) -> str:
    title = (workflow[node_id].get("_meta") or {}).get("title")
    return f'"{node_id}" ({title})' if isinstance(title, str) and title else f'"{node_id}"'


def _pick_image_node(
    workflow: dict[str, Any], path: Path, image_node: str | None
) -> tuple[str, str | None]:
    """The id of the node that receives the image, and a warning for the user, if any."""
    loaders = sorted(
        (nid for nid, node in workflow.items() if node["class_type"] == "LoadImage"),
        key=_node_sort_key,
    )
    listed = ", ".join(_describe_node(workflow, nid) for nid in loaders) or "none"
    if image_node is not None:
        node_id = str(image_node)
        node = workflow.get(node_id)
        if node is None:
            raise UsageError(f'{path} has no node "{node_id}". LoadImage nodes in it: {listed}.')
        if node["class_type"] != "LoadImage" and "image" not in node["inputs"]:
            raise UsageError(
                f'{path}: node "{node_id}" ({node["class_type"]}) has no "image" input. '
                f"LoadImage nodes in it: {listed}."
            )
        if isinstance(node["inputs"].get("image"), list):
            raise UsageError(
                f'{path}: the "image" input of node "{node_id}" is wired to another node; '
                "pick the node that loads the image from a file."
            )
        return node_id, None
    if not loaders:
        raise UsageError(
            f"{path}: the workflow has no LoadImage node to feed the image to. Add a Load "
            "Image node where the input image goes and export the workflow again, or name "
            "the node that takes the image."
        )
    chosen = loaders[0]
    warning = None
    if len(loaders) > 1:
        warning = (
            f"{path} has {len(loaders)} LoadImage nodes ({listed}); each image goes to node "
            f"{_describe_node(workflow, chosen)}, and the others keep the file names they "
            "have, which must exist on the worker. Name the image node to choose another."
        )
    return chosen, warning
