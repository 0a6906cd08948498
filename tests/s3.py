"""An S3-protocol server for the tests: moto's standalone server (``moto_server``, from
PyPI's ``moto[server]``), the stand-in for a real bucket, because Debian ships no
standalone S3 server (its radosgw needs a whole Ceph cluster). CI starts one and names it
in TEST_S3_ENDPOINT_URL; without it, a test starts its own on a free loopback port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

#: The credentials and region the tests hand boto3 (moto accepts any).
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1).close()
        return True
    except OSError:
        return False


def s3_server(folder: Path):
    """Yield the URL of a running S3-protocol server: CI's, or one started (and stopped) here."""
    given = os.environ.get("TEST_S3_ENDPOINT_URL")
    if given:
        yield given
        return
    here = str(Path(sys.executable).parent)  # the virtualenv's own first
    command = shutil.which("moto_server", path=here) or shutil.which("moto_server")
    if command is None:
        pytest.fail("moto_server is missing: pip install -r requirements-dev.txt (moto[server])")
    port = _free_port()
    log = open(folder / "moto.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _up(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("moto_server did not start: " + (folder / "moto.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def new_bucket(url: str) -> str:
    """A fresh, empty bucket on the server at ``url``; its name."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=url, **_client_env()).create_bucket(Bucket=name)
    return name


def bucket_keys(url: str, bucket: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=url, **_client_env())
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return sorted(keys)


def _client_env() -> dict:
    return {
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS_ENV["AWS_DEFAULT_REGION"],
    }
