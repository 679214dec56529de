"""Blob GET, HEAD and DELETE: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import aiohttp
import pytest
from oci_helpers import Client, expect_error, push_blob, push_image, sha256, sha512
from registries import serving
from seaweedfs_fixtures import S3StoreFactory

from hareg.http.keys import HttpSettings
from hareg.kv.etcd import EtcdKV
from hareg.registry.service import Registry

BLOB = bytes(range(256)) * 4  # 1024 bytes, every offset distinguishable
MISSING = sha256(b"never pushed")


async def test_get_returns_bytes_with_digest_and_length(client: Client) -> None:
    digest = await push_blob(client, "repo", BLOB)
    r = await client.get(f"/v2/repo/blobs/{digest}")
    assert r.status == 200
    assert await r.read() == BLOB
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Length"] == str(len(BLOB))


async def test_head_has_digest_and_length_and_no_body(client: Client) -> None:
    digest = await push_blob(client, "repo", BLOB)
    r = await client.head(f"/v2/repo/blobs/{digest}")
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Content-Length"] == str(len(BLOB))
    assert await r.read() == b""


async def test_nested_repository_names(client: Client) -> None:
    digest = await push_blob(client, "org/team/app", BLOB)
    r = await client.get(f"/v2/org/team/app/blobs/{digest}")
    assert r.status == 200 and await r.read() == BLOB
    # The parent and child namespaces are other repositories.
    await expect_error(await client.get(f"/v2/org/team/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    await expect_error(await client.get(f"/v2/org/team/app/x/blobs/{digest}"), 404, "BLOB_UNKNOWN")


RANGES = [
    ("bytes=0-9", 0, 9),  # first bytes
    ("bytes=100-199", 100, 199),
    ("bytes=-10", 1014, 1023),  # suffix
    ("bytes=1000-", 1000, 1023),  # open-ended
    ("bytes=1023-1023", 1023, 1023),  # the last byte
    ("bytes=1000-5000", 1000, 1023),  # end past the blob is clipped
    ("bytes=-5000", 0, 1023),  # suffix longer than the blob: all of it, still 206
    ("BYTES=0-9", 0, 9),  # the unit is case-insensitive
    ("bytes=0-99999999999999999999999", 0, 1023),
]
# Multipart is never sent: several ranges, one of them satisfiable, get the whole blob.
WHOLE = ["items=0-9", "bytes 0-9", "bytes=0-9,20-29", "bytes=0-9, 2000-3000", "bytes=-0,0-0"]
UNSATISFIABLE = [
    "bytes=1024-",
    "bytes=2000-3000",
    "bytes=5-2",
    "bytes=-0",
    "bytes=-0,2000-",
    "bytes=x",
    "bytes=",
]


async def check_ranges(client: Client, repo: str, digest: str) -> None:
    """RFC 9110 range handling of a GET of ``BLOB`` at ``digest``."""
    url = f"/v2/{repo}/blobs/{digest}"
    for header, start, end in RANGES:
        r = await client.get(url, headers={"Range": header})
        assert r.status == 206, (header, r.status)
        assert await r.read() == BLOB[start : end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}", header
        assert r.headers["Content-Length"] == str(end - start + 1)
        assert r.headers["Docker-Content-Digest"] == digest
    for header in WHOLE:
        r = await client.get(url, headers={"Range": header})
        assert r.status == 200, (header, r.status)
        assert await r.read() == BLOB, header
        assert "Content-Range" not in r.headers
    for header in UNSATISFIABLE:
        r = await client.get(url, headers={"Range": header})
        assert r.headers["Content-Range"] == f"bytes */{len(BLOB)}", header
        await expect_error(r, 416, "BLOB_UPLOAD_INVALID")
    # If-Range: the range only while the validator is the blob's ETag, else the whole blob.
    r = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": f'"{digest}"'})
    assert r.status == 206 and await r.read() == BLOB[:10]
    for other in ('"something else"', f'W/"{digest}"', "Wed, 21 Oct 2015 07:28:00 GMT"):
        r = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": other})
        assert r.status == 200 and await r.read() == BLOB, other
    await check_conditions(client, url, digest)


async def check_conditions(client: Client, url: str, digest: str) -> None:
    """The ETag is the digest on every path, and If-Match / If-None-Match use it."""
    etag = f'"{digest}"'
    r = await client.get(url)
    assert r.headers["ETag"] == etag
    # A resumable download: the ETag of the first answer keeps the range of the next.
    r = await client.get(url, headers={"Range": "bytes=1000-", "If-Range": r.headers["ETag"]})
    assert r.status == 206 and await r.read() == BLOB[1000:]
    assert (await client.head(url)).headers["ETag"] == etag
    for method in ("GET", "HEAD"):
        for header in (etag, f"W/{etag}", f'"x", {etag}', "*"):
            r = await client.request(method, url, headers={"If-None-Match": header})
            assert r.status == 304, (method, header)
            assert r.headers["ETag"] == etag and await r.read() == b""
        r = await client.request(method, url, headers={"If-None-Match": '"other"'})
        assert r.status == 200
        for header in (etag, f'"x", {etag}', "*"):
            r = await client.request(method, url, headers={"If-Match": header})
            assert r.status == 200, (method, header)
        for header in ('"other"', f"W/{etag}"):
            r = await client.request(method, url, headers={"If-Match": header})
            assert r.status == 412, (method, header)
    r = await client.get(url, headers={"If-Match": etag, "Range": "bytes=0-9"})
    assert r.status == 206 and await r.read() == BLOB[:10]
    # If-None-Match that does not match outweighs If-Modified-Since (RFC 9110 §13.1.3).
    r = await client.get(
        url, headers={"If-None-Match": '"other"', "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}
    )
    assert r.status == 200 and await r.read() == BLOB


async def test_range_requests(client: Client) -> None:
    """The filesystem driver's path (sendfile)."""
    digest = await push_blob(client, "repo", BLOB)
    await check_ranges(client, "repo", digest)


