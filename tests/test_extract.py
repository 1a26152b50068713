"""Output extraction: every known worker shape, every failure, and property tests."""

from __future__ import annotations

import base64
import io
import json
import string
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from rpq.errors import RpqError
from rpq.extract import Artifact, OutputError, decode_worker_error, extract, safe_name, sniff_format


def encode(
    fmt: str, size: tuple[int, int] = (3, 2), colour: tuple[int, int, int] = (9, 99, 199)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = encode("PNG")
JPEG = encode("JPEG")
B64 = base64.b64encode(PNG).decode()


def only(artifacts: list[Artifact]) -> Artifact:
    assert len(artifacts) == 1
    return artifacts[0]


# --- the known shapes ------------------------------------------------------------------------


def test_comfyui5_base64_images_keep_order_and_filenames() -> None:
    jpeg64 = base64.b64encode(JPEG).decode()
    output = {
        "images": [
            {"filename": "ComfyUI_00001_.png", "type": "base64", "data": B64},
            {"filename": "ComfyUI_00002_.jpg", "type": "base64", "data": jpeg64},
        ],
        "errors": ["non-fatal: a node warned"],
    }
    assert extract(output) == [
        Artifact(data=PNG, url=None, name="ComfyUI_00001_.png"),
        Artifact(data=JPEG, url=None, name="ComfyUI_00002_.jpg"),
    ]


def test_comfyui5_s3_url() -> None:
    url = "https://bucket.s3.example.com/out/ComfyUI_00001_.png?X-Amz-Signature=abc"
    output = {"images": [{"filename": "ComfyUI_00001_.png", "type": "s3_url", "data": url}]}
    assert only(extract(output)) == Artifact(data=None, url=url, name="ComfyUI_00001_.png")


def test_comfyui5_s3_url_that_is_not_http_is_refused() -> None:
    output = {"images": [{"filename": "a.png", "type": "s3_url", "data": "s3://bucket/a.png"}]}
    with pytest.raises(OutputError, match="s3_url"):
        extract(output)


def test_a1111_list_of_base64_strings() -> None:
    output = {"images": [B64, B64], "parameters": {}, "info": "{}"}
    assert [a.data for a in extract(output)] == [PNG, PNG]


@pytest.mark.parametrize("key", ["image_b64", "image", "image_base64"])
def test_single_image_keys(key: str) -> None:
    output = {key: B64, "filename": "cat.png", "format": "PNG"}
    assert only(extract(output)) == Artifact(data=PNG, url=None, name="cat.png")


def test_old_comfy_success_message_base64_and_url() -> None:
    assert only(extract({"status": "success", "message": B64})).data == PNG
    url = "https://example.com/ComfyUI_1.png"
    assert only(extract({"status": "success", "message": url})).url == url


def test_nested_output_any_depth() -> None:
    assert only(extract({"output": {"image": B64}})).data == PNG
    assert only(extract({"output": {"output": {"image_b64": B64}}})).data == PNG


def test_bare_string_base64_data_uri_and_url() -> None:
    assert only(extract(B64)).data == PNG
    assert only(extract(f"data:image/png;base64,{B64}")).data == PNG
    assert only(extract("https://example.com/a.png")).url == "https://example.com/a.png"
    assert only(extract("  http://127.0.0.1:8000/a.png\n")).url == "http://127.0.0.1:8000/a.png"


def test_data_uri_allowed_wherever_base64_is() -> None:
    uri = f"data:image/png;base64,{B64}"
    assert only(extract({"images": [{"type": "base64", "data": uri}]})).data == PNG
    assert only(extract({"images": [uri]})).data == PNG
    assert only(extract({"image_base64": uri})).data == PNG


def test_runsync_style_list_of_dicts_with_urls() -> None:
    output = [{"image": "https://image.url/x.png", "seed": 46578}]
    assert only(extract(output)).url == "https://image.url/x.png"


def test_base64_tolerates_newlines_missing_padding_and_urlsafe_alphabet() -> None:
    wrapped = "\n".join(B64[i : i + 76] for i in range(0, len(B64), 76))
    assert only(extract(wrapped)).data == PNG
    assert only(extract(B64.rstrip("="))).data == PNG
    urlsafe = base64.urlsafe_b64encode(JPEG).decode()
    assert only(extract({"image": urlsafe})).data == JPEG


def test_dotted_key_selects_the_value() -> None:
    output = {"result": {"files": [{"png": "ignored"}, {"png": B64}]}, "image": "not used"}
    assert only(extract(output, key="result.files.1.png")).data == PNG
    assert only(extract({"a": [B64]}, key="a.-1")).data == PNG


def test_dotted_key_to_a_dict_searches_inside_it() -> None:
    assert only(extract({"x": {"image": B64}}, key="x")).data == PNG


@pytest.mark.parametrize(
    ("key", "message"),
    [("missing", "no 'missing' at output"), ("a.5", "index 5 is out of range"), ("a.x", "no 'x'")],
)
def test_dotted_key_errors_say_where(key: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        extract({"a": [B64]}, key=key)


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("output", [None, {}, [], "", "   "])
def test_empty_output(output: object) -> None:
    with pytest.raises(OutputError, match="empty"):
        extract(output)


def test_completed_with_worker_error_status_quotes_message_and_details() -> None:
    output = {"status": "error", "message": "Some images failed to upload", "details": ["a.png"]}
    with pytest.raises(OutputError) as caught:
        extract(output)
    assert "Some images failed to upload" in str(caught.value)
    assert "a.png" in str(caught.value)


def test_worker_error_quote_is_bounded() -> None:
    with pytest.raises(OutputError) as caught:
        extract({"status": "error", "message": "x" * 5000})
    assert len(str(caught.value)) < 300


def test_success_no_images() -> None:
    with pytest.raises(OutputError, match="workflow produced no images"):
        extract({"status": "success_no_images", "images": []})


def test_nothing_image_like_lists_the_keys() -> None:
    with pytest.raises(OutputError, match=r"keys: echo, message"):
        extract({"echo": {"name": "Justin"}, "message": "hello Justin"})


def test_completed_output_with_an_error_key() -> None:
    with pytest.raises(OutputError, match="boom"):
        extract({"error": "boom"})


@pytest.mark.parametrize("text", ["not base64 at all!", "abcde", "data:image/png;base64,@@@"])
def test_string_that_is_not_base64_uri_or_url(text: str) -> None:
    with pytest.raises(OutputError):
        extract(text)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "s3://b/a.png"])
