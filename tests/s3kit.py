"""A real S3 API on 127.0.0.1 for tests: moto's server in a child process, and its settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
sys.stdin.read()
server.stop()
"""

#: Credentials the test server accepts; a server started with auth=True accepts none.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@dataclass
class S3Server:
    """One server: its endpoint, the env that points rpq at it, and a client for setting up."""

    endpoint: str
    proc: subprocess.Popen[str]

    @property
    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1").client("s3", endpoint_url=self.endpoint)

    def bucket(self, name: str, files: dict[str, bytes] | None = None) -> Any:
        """A new bucket holding `files` (key -> bytes), put 16 at a time."""
        from concurrent.futures import ThreadPoolExecutor

        client = self.client()
        client.create_bucket(Bucket=name)
        with ThreadPoolExecutor(16) as pool:
            for done in [pool.submit(client.put_object, Bucket=name, Key=key, Body=data)
                         for key, data in (files or {}).items()]:
                done.result()
        return client

    def objects(self, name: str, prefix: str = "") -> dict[str, bytes]:
        client = self.client()
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name, Prefix=prefix):
            for obj in page.get("Contents") or ():
                found[obj["Key"]] = client.get_object(Bucket=name, Key=obj["Key"])["Body"].read()
        return found


@contextmanager
def s3_server(*, auth: bool = False) -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, port 0; `auth=True` checks every request's key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    proc = subprocess.Popen([sys.executable, "-c", _SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        assert proc.stdout is not None
        endpoint = proc.stdout.readline().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"moto server did not start: {endpoint!r}")
        yield S3Server(endpoint, proc)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
