"""Blob GET, HEAD and DELETE: /v2/<name>/blobs/<digest>."""

from __future__ import annotations

import pytest
from oci_helpers import Client, expect_error, push_blob, push_image, sha256, sha512

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


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-9", 0, 9),  # first bytes
        ("bytes=100-199", 100, 199),
        ("bytes=-10", 1014, 1023),  # suffix
        ("bytes=1000-", 1000, 1023),  # open-ended
        ("bytes=1023-1023", 1023, 1023),  # the last byte
        ("bytes=1000-5000", 1000, 1023),  # end past the blob is clipped
    ],
)
async def test_range_requests(client: Client, range_header: str, start: int, end: int) -> None:
    digest = await push_blob(client, "repo", BLOB)
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": range_header})
    assert r.status == 206
    assert await r.read() == BLOB[start : end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert r.headers["Content-Length"] == str(end - start + 1)
    assert r.headers["Docker-Content-Digest"] == digest


@pytest.mark.parametrize("range_header", ["bytes=1024-", "bytes=2000-3000", "bytes=5-2"])
async def test_unsatisfiable_range_is_416(client: Client, range_header: str) -> None:
    digest = await push_blob(client, "repo", BLOB)
    r = await client.get(f"/v2/repo/blobs/{digest}", headers={"Range": range_header})
    assert r.headers["Content-Range"] == f"bytes */{len(BLOB)}"
    await expect_error(r, 416, "BLOB_UPLOAD_INVALID")


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
        entry = await expect_error(r, 409, "DENIED")
        assert image.digest in entry["detail"]["manifests"]
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