def test_non_http_urls_are_refused(url: str) -> None:
    with pytest.raises(OutputError, match="only http"):
        extract({"image": url})


def test_base64_of_non_image_bytes_says_so() -> None:
    raw_pixels = base64.b64encode(bytes(range(200))).decode()
    with pytest.raises(OutputError, match="not an image"):
        extract(raw_pixels)


def test_output_error_is_an_rpq_error() -> None:
    assert issubclass(OutputError, RpqError)


# --- decode_worker_error ---------------------------------------------------------------------


def test_runpod_python_json_error_string() -> None:
    error = json.dumps(
        {
            "error_type": "<class 'ValueError'>",
            "error_message": "Image too large:\n4096x4096",
            "error_traceback": 'Traceback (most recent call last):\n  File "handler.py"',
            "hostname": "abc",
            "worker_id": "w1",
            "runpod_version": "1.12.0",
        }
    )
    assert decode_worker_error(error) == "ValueError: Image too large: 4096x4096"


def test_worker_error_shapes() -> None:
    assert decode_worker_error("Invalid parameter: width") == "Invalid parameter: width"
    assert decode_worker_error({"error": "Missing 'workflow' parameter"}) == (
        "Missing 'workflow' parameter"
    )
    assert decode_worker_error({"message": "no GPU"}) == "no GPU"
    assert decode_worker_error(None) == "no error message"
    assert decode_worker_error("") == "no error message"
    assert decode_worker_error("{not json") == "{not json"


def test_worker_error_never_shows_the_traceback() -> None:
    text = decode_worker_error({"error_traceback": "Traceback: secret frames", "hostname": "h"})
    assert "Traceback" not in text


