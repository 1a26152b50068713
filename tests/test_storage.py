"""rpq.storage against a real S3 API server on 127.0.0.1 (moto's), never a mock of boto3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from s3kit import S3Server, s3_server

from rpq.errors import ExitCode, UsageError
from rpq.storage import Bucket, BucketError, BucketPath


@pytest.fixture
def aws(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    return s3


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://my-images", "my-images", ""),
    ("s3://my-images/", "my-images", ""),
    ("s3://my-images/2024/raw/", "my-images", "2024/raw/"),
    ("s3://my-images/2024//raw", "my-images", "2024//raw/"),
])
def test_bucket_urls(url: str, bucket: str, prefix: str) -> None:
    where = BucketPath.parse(url)
    assert (where.bucket, where.prefix) == (bucket, prefix)
    assert where.key("a/b.png") == prefix + "a/b.png"


@pytest.mark.parametrize("url", ["s3://", "s3:///x", "s3://A_B/x", "s3://ab", "/local/dir"])
def test_bad_bucket_urls_say_how_to_write_one(url: str) -> None:
    with pytest.raises(UsageError, match="s3://BUCKET/PREFIX"):
        BucketPath.parse(url)


def test_listing_streams_thousands_of_keys_in_order(aws: S3Server) -> None:
    client = aws.bucket("rpq-many", {f"in/{i % 7}/img_{i:05d}.png": b"x" for i in range(2_345)})
    client.put_object(Bucket="rpq-many", Key="in/.hidden/a.png", Body=b"x")
    client.put_object(Bucket="rpq-many", Key="in/folder/", Body=b"")
    client.put_object(Bucket="rpq-many", Key="other/img.png", Body=b"x")
    bucket = Bucket.at("s3://rpq-many/in")
    bucket.check()
    listed = bucket.list()
    first = next(listed)  # the first page arrives before the rest is listed
    rels = [first.rel, *(item.rel for item in listed)]
    assert len(rels) == 2_345 and rels == sorted(rels)
    assert all(not r.startswith((".", "folder")) for r in rels)
    assert first.size == 1 and first.etag
    only = [i.rel for i in bucket.list(include=["3/*.png"], exclude=["*7.png"])]
    assert only and all(r.startswith("3/") and not r.endswith("7.png") for r in only)


def test_write_read_exists_and_a_presigned_url_anyone_can_fetch(aws: S3Server) -> None:
    aws.bucket("rpq-rw")
    bucket = Bucket.at("s3://rpq-rw/out/")
    assert not bucket.exists("a b/c.png")
    bucket.write("a b/c.png", b"\x89PNG...", "image/png")
    assert bucket.exists("a b/c.png") and bucket.read("a b/c.png") == b"\x89PNG..."
    assert aws.objects("rpq-rw") == {"out/a b/c.png": b"\x89PNG..."}
    url = bucket.presign("a b/c.png", 60)
    assert "testing-secret" not in url
    assert requests.get(url, timeout=10).content == b"\x89PNG..."  # no credentials sent


def test_a_missing_bucket_is_one_line_exit_3(aws: S3Server) -> None:
    with pytest.raises(BucketError) as err:
        Bucket.at("s3://no-such-bucket/x").check()
    assert err.value.exit_code == ExitCode.ENDPOINT
    assert "'no-such-bucket' does not exist" in str(err.value) and "\n" not in str(err.value)


def test_an_unreachable_endpoint_is_one_line_exit_3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(BucketError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9"):
        Bucket.at("s3://rpq-in/x").check()


def test_refused_credentials_are_one_line_exit_3_without_the_secret(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with s3_server(auth=True) as strict:
        for name, value in strict.env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(BucketError) as err:
            Bucket.at("s3://rpq-in/x").check()
    message = str(err.value)
    assert "refused the credentials" in message and "\n" not in message
    assert "testing-secret" not in message


def test_without_boto3_the_error_names_the_extra(tmp_path: Path) -> None:
    # boto3 made unimportable, as on an install without the extra.
    blocked = tmp_path / "blocked" / "boto3"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named boto3')\n")
    env = {**os.environ, "PYTHONPATH": str(blocked.parent)}
    run = subprocess.run([sys.executable, "-m", "rpq", "batch", "s3://rpq-in/x", "--out",
                          str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2
    assert "pip install 'rpq[s3]'" in run.stderr and "Traceback" not in run.stderr
