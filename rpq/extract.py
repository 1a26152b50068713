"""Find the image(s) in a worker's job output: pure, no network, no file writes."""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from rpq.errors import RpqError
from rpq.images import sniff as sniff_format
from rpq.text import clip, one_line

# One magic-byte rule for inputs and results (BigTIFF too): a result is decoded before saving.
__all__ = ["Artifact", "OutputError", "decode_worker_error", "extract", "safe_name", "sniff_format"]

_QUOTE_LIMIT = 200
_ONE_LINE_LIMIT = 500
# Keys that hold a single image, in the order the known BiRefNet/rembg workers use them.
_SINGLE_IMAGE_KEYS = ("image_b64", "image", "image_base64")
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_WHITESPACE = re.compile(r"\s+")
_INDEX = re.compile(r"-?[0-9]+")
_STD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
)


@dataclass(frozen=True)
class Artifact:
    """One image found in an output: inline bytes or a URL to download, plus the worker's name."""

    data: bytes | None
    url: str | None
    name: str | None


class OutputError(RpqError):
    """A COMPLETED job whose output holds no usable image; the message says what was found."""


def extract(output: object, key: str | None = None) -> list[Artifact]:
    """Return the images in a job's output, or raise OutputError saying why there are none.

    `key` is a dotted path (`a.b.0.c`) that picks the value to decode instead of searching.
    """
    if _is_empty(output):
        raise OutputError(f"the job completed but its output is empty ({_quote(output)})")
    if key is not None:
        return _from_value(_select(output, key), where=f"output.{key}")
    return _from_value(output, where="output")


def decode_worker_error(error: object) -> str:
    """One line saying what the worker reported, from whatever shape its `error` field has."""
    if error is None:
        return "no error message"
    if isinstance(error, str):
        parsed = _maybe_json_object(error)
        text = _error_from_mapping(parsed) if parsed is not None else error
    elif isinstance(error, Mapping):
        text = _error_from_mapping(error)
    else:
        text = _compact_json(error)
    return one_line(text, _ONE_LINE_LIMIT) or "no error message"


def safe_name(name: str | None) -> str | None:
    """Reduce an untrusted filename to a safe stem: no folders, no dots, no control characters.

    Idempotent: a stem it returns comes back unchanged, so a name never shrinks on a second pass.
    """
    if not name or not isinstance(name, str):
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    # Windows drops trailing dots and spaces, so `x.png.` names the same file as `x.png`.
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").rstrip(". ")
    stem, dot, _ext = base.rpartition(".")
    if dot and stem.strip(". "):
        base = stem
    # Inner dots become `_`: a dot left in the stem would read as an extension next time.
    cleaned = "".join(ch if ch.isalnum() or ch in "-_ " else "_" for ch in base.strip(". "))
    cleaned = cleaned[:100].rstrip(" ")
    if not cleaned:
        return None
    if cleaned.lower() in _WINDOWS_RESERVED:
        cleaned = "_" + cleaned
    return cleaned


# --- the search ------------------------------------------------------------------------------


def _from_value(value: object, where: str) -> list[Artifact]:
    if isinstance(value, str):
        return [_from_string(value, where)]
    if isinstance(value, Mapping):
        return _from_mapping(value, where)
    if isinstance(value, list):
        return _from_list(value, where)
    raise OutputError(f"{where} is {_quote(value)}, not an image, a base64 string or a URL")


def _from_list(items: list[object], where: str) -> list[Artifact]:
    if not items:
        raise OutputError(f"{where} is an empty list: the worker returned no images")
    found: list[Artifact] = []
    for index, item in enumerate(items):
        found.extend(_from_value(item, f"{where}[{index}]"))
    return found


