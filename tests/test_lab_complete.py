"""The lab's REST whole-file endpoint: streaming, gzip, and SigV4 checked like AWS does."""

from __future__ import annotations

import datetime as dt
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from rdsrecorder_lab import LAB_ACCESS_KEY_ID, LAB_SECRET_ACCESS_KEY, Lab
from rdsrecorder_lab.sigv4 import SignatureError, verify
from tests.lab_helpers import (
    BINARY,
    INSTANCE,
    LONG_LINE,
    TRICKY,
    WIDE,
    LabData,
    complete_url,
    presigned,
    signed_headers,
)

IDENTITY = {"Accept-Encoding": "identity"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    async with http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.mark.parametrize("name", [WIDE, LONG_LINE, TRICKY, BINARY])
async def test_whole_file_is_streamed_byte_exact(
    lab: Lab, http: aiohttp.ClientSession, lab_root: LabData, name: str
) -> None:
    url = complete_url(lab.rds_url, INSTANCE, name)
    status, headers, body = await fetch(http, url, {**signed_headers(url), **IDENTITY})
    assert status == 200
    assert headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Encoding" not in headers
    assert body == lab_root.bytes(name)  # no 1 MB cut, binary data served as is


async def test_gzip_when_accepted(lab: Lab, http: aiohttp.ClientSession, lab_root: LabData) -> None:
    url = complete_url(lab.rds_url, INSTANCE, WIDE)
    headers = {**signed_headers(url), "Accept-Encoding": "gzip"}
    status, response_headers, body = await fetch(http, url, headers)
    assert status == 200
    assert response_headers["Content-Encoding"] == "gzip"
    assert len(body) < len(lab_root.bytes(WIDE)) / 5
    assert gzip.decompress(body) == lab_root.bytes(WIDE)
    # the level is a knob (1, the fast level, by default): a higher one compresses smaller
    lab.set_faults(gzip_level=9)
    _, _, smaller = await fetch(http, url, {**signed_headers(url), "Accept-Encoding": "gzip"})
    assert len(smaller) < len(body)
    assert gzip.decompress(smaller) == lab_root.bytes(WIDE)
    with pytest.raises(ValueError, match="gzip_level"):
        lab.set_faults(gzip_level=0)


async def test_old_v13_path_and_presigned_urls(
    lab: Lab, http: aiohttp.ClientSession, lab_root: LabData
) -> None:
    old = complete_url(lab.rds_url, INSTANCE, TRICKY, version="v13")
    status, _, body = await fetch(http, old, {**signed_headers(old), **IDENTITY})
    assert (status, body) == (200, lab_root.bytes(TRICKY))
    url = presigned(complete_url(lab.rds_url, INSTANCE, TRICKY))
    status, _, body = await fetch(http, url, IDENTITY)
    assert (status, body) == (200, lab_root.bytes(TRICKY))


async def test_signature_is_checked(lab: Lab, http: aiohttp.ClientSession) -> None:
    url = complete_url(lab.rds_url, INSTANCE, TRICKY)
    other = complete_url(lab.rds_url, INSTANCE, WIDE)
    cases = {
        "MissingAuthenticationToken": IDENTITY,
        "SignatureDoesNotMatch": signed_headers(url, secret_key="wrong"),
        "InvalidClientTokenId": signed_headers(url, access_key="AKIAOTHER"),
    }
    for expected, headers in cases.items():
        status, _, body = await fetch(http, url, headers)
        assert status == 403, expected
        assert f"<Code>{expected}</Code>".encode() in body
    # Signed for another service, or for another file: refused.
    status, _, body = await fetch(http, url, signed_headers(url, service="s3"))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    status, _, body = await fetch(http, other, signed_headers(url))
    assert status == 403 and b"SignatureDoesNotMatch" in body
    # A presigned URL past its expiry is refused.
    expiring = presigned(url, expires_s=1)
    time.sleep(1.1)
    status, _, body = await fetch(http, expiring, IDENTITY)
    assert status == 403 and b"expired" in body
    stats = lab.stats()
    assert stats["calls"]["DownloadCompleteLogFile"] == 6
    assert not stats["complete_downloads"]


async def test_unknown_instance_and_file(lab: Lab, http: aiohttp.ClientSession) -> None:
    url = complete_url(lab.rds_url, "no-such-db", TRICKY)
    status, _, body = await fetch(http, url, signed_headers(url))
    assert status == 404 and b"<Code>DBInstanceNotFound</Code>" in body
    url = complete_url(lab.rds_url, INSTANCE, "error/postgresql.log.1999-01-01-00.csv")
    status, _, body = await fetch(http, url, signed_headers(url))
    assert status == 404 and b"<Code>DBLogFileNotFoundFault</Code>" in body


async def test_denied_without_the_iam_action(lab: Lab, http: aiohttp.ClientSession) -> None:
    lab.set_faults(complete_endpoint=False)
    url = complete_url(lab.rds_url, INSTANCE, TRICKY)
    status, _, body = await fetch(http, url, signed_headers(url))
    assert status == 403
    assert b"<Code>AccessDenied</Code>" in body
    assert b"rds:DownloadCompleteDBLogFile" in body
    assert lab.stats()["faults"] == {"complete_denied": 1}
    lab.set_faults()
    status, _, _ = await fetch(http, url, {**signed_headers(url), **IDENTITY})
    assert status == 200


async def test_counted_per_file(lab: Lab, http: aiohttp.ClientSession, lab_root: LabData) -> None:
    url = complete_url(lab.rds_url, INSTANCE, WIDE)
    for _ in range(2):
        status, _, _ = await fetch(http, url, {**signed_headers(url), **IDENTITY})
        assert status == 200
    stats = lab.stats()
    key = f"{INSTANCE}/{WIDE}"
    assert stats["complete_downloads"] == {key: 2}
    assert stats["complete_bytes_by_file"] == {key: 2 * len(lab_root.bytes(WIDE))}
    assert stats["max_concurrent_downloads"] == 1
    assert stats["in_flight"] == []
    assert "DownloadDBLogFilePortion" not in stats["calls"]


async def test_growing_file_is_served_as_far_as_written(tmp_path: Path) -> None:
    path = tmp_path / "live" / "error" / "postgresql.log.2024-03-04-1905.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first\n")
    async with Lab(tmp_path, s3="none") as lab, aiohttp.ClientSession() as http:
        url = complete_url(lab.rds_url, "live", "error/" + path.name)
        _, _, body = await fetch(http, url, {**signed_headers(url), **IDENTITY})
        assert body == b"first\n"
        with path.open("ab") as f:
            f.write(b"second\n")
        _, _, body = await fetch(http, url, {**signed_headers(url), **IDENTITY})
        assert body == b"first\nsecond\n"


def test_header_signature_older_than_15_minutes_is_refused() -> None:
    url = "http://127.0.0.1:1/v19/downloadCompleteLogFile/db/error/x.csv"
    headers = CIMultiDict(signed_headers(url))
    headers["Host"] = "127.0.0.1:1"
    kwargs = dict(
        method="GET",
        raw_path_and_query="/v19/downloadCompleteLogFile/db/error/x.csv",
        headers=headers,
        body=b"",
        credentials={LAB_ACCESS_KEY_ID: LAB_SECRET_ACCESS_KEY},
        services=("rds",),
    )
    now = dt.datetime.now(dt.UTC)
    assert verify(now=now + dt.timedelta(minutes=14), **kwargs).access_key == LAB_ACCESS_KEY_ID  # type: ignore[arg-type]
    with pytest.raises(SignatureError, match="Signature expired") as exc:
        verify(now=now + dt.timedelta(minutes=16), **kwargs)  # type: ignore[arg-type]
    assert exc.value.code == "SignatureDoesNotMatch"
