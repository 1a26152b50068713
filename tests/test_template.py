"""Tests for request templates and ComfyUI workflow requests (rpq.template)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rpq.errors import UsageError
from rpq.images import ImageFile, Prepared
from rpq.template import PLACEHOLDERS, RequestTemplate, upload_name

PNG_1X1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def prepared(
    rel: str = "sub/a b.png", data: bytes = PNG_1X1, mime: str = "image/png", ext: str = "png"
) -> Prepared:
    return Prepared(
        source=ImageFile(Path("/batch") / rel, rel),
        data=data,
        mime=mime,
        ext=ext,
        width=1,
        height=1,
        digest=hashlib.sha256(data).hexdigest(),
    )


def b64(data: bytes = PNG_1X1) -> str:
    return base64.b64encode(data).decode()


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc, indent=2))
    return path


def body(template: RequestTemplate, p: Prepared | None = None, **kwargs: Any) -> Any:
    p = p or prepared()
    raw = template.render(p, **kwargs)
    assert isinstance(raw, bytes)
    assert template.body_size(p, **kwargs) == len(raw)
    return json.loads(raw)


# ----------------------------------------------------------------------------- templates


def test_default_template_sends_raw_base64() -> None:
    assert body(RequestTemplate.default()) == {"input": {"image": b64()}}


def test_each_placeholder_as_a_whole_value(tmp_path: Path) -> None:
    doc = {"input": {name: "{{" + name + "}}" for name in PLACEHOLDERS if name != "image_url"}}
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    assert body(t) == {
        "input": {
            "image_base64": b64(),
            "image_data_uri": "data:image/png;base64," + b64(),
            "filename": "a b.png",
            "stem": "a b",
            "rel": "sub/a b.png",
            "mime": "image/png",
        }
    }


def test_image_url_is_the_url_given_and_needs_no_bytes(tmp_path: Path) -> None:
    doc = {"input": {"image_url": "{{image_url}}", "name": "{{rel}}"}}
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    assert t.needs_url and not t.needs_bytes
    url = "http://127.0.0.1:9/b/sub/a%20b.png?X-Amz-Signature=ab&x=\"q\""
    assert body(t, url=url) == {"input": {"image_url": url, "name": "sub/a b.png"}}
    assert t.render_preview(prepared(), url=url)["input"]["image_url"] == "<presigned URL>"
    with pytest.raises(UsageError, match=r"needs the images in a bucket"):
        t.render(prepared())
    assert RequestTemplate.default().needs_bytes and not RequestTemplate.default().needs_url


def test_placeholders_inside_longer_strings_and_nested_values(tmp_path: Path) -> None:
    doc = {
        "input": {
            "prompt": "remove the background of {{filename}} ({{ mime }})",
            "nested": [{"out": "results/{{stem}}.png"}, 3, None, True, "{{rel}}!"],
            "img": "{{image_base64}}",
            "untouched": "{{ 1 }} and {single} braces",
        }
    }
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    assert body(t)["input"] == {
        "prompt": "remove the background of a b.png (image/png)",
        "nested": [{"out": "results/a b.png"}, 3, None, True, "sub/a b.png!"],
        "img": b64(),
        "untouched": "{{ 1 }} and {single} braces",
    }


def test_stem_drops_only_the_last_extension() -> None:
    p = prepared(rel="x/archive.tar.gz")
    t = RequestTemplate({"input": {"s": "{{stem}}", "i": "{{image_base64}}"}}, source="t")
    assert body(t, p)["input"]["s"] == "archive.tar"


@pytest.mark.parametrize(("rel", "filename", "stem"), [
    ("a.png", "a.png", "a"),
    ("x/.hidden", ".hidden", ".hidden"),  # a leading dot starts no extension
    ("x/.hidden.png", ".hidden.png", ".hidden"),
    ("..x.png", "..x.png", "..x"),
    ("x/a.", "a.", "a."),  # nor does a dot at the end
    ("x/.", ".", "."),  # no file is called that, but a bucket key can end so
    ("..", "..", ".."),
    ("x/ a .b", " a .b", " a "),
])
def test_filename_and_stem_of_odd_names(rel: str, filename: str, stem: str) -> None:
    t = RequestTemplate({"input": {"f": "{{filename}}", "s": "{{stem}}",
                                   "i": "{{image_base64}}"}}, source="t")
    assert body(t, prepared(rel=rel))["input"] == {"f": filename, "s": stem, "i": b64()}


def test_odd_file_names_are_escaped(tmp_path: Path) -> None:
    rel = 'dir "q"/new\nline \\ tab\t é 日本 \u2028.png'
    doc = {"input": {"name": "{{filename}}", "path": "[{{rel}}]", "i": "{{image_base64}}"}}
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    raw = t.render(prepared(rel=rel))
    raw.decode("ascii")  # escaped to ASCII: safe on any transport
    parsed = json.loads(raw)
    assert parsed["input"]["name"] == "new\nline \\ tab\t é 日本 \u2028.png"
    assert parsed["input"]["path"] == f"[{rel}]"


def test_undecodable_file_names_still_render_valid_json() -> None:
    # os.scandir hands back bytes that are not UTF-8 as lone surrogates.
    rel = "raw/caf\udce9.png"
    t = RequestTemplate({"input": {"f": "{{rel}}", "i": "{{image_base64}}"}}, source="t")
    assert body(t, prepared(rel=rel))["input"]["f"] == rel


@settings(max_examples=200)
@example(name=".", folder="", data=b"")
@example(name="a.", folder=".", data=b"")
@given(
    name=st.text(min_size=1).filter(lambda s: "/" not in s),
    folder=st.text().filter(lambda s: "/" not in s),
    data=st.binary(max_size=300),
)
def test_any_file_name_renders_to_json_carrying_it_exactly(
    name: str, folder: str, data: bytes
) -> None:
    rel = f"{folder}/{name}" if folder else name
    t = RequestTemplate(
        {"input": {"f": "{{filename}}", "s": "{{stem}}", "r": "<{{rel}}>",
                   "u": "{{image_data_uri}}"}},
        source="t",
    )
    p = prepared(rel=rel, data=data)
    raw = t.render(p)
    assert t.body_size(p) == len(raw)
    parsed = json.loads(raw)
    assert parsed["input"]["f"] == name
    assert name.startswith(parsed["input"]["s"]) and parsed["input"]["s"]
    assert parsed["input"]["r"] == f"<{rel}>"
    assert base64.b64decode(parsed["input"]["u"].split(",", 1)[1]) == data


def test_input_only_file_is_wrapped(tmp_path: Path) -> None:
    t = RequestTemplate.from_file(
        write_json(tmp_path / "t.json", {"image_b64": "{{image_base64}}"})
    )
    assert body(t) == {"input": {"image_b64": b64()}}


def test_whole_body_file_is_sent_as_is(tmp_path: Path) -> None:
    doc = {
        "input": {"image": "{{image_base64}}"},
        "webhook": "https://example.invalid/hook",
        "policy": {"ttl": 60000},
    }
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    assert body(t) == {
        "input": {"image": b64()},
        "webhook": "https://example.invalid/hook",
        "policy": {"ttl": 60000},
    }


def test_input_may_be_any_json_value(tmp_path: Path) -> None:
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", "{{image_data_uri}}"))
    assert body(t) == {"input": "data:image/png;base64," + b64()}


def test_cli_policy_is_merged_and_wins(tmp_path: Path) -> None:
    doc = {"input": {"image": "{{image_base64}}"}, "policy": {"ttl": 60000, "lowPriority": True}}
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    merged = body(t, policy={"ttl": 120000, "executionTimeout": 30000})
    assert merged["policy"] == {"ttl": 120000, "lowPriority": True, "executionTimeout": 30000}
    assert body(t)["policy"] == {"ttl": 60000, "lowPriority": True}  # cached per policy
    plain = RequestTemplate.default()
    assert body(plain, policy={"ttl": 5})["policy"] == {"ttl": 5}
    assert "policy" not in body(plain, policy=None)


def test_policy_strings_are_not_treated_as_placeholders() -> None:
    t = RequestTemplate.default()
    assert body(t, policy={"note": "{{filename}}"})["policy"] == {"note": "{{filename}}"}


def test_unknown_placeholder_is_a_usage_error_listing_the_known_ones(tmp_path: Path) -> None:
    path = write_json(tmp_path / "t.json", {"input": {"i": "{{image_base64}}", "x": ["{{foo}}"]}})
    with pytest.raises(UsageError) as info:
        RequestTemplate.from_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unknown placeholder {{{{foo}}}} at input.x[0].")
    for name in PLACEHOLDERS:
        assert "{{" + name + "}}" in message


def test_placeholder_in_a_key_is_a_usage_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "t.json", {"input": {"{{stem}}": "{{image_base64}}"}})
    with pytest.raises(UsageError, match=r"is in a key at input\.\{\{stem\}\}"):
        RequestTemplate.from_file(path)


def test_template_without_image_placeholder_is_a_usage_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "t.json", {"input": {"name": "{{filename}}"}})
    with pytest.raises(UsageError, match="has no image placeholder, so every image would send"):
        RequestTemplate.from_file(path)


def test_invalid_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    text = '{\n  "input": {\n    "image": "{{image_base64}}",\n  }\n}\n'
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        RequestTemplate.from_file(path)
    # Where the parser stops differs between Pythons (3.13 names the trailing comma itself).
    with pytest.raises(json.JSONDecodeError) as parsed:
        json.loads(text)
    where = f"line {parsed.value.lineno}, column {parsed.value.colno}"
    assert parsed.value.lineno in (3, 4)
    assert str(info.value).startswith(f"{path}: invalid JSON at {where}: ")


def test_nan_and_missing_and_non_utf8_files_are_usage_errors(tmp_path: Path) -> None:
    nan = tmp_path / "nan.json"
    nan.write_text('{"input": {"i": "{{image_base64}}", "x": NaN}}')
    with pytest.raises(UsageError, match="NaN is not valid JSON"):
        RequestTemplate.from_file(nan)
    with pytest.raises(UsageError, match=r"missing\.json not found"):
        RequestTemplate.from_file(tmp_path / "missing.json")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"input": {"i": "{{image_base64}}", "x": "caf\xe9"}}')
    with pytest.raises(UsageError, match="is not UTF-8 text"):
        RequestTemplate.from_file(latin)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"image": "{{image_base64}}"}')
    assert body(RequestTemplate.from_file(path)) == {"input": {"image": b64()}}


def test_non_object_policy_in_template_is_a_usage_error(tmp_path: Path) -> None:
    path = write_json(tmp_path / "t.json", {"input": {"i": "{{image_base64}}"}, "policy": 5})
    with pytest.raises(UsageError, match='"policy" must be a JSON object'):
        RequestTemplate.from_file(path)


def test_preview_elides_base64() -> None:
    data = bytes(range(256)) * 40
    t = RequestTemplate(
        {"input": {"a": "{{image_base64}}", "b": "{{image_data_uri}}", "n": "{{filename}}"}},
        source="t",
    )
    p = prepared(data=data)
    preview = t.render_preview(p, policy={"ttl": 1})
    size = len(base64.b64encode(data))
    assert preview == {
        "input": {
            "a": f"<base64: {size} bytes>",
            "b": f"data:image/png;base64,<base64: {size} bytes>",
            "n": "a b.png",
        },
        "policy": {"ttl": 1},
    }


def test_render_is_compact_and_body_size_is_exact_for_large_images() -> None:
    data = bytes(range(256)) * 40_000  # ~10 MB
    t = RequestTemplate.default()
    raw = t.render(prepared(data=data))
    assert raw.startswith(b'{"input":{"image":"')
    assert len(raw) == t.body_size(prepared(data=data)) == len(base64.b64encode(data)) + 22


def test_template_text_that_resembles_internal_markers_survives(tmp_path: Path) -> None:
    doc = {"input": {"i": "{{image_base64}}", "m": "@@0123456789abcdef:filename@@"}}
    t = RequestTemplate.from_file(write_json(tmp_path / "t.json", doc))
    assert body(t)["input"]["m"] == "@@0123456789abcdef:filename@@"


def test_fingerprint_is_stable_and_tracks_content(tmp_path: Path) -> None:
    one = write_json(tmp_path / "one.json", {"input": {"i": "{{image_base64}}", "a": 1, "b": 2}})
    # Same content, different key order and formatting.
    (tmp_path / "two.json").write_text('{"input":{"b":2,"a":1,"i":"{{image_base64}}"}}')
    three = write_json(tmp_path / "three.json", {"input": {"i": "{{image_base64}}", "a": 1}})
    fp = RequestTemplate.from_file(one).fingerprint()
    assert len(fp) == 64
    assert fp == RequestTemplate.from_file(one).fingerprint()
    assert fp == RequestTemplate.from_file(tmp_path / "two.json").fingerprint()
    assert fp != RequestTemplate.from_file(three).fingerprint()
    assert RequestTemplate.default().fingerprint() == RequestTemplate.default().fingerprint()
    assert fp != RequestTemplate.default().fingerprint()


# ----------------------------------------------------------------------------- workflows


def api_workflow(*loaders: str) -> dict[str, Any]:
    wf: dict[str, Any] = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "out_{{stem}}", "images": ["8", 0]},
            "_meta": {"title": "Save Image"},
        },
    }
    for node_id in loaders:
        wf[node_id] = {
            "class_type": "LoadImage",
            "inputs": {"image": f"example_{node_id}.png", "upload": "image"},
            "_meta": {"title": f"Load Image {node_id}"},
        }
    return wf


def test_workflow_request_uploads_the_image_and_points_load_image_at_it(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow("12"))
    t = RequestTemplate.from_workflow(path)
    assert t.warning is None
    p = prepared(rel="shots/cat photo.jpg", ext="jpeg", mime="image/jpeg")
    sent = body(t, p)
    name = upload_name(p)
    assert name == f"cat_photo-{p.digest[:12]}.jpeg"
    assert sent["input"]["images"] == [{"name": name, "image": b64()}]
    workflow = sent["input"]["workflow"]
    assert workflow["12"]["inputs"] == {"image": name, "upload": "image"}
    assert workflow["9"]["inputs"]["filename_prefix"] == "out_cat photo"
    assert workflow["4"] == api_workflow()["4"]
    # Loading does not change the file's own structure.
    assert json.loads(path.read_text()) == api_workflow("12")


def test_upload_names_are_safe_and_distinct_for_same_named_files() -> None:
    a = prepared(rel="a/x.png", data=PNG_1X1)
    b = prepared(rel="b/x.png", data=PNG_1X1 + b"\0")
    assert upload_name(a) != upload_name(b)
    odd = prepared(rel="../\n日本 .png")
    assert upload_name(odd) == f"image-{odd.digest[:12]}.png"


def test_several_load_image_nodes_use_the_first_and_warn(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow("30", "7", "12"))
    t = RequestTemplate.from_workflow(path)
    assert t.warning is not None
    assert "3 LoadImage nodes" in t.warning
    assert 'goes to node "7" (Load Image 7)' in t.warning
    workflow = body(t)["input"]["workflow"]
    assert workflow["7"]["inputs"]["image"].endswith(".png")
    assert workflow["7"]["inputs"]["image"] != "example_7.png"
    assert workflow["12"]["inputs"]["image"] == "example_12.png"
    assert workflow["30"]["inputs"]["image"] == "example_30.png"


def test_image_node_chooses_the_node(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow("7", "12"))
    t = RequestTemplate.from_workflow(path, image_node="12")
    assert t.warning is None
    workflow = body(t)["input"]["workflow"]
    assert workflow["7"]["inputs"]["image"] == "example_7.png"
    assert workflow["12"]["inputs"]["image"] != "example_12.png"


def test_image_node_errors(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow("7"))
    with pytest.raises(UsageError, match=r'has no node "99"\. LoadImage nodes in it: "7"'):
        RequestTemplate.from_workflow(path, image_node="99")
    with pytest.raises(UsageError, match=r'node "4" \(CheckpointLoaderSimple\) has no "image"'):
        RequestTemplate.from_workflow(path, image_node="4")
    with pytest.raises(UsageError, match="wired to another node"):
        wf = api_workflow("7")
        wf["5"] = {"class_type": "ImageScale", "inputs": {"image": ["7", 0]}}
        RequestTemplate.from_workflow(write_json(tmp_path / "w2.json", wf), image_node="5")


def test_ui_export_is_rejected_with_export_instructions(tmp_path: Path) -> None:
    ui = {
        "last_node_id": 9,
        "last_link_id": 9,
        "nodes": [{"id": 10, "type": "LoadImage", "widgets_values": ["x.png", "image"]}],
        "links": [[1, 10, 0, 9, 0, "IMAGE"]],
        "version": 0.4,
    }
    path = write_json(tmp_path / "ui.json", ui)
    with pytest.raises(UsageError) as info:
        RequestTemplate.from_workflow(path)
    message = str(info.value)
    assert message.startswith(f"{path} is a ComfyUI UI export, not API format.")
    assert "Workflow > Export (API)" in message
    assert "Save (API Format)" in message


def test_workflow_without_load_image_is_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow())
    with pytest.raises(UsageError, match="the workflow has no LoadImage node to feed the image to"):
        RequestTemplate.from_workflow(path)


@pytest.mark.parametrize(
    "doc",
    [[1, 2], {}, {"3": {"inputs": {}}}, {"3": {"class_type": "X", "inputs": []}}, "text"],
)
def test_not_api_format_is_rejected(tmp_path: Path, doc: Any) -> None:
    with pytest.raises(UsageError, match="API-format workflow"):
        RequestTemplate.from_workflow(write_json(tmp_path / "wf.json", doc))


def test_whole_worker_comfyui_request_is_accepted(tmp_path: Path) -> None:
    doc = {
        "input": {
            "workflow": api_workflow("10"),
            "images": [{"name": "mask.png", "image": "AAAA"}],
            "comfy_org_api_key": "k",
        },
        "policy": {"executionTimeout": 900000},
    }
    t = RequestTemplate.from_workflow(write_json(tmp_path / "req.json", doc))
    sent = body(t, policy={"ttl": 1})
    assert sent["policy"] == {"executionTimeout": 900000, "ttl": 1}
    assert sent["input"]["comfy_org_api_key"] == "k"
    assert sent["input"]["images"][0] == {"name": "mask.png", "image": "AAAA"}
    assert sent["input"]["images"][1]["image"] == b64()
    assert sent["input"]["workflow"]["10"]["inputs"]["image"] == sent["input"]["images"][1]["name"]
    wrapped = write_json(tmp_path / "w.json", {"workflow": api_workflow("10")})
    assert body(RequestTemplate.from_workflow(wrapped))["input"]["images"][0]["image"] == b64()


def test_request_body_without_workflow_is_rejected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "t.json", {"input": {"image": "{{image_base64}}"}})
    with pytest.raises(UsageError, match=r"has no input\.workflow"):
        RequestTemplate.from_workflow(path)


def test_nodes_named_like_wrappers_are_nodes(tmp_path: Path) -> None:
    wf = {
        "input": {"class_type": "LoadImage", "inputs": {"image": "x.png"}},
        "workflow": {"class_type": "SaveImage", "inputs": {"images": ["input", 0]}},
    }
    sent = body(RequestTemplate.from_workflow(write_json(tmp_path / "wf.json", wf)))
    assert sent["input"]["workflow"]["workflow"]["class_type"] == "SaveImage"
    assert sent["input"]["workflow"]["input"]["inputs"]["image"] != "x.png"


def test_unknown_placeholder_in_workflow_is_rejected(tmp_path: Path) -> None:
    wf = api_workflow("10")
    wf["9"]["inputs"]["filename_prefix"] = "{{nope}}"
    with pytest.raises(UsageError, match=r"unknown placeholder \{\{nope\}\} at input\.workflow"):
        RequestTemplate.from_workflow(write_json(tmp_path / "wf.json", wf))


def test_workflow_fingerprint_depends_on_the_image_node(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wf.json", api_workflow("7", "12"))
    first = RequestTemplate.from_workflow(path)
    assert first.fingerprint() == RequestTemplate.from_workflow(path).fingerprint()
    assert first.fingerprint() == RequestTemplate.from_workflow(path, "7").fingerprint()
    assert first.fingerprint() != RequestTemplate.from_workflow(path, "12").fingerprint()