@pytest.mark.parametrize("redirect", [False, True])
async def test_range_requests_on_an_object_store(
    kv: EtcdKV, s3_store: S3StoreFactory, redirect: bool
) -> None:
    """The S3 driver's paths: bytes streamed through the registry, or a redirect
    (the range decided first, so a 416 is the registry's; the store serves the rest)."""
    settings = HttpSettings(disable_redirect=not redirect)
    async with serving(kv, s3_store(), settings=settings) as (_, c):
        digest = await push_blob(c, "repo", BLOB)
        if not redirect:
            await check_ranges(c, "repo", digest)
            return
        for header in UNSATISFIABLE:
            r = await c.get(f"/v2/repo/blobs/{digest}", headers={"Range": header}, allow_redirects=False)
            assert r.headers["Content-Range"] == f"bytes */{len(BLOB)}", header
            await expect_error(r, 416, "BLOB_UPLOAD_INVALID")
        r = await c.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=0-9"}, allow_redirects=False)
        assert r.status == 307
        async with aiohttp.ClientSession() as session:
            got = await session.get(r.headers["Location"], headers={"Range": "bytes=0-9"})
            assert got.status == 206 and await got.read() == BLOB[:10]


async def test_ranges_of_an_empty_blob(client: Client) -> None:
    digest = await push_blob(client, "repo", b"")
    for header in ("bytes=0-", "bytes=0-0", "bytes=-0"):
        r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": header})
        assert r.headers["Content-Range"] == "bytes */0", header
        await expect_error(r, 416, "BLOB_UPLOAD_INVALID")
    # A non-zero suffix is satisfiable, but selects no byte: the whole (empty) blob.
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": "bytes=-5"})
    assert r.status == 200 and await r.read() == b""


async def test_range_of_unknown_blob_is_404(client: Client) -> None:
    await push_blob(client, "repo", BLOB)
    r = await client.get(f"/v2/repo/blobs/{MISSING}", headers={"Range": "bytes=0-9"})
    await expect_error(r, 404, "BLOB_UNKNOWN")


async def test_unknown_blob_is_404_blob_unknown(client: Client) -> None:
    await expect_error(await client.get(f"/v2/repo/blobs/{MISSING}"), 404, "BLOB_UNKNOWN")
    r = await client.head(f"/v2/repo/blobs/{MISSING}")
    assert r.status == 404
    # Also in a repository that exists.
    await push_blob(client, "repo", BLOB)
    await expect_error(await client.get(f"/v2/repo/blobs/{MISSING}"), 404, "BLOB_UNKNOWN")