def _from_mapping(out: Mapping[str, object], where: str) -> list[Artifact]:
    status = out.get("status")
    if status == "error":
        raise OutputError(
            f"the job completed but the worker reported an error: {_worker_says(out)}"
        )
    if status == "success_no_images":
        raise OutputError("the workflow produced no images (worker status 'success_no_images')")
    images = out.get("images")
    if isinstance(images, list) and images:
        return [_from_image_entry(entry, f"{where}.images[{i}]") for i, entry in enumerate(images)]
    for name in _SINGLE_IMAGE_KEYS:
        value = out.get(name)
        if isinstance(value, str) and value.strip():
            return [_from_string(value, f"{where}.{name}", _name_of(out))]
    message = out.get("message")
    if isinstance(message, str) and message.strip():
        if status == "success":
            return [_from_string(message, f"{where}.message")]
        if status is None:
            # Without the old comfy worker's status, a message may just be text: only take it
            # when it really is an image or a URL.
            try:
                return [_from_string(message, f"{where}.message")]
            except OutputError:
                pass
    nested = out.get("output")
    if nested is not None and not _is_empty(nested):
        return _from_value(nested, f"{where}.output")
    if "error" in out:
        raise OutputError(
            f"the job completed but the worker reported an error: {_worker_says(out)}"
        )
    if isinstance(images, list):
        raise OutputError(f"{where}.images is empty: the worker returned no images")
    keys = ", ".join(sorted(str(k) for k in out)) or "none"
    raise OutputError(
        f"found no image in {where} (keys: {clip(keys, _QUOTE_LIMIT)}); "
        "pass --output-key with the dotted path of the image, e.g. --output-key result.0.png"
    )


def _from_image_entry(entry: object, where: str) -> Artifact:
    if isinstance(entry, str):
        return _from_string(entry, where)
    if not isinstance(entry, Mapping):
        raise OutputError(f"{where} is {_quote(entry)}, not an image")
    name = _name_of(entry)
    data = entry.get("data", entry.get("image"))
    if not isinstance(data, str) or not data.strip():
        keys = ", ".join(sorted(str(k) for k in entry))
        raise OutputError(f"{where} has no 'data' string (keys: {clip(keys, _QUOTE_LIMIT)})")
    kind = entry.get("type")
    if kind == "s3_url" and not _is_http_url(data.strip()):
        raise OutputError(
            f"{where} is of type s3_url but its data is not an http(s) URL: {_quote(data)}"
        )
    return _from_string(data, where, name)


def _from_string(text: str, where: str, name: str | None = None) -> Artifact:
    stripped = text.strip()
    if not stripped:
        raise OutputError(f"{where} is an empty string")
    if stripped[:5].lower() == "data:":
        return Artifact(
            data=_check_image(_decode_data_uri(stripped, where), where, stripped),
            url=None,
            name=name,
        )
    if _is_http_url(stripped):
        return Artifact(data=None, url=stripped, name=name)
    scheme = _SCHEME.match(stripped)
    if scheme and (scheme.group(1).lower() in ("file", "ftp", "s3", "gs") or "://" in stripped):
        raise OutputError(
            f"{where} is a {scheme.group(1)}: URL ({_quote(stripped)}); "
            "only http(s) URLs are downloaded"
        )
    raw = _b64decode(stripped)
    if raw is None:
        raise OutputError(
            f"{where} is neither base64, a data URI nor an http(s) URL: {_quote(stripped)}"
        )
    return Artifact(data=_check_image(raw, where, stripped), url=None, name=name)


def _decode_data_uri(uri: str, where: str) -> bytes:
    header, comma, payload = uri.partition(",")
    if not comma:
        raise OutputError(f"{where} is a data URI without a comma: {_quote(uri)}")
    if header.lower().endswith(";base64"):
        raw = _b64decode(payload)
        if raw is None:
            raise OutputError(f"{where} is a data URI whose base64 is invalid: {_quote(uri)}")
        return raw
    return unquote_to_bytes(payload)


def _strict_b64decode(text: str) -> bytes:
    """base64.b64decode(text, validate=True), without its ASCII copy of `text` on 3.11+.

    binascii reads an ASCII str in place; base64 first encodes it to bytes, one more buffer
    the size of the result's text (9 MB for a 24 MP photo, fresh pages to fault in).
    """
    if sys.version_info >= (3, 11):
        return binascii.a2b_base64(text, strict_mode=True)
    return base64.b64decode(text, validate=True)


