"""Pinned decisions of output extraction: the exact words a user reads when an output holds
no usable image (each names where it looked and what it found), the worker's error as one line,
and the file names rpq accepts from a worker."""

from __future__ import annotations

import base64

import pytest
from imaging import png_bytes

from rpq.extract import OutputError, decode_worker_error, extract, safe_name

B64 = base64.b64encode(png_bytes(0)).decode()
TEXT_B64 = base64.b64encode(b"just some text, not a picture").decode()


@pytest.mark.parametrize(("output", "key", "message"), [
    ('', None,
     "the job completed but its output is empty ('')"),
    ({}, None,
     'the job completed but its output is empty ({})'),
    ([], None,
     'the job completed but its output is empty ([])'),
    (5, None,
     'output is 5, not an image, a base64 string or a URL'),
    (True, None,
     'output is true, not an image, a base64 string or a URL'),
    ([[]], None,
     'output[0] is an empty list: the worker returned no images'),
    ({'images': []}, None,
     'output.images is empty: the worker returned no images'),
    ({'images': [5]}, None,
     'output.images[0] is 5, not an image'),
    ({'images': [{'filename': 'a.png', 'type': 'base64'}]}, None,
     "output.images[0] has no 'data' string (keys: filename, type)"),
    ({'images': [{'type': 'base64', 'data': '  '}]}, None,
     "output.images[0] has no 'data' string (keys: data, type)"),
    ({'images': [{'type': 's3_url', 'data': 'file:///etc/passwd'}]}, None,
     "output.images[0] is of type s3_url but its data is not an http(s) URL: 'file:///etc/passwd'"),
    ({'status': 'error', 'message': 'CUDA out of memory'}, None,
     'the job completed but the worker reported an error: CUDA out of memory'),
    ({'status': 'error', 'error': 'bad workflow'}, None,
     'the job completed but the worker reported an error: bad workflow'),
    ({'status': 'error', 'details': {'node': 7}}, None,
     'the job completed but the worker reported an error: '
     '{"status":"error","details":{"node":7}} (details: {"node":7})'),
    ({'status': 'error', 'message': 'boom', 'error': 'other', 'details': ['x']}, None,
     'the job completed but the worker reported an error: boom (details: ["x"])'),
    ({'status': 'success_no_images'}, None,
     "the workflow produced no images (worker status 'success_no_images')"),
    ({'error': 'model not loaded'}, None,
     'the job completed but the worker reported an error: model not loaded'),
    ({'result': 1, 'other': [1]}, None,
     'found no image in output (keys: other, result); pass --output-key with the '
     'dotted path of the image, e.g. --output-key result.0.png'),
    ({'status': 'success', 'message': 'hello'}, None,
     "output.message is neither base64, a data URI nor an http(s) URL: 'hello'"),
    ({'message': 'hello'}, None,
     'found no image in output (keys: message); pass --output-key with the dotted '
     'path of the image, e.g. --output-key result.0.png'),
    ({'image': 'ftp://host/x.png'}, None,
     "output.image is a ftp: URL ('ftp://host/x.png'); only http(s) URLs are downloaded"),
    ({'image': 'data:image/png,abc'}, None,
     "output.image decodes to 3 bytes that are not an image (starts with b'abc'; the "
     "worker may return raw pixels or text): 'data:image/png,abc'"),
    ({'image': 'data:image/png;base64,@@@'}, None,
     "output.image is a data URI whose base64 is invalid: 'data:image/png;base64,@@@'"),
    ({'image': 'data:image/png;base64'}, None,
     "output.image is a data URI without a comma: 'data:image/png;base64'"),
    ({'a': {'b': [1]}}, 'a.b.3',
     "output key 'a.b.3': index 3 is out of range at output.a.b (a list of 1)"),
    ({'a': {'b': [1]}}, 'a.c',
     "output key 'a.c': no 'c' at output.a (keys: b)"),
    ({'a': {'b': [1]}}, 'a.b.0.x',
     "output key 'a.b.0.x': no 'x' at output.a.b.0 (a int)"),
    ({'a': {'b': ''}}, 'a.b',
     "output key 'a.b' selects an empty value ('')"),
    ({'a': 5}, 'a.x',
     "output key 'a.x': no 'x' at output.a (a int)"),
    ({'a': [1, 2]}, 'a.x',
     "output key 'a.x': no 'x' at output.a (a list of 2)"),
    ({'a': {}}, 'a.q',
     "output key 'a.q': no 'q' at output.a (keys: none)"),
    ({'a': {'z': 1, 'y': 2}}, 'a.q',
     "output key 'a.q': no 'q' at output.a (keys: y, z)"),
    ({"image": TEXT_B64}, None,
     "output.image decodes to 29 bytes that are not an image (starts with "
     "b'just some text, '; the worker may return raw pixels or text): " + repr(TEXT_B64)),
    ("x" * 300, None,
     "output decodes to 225 bytes that are not an image (starts with "
     + repr(base64.b64decode("x" * 300)[:16])
     + "; the worker may return raw pixels or text): '" + "x" * 59 + "…'"),
])
def test_what_the_user_reads_when_there_is_no_image(output: object, key: str | None,
                                                     message: str) -> None:
    with pytest.raises(OutputError) as caught:
        extract(output, key)
    assert str(caught.value) == message


