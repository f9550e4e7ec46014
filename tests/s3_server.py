"""A real S3-API server on loopback for the ``s3://`` tests: moto's standalone server in a subprocess.

``s3_server(log_path)`` starts ``python -m moto.server`` on 127.0.0.1 with a free port, waits until it answers,
creates a bucket and yields an ``S3Server``: its endpoint, the bucket, the environment that points boto at it
(``AWS_ENDPOINT_URL_S3`` is honoured by botocore, so code that takes no storage options -- the Trainer's
folders, the CLI -- reaches the server too) and the equivalent fsspec ``storage_options``. The server is killed
on exit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server and how to reach it."""

    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto (and so s3fs) at this server."""
        return {**_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec options that reach this server explicitly (independent of the environment)."""
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint}}

    def new_folder(self) -> str:
        """A fresh, empty ``s3://`` folder URL in the bucket."""
        return f"s3://{self.bucket}/{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_up(process: subprocess.Popen[bytes], endpoint: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto server exited with {process.returncode}: {log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1.0):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"moto server did not answer at {endpoint} within 60 s: {log_path.read_text()}")


@contextmanager
def s3_server(log_path: Path) -> Iterator[S3Server]:
    """Run moto's S3 server on loopback for the duration of the ``with`` block.

    Args:
        log_path: where the server's output goes (read back when it fails to start).

    Yields:
        The running server, with a bucket created.
    """
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:  # the child keeps its own descriptor; ours closes here
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **_CREDENTIALS},
            start_new_session=True,
        )
    try:
        _wait_until_up(process, endpoint, log_path)
        server = S3Server(endpoint=endpoint, bucket="stepstone-tests")
        fsspec.filesystem("s3", **server.storage_options).mkdir(server.bucket)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
