"""A real S3 endpoint on loopback for tests: moto's server mode, one fresh bucket.

    with s3_server() as s3:
        sink = Sink(f"s3://{s3.bucket}/prefix", s3.storage_options)

Credentials are fake and travel in `storage_options` only (the process environment is left
alone). `skip_instance_cache` keeps s3fs from handing one test's client to the next. moto
keeps its state per process, so every server gets a bucket with a unique name instead of
resetting state another test may still use.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

FAKE_KEY = "nbp-test-key"
FAKE_SECRET = "nbp-test-secret"  # moto accepts any credentials
REGION = "eu-west-1"  # not us-east-1: s3fs sends it as LocationConstraint, S3 refuses that one


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str
    storage_options: dict[str, Any]

    def url(self, prefix: str = "") -> str:
        """`s3://bucket/prefix` of this server's bucket."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def fresh_fs(self) -> Any:
        """A new s3fs client (no shared instance, no listing cache): sees only what S3 has."""
        import s3fs

        return s3fs.S3FileSystem(**{**self.storage_options, "use_listings_cache": False})


def s3_storage_options(endpoint_url: str) -> dict[str, Any]:
    """s3fs options for a moto endpoint: fake credentials, no instance cache."""
    return {
        "key": FAKE_KEY,
        "secret": FAKE_SECRET,
        "endpoint_url": endpoint_url,
        "client_kwargs": {"region_name": REGION},
        "skip_instance_cache": True,
    }


@contextmanager
def s3_server(bucket: str | None = None) -> Iterator[S3Server]:
    """Start moto's S3 server on 127.0.0.1 (a free port), create a bucket, stop on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        name = bucket or f"nbp-{uuid.uuid4().hex[:16]}"
        options = s3_storage_options(endpoint)
        s3 = S3Server(endpoint_url=endpoint, bucket=name, storage_options=options)
        s3.fresh_fs().mkdir(name)
        yield s3
    finally:
        server.stop()