@pytest.mark.parametrize(("error", "line"), [
    (None, 'no error message'),
    ('', 'no error message'),
    ('plain text', 'plain text'),
    ('  {"error_type": "<class \'ValueError\'>", "error_message": "bad"}', 'ValueError: bad'),
    ({'error_message': 'x', 'error_type': 'builtins.KeyError'}, 'KeyError: x'),
    ({'error': {'message': 'deep'}}, 'deep'),
    ([1, 2], '[1,2]'),
    ({'error_traceback': 'tb', 'hostname': 'h'}, '{"hostname":"h"}'),
    ({'message': 5}, '5'),
    ('{"error": "{\\"error_message\\": \\"nested\\"}"}', 'nested'),
])
def test_the_workers_error_in_one_line(error: object, line: str) -> None:
    assert decode_worker_error(error) == line


def test_an_image_entry_may_name_its_data_image() -> None:
    [artifact] = extract({"images": [{"filename": "cut.png", "image": B64}]})
    assert artifact.data == png_bytes(0) and artifact.name == "cut.png"


@pytest.mark.parametrize(("name", "stem"), [
    ("x.png.", "x"),
    ("x.png. . ", "x"),
    (".hidden", "hidden"),
    ("..png", "png"),
    ("X.png", "X"),
    ("REX", "REX"),
    ("Xray.png", "Xray"),
    ("my.photo.v2.png", "my_photo_v2"),
    ("a/b\\c/d.e.png", "d_e"),
    ("nul.tar.gz", "nul_tar"),
    ("COM1.png", "_COM1"),
    ("a" * 99 + " b.png", "a" * 99),
    ("a" * 99 + "XX", "a" * 99 + "X"),
    ("a" * 150, "a" * 100),
    ("...", None),
    (" . ", None),
])
def test_a_workers_file_name_becomes_a_safe_stem(name: str, stem: str | None) -> None:
    assert safe_name(name) == stem


@pytest.mark.parametrize("name", [5, 1.5, ["a.png"], {"a": 1}, b"a.png"])
def test_a_file_name_that_is_no_text_is_ignored(name: object) -> None:
    assert safe_name(name) is None  # type: ignore[arg-type]


NO_IMAGE = ("found no image in {} (keys: {}); pass --output-key with the dotted path of the "
            "image, e.g. --output-key result.0.png")


@pytest.mark.parametrize(("output", "message"), [
    ({"output": {}}, NO_IMAGE.format("output", "output")),  # an empty nested output is skipped
    ({"output": {"result": 1}}, NO_IMAGE.format("output.output", "result")),
    ({"": 5}, NO_IMAGE.format("output", "none")),
    ({"status": "other", "message": B64}, NO_IMAGE.format("output", "message, status")),
    ({"images": ["nope"]},
     "output.images[0] decodes to 3 bytes that are not an image (starts with b'\\x9e\\x8a^'; "
     "the worker may return raw pixels or text): 'nope'"),
    ({"images": [{"data": "%%%"}]},
     "output.images[0] is neither base64, a data URI nor an http(s) URL: '%%%'"),
    ({"image": "data:image/png;base64,AAAA,BBBB"},
     "output.image is a data URI whose base64 is invalid: 'data:image/png;base64,AAAA,BBBB'"),
    ({"image": "data:image/png;base64,"},
     "output.image is a data URI whose base64 is invalid: 'data:image/png;base64,'"),
    ({"image": "Zm 9v"}, "output.image decodes to 3 bytes that are not an image (starts with "
                         "b'foo'; the worker may return raw pixels or text): 'Zm 9v'"),
    ({"status": "error", "error": "x", "error_type": "ValueError"},
     "the job completed but the worker reported an error: x"),
])
def test_more_of_what_the_user_reads(output: object, message: str) -> None:
    with pytest.raises(OutputError) as caught:
        extract(output)
    assert str(caught.value) == message