def _b64decode(text: str) -> bytes | None:
    """Strict base64 (either alphabet); whitespace and missing padding are forgiven."""
    if len(text) % 4 == 0 and text and text.find("=", 0, len(text) - 2) < 0:
        # What workers send: one line, standard alphabet, padded (no "=" before the last two
        # characters, looked for in place: a slice would copy the text). One pass in C,
        # instead of the regular expressions below (a 10 MB image costs them about 80 ms).
        try:
            return _strict_b64decode(text)
        except (binascii.Error, ValueError):
            pass  # whitespace, the URL-safe alphabet, or not base64: the careful way
    compact = _WHITESPACE.sub("", text)
    if not compact or len(compact.rstrip("=")) % 4 == 1:
        return None
    padded = compact + "=" * (-len(compact) % 4)
    if _STD_B64.fullmatch(padded):
        alt = None
    elif _URLSAFE_B64.fullmatch(padded):
        alt = b"-_"
    else:
        return None
    try:
        return base64.b64decode(padded, altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_image(raw: bytes, where: str, text: str) -> bytes:
    if sniff_format(raw) is None:
        raise OutputError(
            f"{where} decodes to {len(raw)} bytes that are not an image "
            f"(starts with {raw[:16]!r}; the worker may return raw pixels or text): "
            f"{_quote(clip(text, 60))}"
        )
    return raw


def _select(output: object, key: str) -> object:
    """Follow a dotted path; numeric parts index lists."""
    current = output
    walked: list[str] = []
    for part in key.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and _INDEX.fullmatch(part):
            index = int(part)
            if not -len(current) <= index < len(current):
                raise OutputError(
                    f"output key {key!r}: index {part} is out of range at "
                    f"output{_path(walked)} (a list of {len(current)})"
                )
            current = current[index]
        else:
            raise OutputError(
                f"output key {key!r}: no {part!r} at output{_path(walked)} ({_describe(current)})"
            )
        walked.append(part)
    if _is_empty(current):
        raise OutputError(f"output key {key!r} selects an empty value ({_quote(current)})")
    return current


# --- helpers ---------------------------------------------------------------------------------


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (Mapping, list)) and not value


def _is_http_url(text: str) -> bool:
    if not text[:8].lower().startswith(("http://", "https://")) or any(c.isspace() for c in text):
        return False
    try:
        return bool(urlsplit(text).hostname)
    except ValueError:
        return False


def _name_of(entry: Mapping[str, object]) -> str | None:
    name = entry.get("filename", entry.get("name"))
    return name if isinstance(name, str) and name else None


def _worker_says(out: Mapping[str, object]) -> str:
    text = decode_worker_error(out.get("message") or out.get("error") or dict(out))
    details = out.get("details")
    if details:
        text = f"{text} (details: {_compact_json(details)})"
    return clip(text, _QUOTE_LIMIT)


def _error_from_mapping(err: Mapping[str, object]) -> str:
    message = next(
        (err[k] for k in ("error_message", "error", "message") if err.get(k) not in (None, "")),
        None,
    )
    if isinstance(message, str) and (nested := _maybe_json_object(message)) is not None:
        message = _error_from_mapping(nested)
    if isinstance(message, Mapping):
        message = _error_from_mapping(message)
    elif message is not None and not isinstance(message, str):
        message = _compact_json(message)
    kind = _error_type(err.get("error_type"))
    if kind and message:
        return f"{kind}: {message}"
    if kind or message:
        return str(kind or message)
    rest = {k: v for k, v in err.items() if "traceback" not in str(k)}
    return _compact_json(rest)


def _error_type(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    match = re.fullmatch(r"<class '([^']+)'>", value.strip())
    return (match.group(1) if match else value).rsplit(".", 1)[-1]


def _maybe_json_object(text: str) -> Mapping[str, object] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, Mapping) else None


def _compact_json(value: object) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    except ValueError:
        return repr(value)


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else _compact_json(value)
    clipped = clip(text, _QUOTE_LIMIT)
    return repr(clipped) if isinstance(value, str) else clipped


def _describe(value: object) -> str:
    if isinstance(value, Mapping):
        return "keys: " + clip(", ".join(sorted(str(k) for k in value)) or "none", _QUOTE_LIMIT)
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"


def _path(parts: list[str]) -> str:
    return "".join(f".{p}" for p in parts)
