"""Every output shape workers are known to return ends up as an image file."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from batchkit import batch_args, endpoint_env, rpq
from helpers import LoopbackServer, respond
from imaging import jpeg_bytes, make_images, png_bytes
from PIL import Image

WORKER = '''
import base64

SERVED = {served!r}

def handler(job):
    name = job["input"]["name"]
    b64 = job["input"]["image"]
    shape = name.split("-")[0]
    if shape == "comfy5":
        return {{"images": [{{"filename": "ComfyUI_0001_.png", "type": "base64", "data": b64}},
                           {{"filename": "ComfyUI_0002_.png", "type": "base64", "data": b64}}]}}
    if shape == "comfys3":
        return {{"images": [{{"filename": "x.png", "type": "s3_url", "data": SERVED + "/pic"}}]}}
    if shape == "a1111":
        return {{"images": [b64]}}
    if shape == "comfy3":
        return {{"status": "success", "message": b64}}
    if shape == "imageb64":
        return {{"filename": name, "image_b64": b64}}
    if shape == "imagebase64":
        return {{"image_base64": b64, "format": "PNG"}}
    if shape == "datauri":
        return {{"image": "data:image/png;base64," + b64}}
    if shape == "nested":
        return {{"output": {{"image": b64}}}}
    if shape == "bare":
        return b64
    if shape == "url":
        return {{"image": SERVED + "/pic"}}
    if shape == "custom":
        return {{"result": {{"files": [{{"png": b64}}]}}}}
    raise ValueError("unknown shape " + shape)
'''

SHAPES = ["comfy5", "comfys3", "a1111", "comfy3", "imageb64", "imagebase64", "datauri", "nested",
          "bare", "url"]


@pytest.fixture
def picture_server(loopback: Callable[..., LoopbackServer]) -> str:
    body = jpeg_bytes(99)
    return loopback(lambda h: respond(h, 200, body, content_type="image/jpeg")).url


def _setup(tmp_path: Path, served: str, names: list[str]) -> tuple[Path, Path, Path]:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(served=served))
    template = tmp_path / "t.json"
    template.write_text(json.dumps({"input": {"image": "{{image_base64}}", "name": "{{stem}}"}}))
    src = tmp_path / "in"
    make_images(src, [f"{name}-{i}" for i, name in enumerate(names)])
    return worker, template, src


def test_every_known_shape(tmp_path: Path, make_endpoint, picture_server: str) -> None:
    worker, template, src = _setup(tmp_path, picture_server, SHAPES)
    ep = make_endpoint(handler=f"{worker}:handler", workers_max=3)
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template, "--save-json"),
              env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith((".", "job_")))
    expected = {
        "comfy5-0_1.png", "comfy5-0_2.png", "comfys3-1.jpg", "a1111-2.png", "comfy3-3.png",
        "imageb64-4.png", "imagebase64-5.png", "datauri-6.png", "nested-7.png", "bare-8.png",
        "url-9.jpg",
    }
    assert expected <= set(names)
    assert {n for n in names if n.endswith(".json")} == {f"{s}-{i}.json" for i, s in
                                                         enumerate(SHAPES)}
    assert (out / "comfy3-3.png").read_bytes() == (src / "comfy3-3.png").read_bytes()
    assert (out / "url-9.jpg").read_bytes() == jpeg_bytes(99)


def test_output_key_selects_the_image(tmp_path: Path, make_endpoint) -> None:
    worker, template, src = _setup(tmp_path, "http://127.0.0.1:9", ["custom"])
    ep = make_endpoint(handler=f"{worker}:handler")
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--input-template", template), env=endpoint_env(ep))
    assert run.code == 1  # not a known shape: the error says what the output holds
    assert "result" in run.metrics(out)["jobs"][0]["error"]
    run = rpq(*batch_args(src, out, "--input-template", template, "--retry-failed",
                          "--output-key", "result.files.0.png"), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert (out / "custom-0.png").read_bytes() == (src / "custom-0.png").read_bytes()


COMFY_WORKER = '''
def handler(job):
    inp = job["input"]
    if "workflow" not in inp:
        return {"error": "Missing 'workflow' parameter"}
    names = {i["name"]: i["image"] for i in inp.get("images", [])}
    load = [n for n in inp["workflow"].values() if n["class_type"] == "LoadImage"][0]
    image = names[load["inputs"]["image"]]  # the workflow must point at the uploaded image
    return {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": image}]}
'''


def test_workflow_batch_against_a_comfy_worker(tmp_path: Path, make_endpoint) -> None:
    worker = tmp_path / "comfy.py"
    worker.write_text(COMFY_WORKER)
    ep = make_endpoint(handler=f"{worker}:handler")
    workflow = tmp_path / "workflow_api.json"
    workflow.write_text(json.dumps({
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
    }))
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(1))
    out = tmp_path / "out"
    run = rpq(*batch_args(src, out, "--workflow", workflow), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert (out / "a.png").read_bytes() == (src / "a.png").read_bytes()

    ui_export = tmp_path / "workflow.json"
    ui_export.write_text(json.dumps({"nodes": [{"id": 1, "type": "LoadImage"}], "links": []}))
    run = rpq(*batch_args(src, out, "--workflow", ui_export), env=endpoint_env(ep))
    assert run.code == 2
    assert "API" in run.stderr and "workflow.json" in run.stderr


def test_a_bigtiff_result_is_saved(tmp_path: Path, make_endpoint) -> None:
    # Pillow reads BigTIFF, so a worker that answers with one has made a usable result.
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), (200, 30, 60)).save(buffer, "TIFF", big_tiff=True)
    bigtiff = buffer.getvalue()
    assert bigtiff[:4] == b"II+\x00"

    def handler(job: dict[str, Any]) -> dict[str, Any]:
        return {"image_b64": base64.b64encode(bigtiff).decode()}

    ep = make_endpoint(handler=handler)
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, ["a"])
    run = rpq(*batch_args(src, out), env=endpoint_env(ep))
    assert run.code == 0, run.stderr
    assert (out / "a.tif").read_bytes() == bigtiff