def test_base64_with_padding_past_its_end_is_refused() -> None:
    text = B64 + "===="
    with pytest.raises(OutputError, match="is neither base64"):
        extract({"image": text})


def test_a_url_that_does_not_parse_is_never_fetched() -> None:
    with pytest.raises(OutputError, match=r"http://\[::1"):
        extract({"image": "http://[::1"})


def test_a_message_without_a_status_is_taken_when_it_is_an_image() -> None:
    assert [a.data for a in extract({"message": B64})] == [png_bytes(0)]


@pytest.mark.parametrize(("extra", "name"), [
    ({"name": "cut.png"}, "cut.png"), ({"filename": "f.png", "name": "n.png"}, "f.png"),
    ({"filename": 5}, None), ({"filename": ""}, None), ({}, None),
])
def test_the_workers_name_for_an_image(extra: dict[str, object], name: str | None) -> None:
    [artifact] = extract({"image": B64, **extra})
    assert artifact.name == name


@pytest.mark.parametrize(("text", "message"), [
    ("file:/etc/passwd",
     "output.image is a file: URL ('file:/etc/passwd'); only http(s) URLs are downloaded"),
    ("FTP:host/x.png",
     "output.image is a FTP: URL ('FTP:host/x.png'); only http(s) URLs are downloaded"),
    ("ftp:host/x.png",
     "output.image is a ftp: URL ('ftp:host/x.png'); only http(s) URLs are downloaded"),
    ("s3:bucket/x.png",
     "output.image is a s3: URL ('s3:bucket/x.png'); only http(s) URLs are downloaded"),
    ("gs:bucket/x.png",
     "output.image is a gs: URL ('gs:bucket/x.png'); only http(s) URLs are downloaded"),
    ("myapp://x/y.png",
     "output.image is a myapp: URL ('myapp://x/y.png'); only http(s) URLs are downloaded"),
    # Text that merely starts like a scheme is not a URL: it is refused as text.
    ("note: hello",
     "output.image is neither base64, a data URI nor an http(s) URL: 'note: hello'"),
])
def test_a_url_rpq_will_not_download_is_named(text: str, message: str) -> None:
    with pytest.raises(OutputError) as caught:
        extract({"image": text})
    assert str(caught.value) == message


def test_a_blank_image_in_a_list_is_named() -> None:
    with pytest.raises(OutputError) as caught:
        extract({"images": [B64, "  "]})
    assert str(caught.value) == "output.images[1] is an empty string"


def test_a_data_uri_keeps_the_workers_name() -> None:
    [artifact] = extract({"images": [{"filename": "cut.png",
                                      "data": "data:image/png;base64," + B64}]})
    assert artifact.data == png_bytes(0) and artifact.name == "cut.png"


@pytest.mark.parametrize(("error", "line"), [
    ({"error_type": "<class 'requests.exceptions.HTTPError'>", "error_message": "x"},
     "HTTPError: x"),
    ({"error_type": 5, "error_message": "x"}, "x"),  # a type that is no text is left out
    ({"error_message": "", "error": "boom"}, "boom"),  # an empty field is passed over
    (["café", "ß"], '["café","ß"]'),  # read as written, not as \u escapes
    ({"error": {"détail": "à"}}, '{"détail":"à"}'),
])
def test_more_of_the_workers_error_in_one_line(error: object, line: str) -> None:
    assert decode_worker_error(error) == line


def test_an_error_json_cannot_spell_still_reads_as_one_line() -> None:
    looped: list[object] = []
    looped.append(looped)
    assert decode_worker_error(looped) == "[[...]]"
    assert decode_worker_error({"error_message": {1}}) == '"{1}"'


def test_an_output_key_is_named_in_what_it_selects() -> None:
    with pytest.raises(OutputError) as caught:
        extract({"a": {"b": 5}}, "a.b")
    assert str(caught.value) == "output.a.b is 5, not an image, a base64 string or a URL"