@given(st.recursive(st.none() | st.text() | st.integers(), lambda c: st.dictionaries(st.text(), c)))
def test_decode_worker_error_is_one_line(error: object) -> None:
    text = decode_worker_error(error)
    assert text and "\n" not in text


# --- sniff_format and safe_name --------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        ("PNG", "png"),
        ("JPEG", "jpeg"),
        ("WEBP", "webp"),
        ("GIF", "gif"),
        ("BMP", "bmp"),
        ("TIFF", "tiff"),
    ],
)
def test_sniff_format_real_images(fmt: str, name: str) -> None:
    assert sniff_format(encode(fmt)) == name


@pytest.mark.parametrize("data", [b"", b"BM", b"BMW is a car, not a bitmap", b"hello", b"RIFF"])
def test_sniff_format_rejects_non_images(data: bytes) -> None:
    assert sniff_format(data) is None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ComfyUI_00001_.png", "ComfyUI_00001_"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\evil.png", "evil"),
        ("..", None),
        ("", None),
        (None, None),
        ("a\x00b\nc.png", "abc"),
        (".hidden.png", "hidden"),
        ("con.png", "_con"),
        ("name with spaces & stuff.jpg", "name with spaces _ stuff"),
    ],
)
def test_safe_name(name: str | None, expected: str | None) -> None:
    assert safe_name(name) == expected


@given(st.text())
def test_safe_name_never_escapes(name: str) -> None:
    result = safe_name(name)
    if result is not None:
        assert result and "/" not in result and "\\" not in result
        assert ".." not in result and not result.startswith(".")
        assert all(ch.isprintable() for ch in result)
        assert len(result) <= 101


# --- properties ------------------------------------------------------------------------------

images = st.builds(
    encode,
    st.sampled_from(["PNG", "JPEG"]),
    st.tuples(st.integers(1, 24), st.integers(1, 24)),
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)


def _b64_variants(data: bytes) -> st.SearchStrategy[str]:
    std = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    return st.sampled_from(
        [
            std,
            std.rstrip("="),
            urlsafe,
            "\n".join(std[i : i + 64] for i in range(0, len(std), 64)),
            f"data:image/png;base64,{std}",
            f"  {std}\r\n",
        ]
    )


Wrap = Callable[[str], object]
WRAPS: list[Wrap] = [
    lambda s: s,
    lambda s: {"images": [{"filename": "x.png", "type": "base64", "data": s}]},
    lambda s: {"images": [s]},
    lambda s: {"image_b64": s},
    lambda s: {"image": s},
    lambda s: {"image_base64": s},
    lambda s: {"status": "success", "message": s},
    lambda s: {"output": {"image": s}},
    lambda s: {"output": s},
    lambda s: [s],
]


@settings(max_examples=150, deadline=None)
@given(data=st.data(), image=images, wrap=st.sampled_from(WRAPS))
def test_any_image_in_any_shape_comes_back_byte_identical(
    data: st.DataObject, image: bytes, wrap: Wrap
) -> None:
    encoded = data.draw(_b64_variants(image))
    artifacts = extract(wrap(encoded))
    assert [a.data for a in artifacts] == [image]


OUTPUT_KEYS = [
    "images",
    "image",
    "image_b64",
    "message",
    "status",
    "output",
    "error",
    "data",
    "type",
    "filename",
    "x",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from([B64, "https://x.y/z.png", "file:///x", "data:,", "error", "success"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(OUTPUT_KEYS) | st.text(string.printable, max_size=5),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(output=json_values, key=st.none() | st.text("ab01.-", max_size=6))
def test_random_json_only_raises_output_error(output: object, key: str | None) -> None:
    try:
        artifacts = extract(output, key=key)
    except OutputError as exc:
        assert str(exc)
        return
    assert artifacts
    for artifact in artifacts:
        assert (artifact.data is None) != (artifact.url is None)
        if artifact.data is not None:
            assert sniff_format(artifact.data) is not None
        if artifact.url is not None:
            assert artifact.url.lower().startswith(("http://", "https://"))