async def test_blob_of_another_repository_is_not_visible(client: Client) -> None:
    digest = await push_blob(client, "one", BLOB)
    await push_blob(client, "two", b"something else")
    await expect_error(await client.get(f"/v2/two/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert (await client.head(f"/v2/two/blobs/{digest}")).status == 404
    await expect_error(await client.delete(f"/v2/two/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    # ...and deleting there did not touch the first repository.
    assert (await client.head(f"/v2/one/blobs/{digest}")).status == 200


async def test_sha512_blob(client: Client) -> None:
    digest = sha512(BLOB)
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": digest}, data=BLOB)
    assert r.status == 201
    assert r.headers["Docker-Content-Digest"] == digest
    r = await client.get(f"/v2/repo/blobs/{digest}")
    assert r.status == 200 and await r.read() == BLOB
    assert r.headers["Docker-Content-Digest"] == digest
    # The sha256 name of the same bytes was not linked.
    assert (await client.head(f"/v2/repo/blobs/{sha256(BLOB)}")).status == 404


async def test_delete_blob_202_then_404(client: Client) -> None:
    digest = await push_blob(client, "repo", BLOB)
    r = await client.delete(f"/v2/repo/blobs/{digest}")
    assert r.status == 202
    await expect_error(await client.get(f"/v2/repo/blobs/{digest}"), 404, "BLOB_UNKNOWN")
    assert (await client.head(f"/v2/repo/blobs/{digest}")).status == 404
    await expect_error(await client.delete(f"/v2/repo/blobs/{digest}"), 404, "BLOB_UNKNOWN")


async def test_delete_unknown_blob_404(client: Client) -> None:
    await expect_error(await client.delete(f"/v2/repo/blobs/{MISSING}"), 404, "BLOB_UNKNOWN")


async def test_delete_refused_while_a_manifest_references_it(client: Client, registry: Registry) -> None:
    image = await push_image(client, "repo", "v1")
    for digest in image.blobs:
        r = await client.delete(f"/v2/repo/blobs/{digest}")
        # 400: a status the spec lists for blob deletes (end-10); 409 is not one of them.
        entry = await expect_error(r, 400, "DENIED")
        assert image.digest in entry["detail"]["manifests"]
        assert image.digest in entry["message"], entry
        assert (await client.head(f"/v2/repo/blobs/{digest}")).status == 200
    # Once the manifest is gone the blobs may be deleted.
    assert (await client.delete(f"/v2/repo/manifests/{image.digest}")).status == 202
    for digest in image.blobs:
        assert (await client.delete(f"/v2/repo/blobs/{digest}")).status == 202
        assert (await client.head(f"/v2/repo/blobs/{digest}")).status == 404


async def test_delete_in_one_repository_leaves_a_mount_in_another(client: Client) -> None:
    digest = await push_blob(client, "src", BLOB)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status == 201
    assert (await client.delete(f"/v2/src/blobs/{digest}")).status == 202
    r = await client.get(f"/v2/dst/blobs/{digest}")
    assert r.status == 200 and await r.read() == BLOB


async def test_reupload_after_delete(client: Client) -> None:
    digest = await push_blob(client, "repo", BLOB)
    assert (await client.delete(f"/v2/repo/blobs/{digest}")).status == 202
    assert await push_blob(client, "repo", BLOB) == digest
    r = await client.get(f"/v2/repo/blobs/{digest}")
    assert r.status == 200 and await r.read() == BLOB


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:abc",
        "sha256:" + "A" * 64,
        "md5:" + "0" * 32,
        "sha256",
        "sha256:" + "g" * 64,
        "sha512:" + "0" * 64,
    ],
)
async def test_malformed_digest_is_400_digest_invalid(client: Client, bad: str) -> None:
    await expect_error(await client.get(f"/v2/repo/blobs/{bad}"), 400, "DIGEST_INVALID")
    await expect_error(await client.delete(f"/v2/repo/blobs/{bad}"), 400, "DIGEST_INVALID")
    assert (await client.head(f"/v2/repo/blobs/{bad}")).status == 400
