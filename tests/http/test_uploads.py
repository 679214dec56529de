"""Blob uploads: /v2/<name>/blobs/uploads/ and the upload session URLs."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from oci_helpers import (
    Client,
    blob_files,
    error_code,
    expect_error,
    push_blob,
    sha256,
    sha512,
    snapshot,
    start_upload,
)
from registries import serving
from yarl import URL

from hareg.clock import SystemClock
from hareg.config.model import LimitsConfig
from hareg.http.app import init_app
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.registry.hashing import ThreadedHashing
from hareg.registry.service import Registry
from hareg.storage.filesystem import FilesystemBlobStore

BLOB = bytes(range(256)) * 40 + b"tail"  # 10244 bytes
DIGEST = sha256(BLOB)


def upload_id(location: str) -> str:
    return URL(location).path.rsplit("/", 1)[1]


async def get_blob(client: Client, repo: str, digest: str) -> bytes:
    r = await client.get(f"/v2/{repo}/blobs/{digest}")
    assert r.status == 200, (r.status, await r.text())
    assert r.headers["Docker-Content-Digest"] == digest
    return await r.read()


async def patch(client: Client, location: str, data: bytes, start: int | None = None) -> tuple[int, str, str]:
    """PATCH a chunk (with Content-Range when ``start`` is given); status, Location, Range."""
    headers = {"Content-Type": "application/octet-stream"}
    if start is not None:
        headers["Content-Range"] = f"{start}-{start + len(data) - 1}"
    r = await client.patch(location, data=data, headers=headers)
    await r.read()
    return r.status, r.headers.get("Location", ""), r.headers.get("Range", "")


async def status(client: Client, location: str) -> str:
    r = await client.get(location)
    assert r.status == 204, (r.status, await r.text())
    assert r.headers["Location"]
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    return r.headers["Range"]


# ----------------------------------------------------------------- monolithic


async def test_post_then_put_monolithic(client: Client) -> None:
    r = await client.post("/v2/repo/blobs/uploads/")
    assert r.status == 202
    location = r.headers["Location"]
    assert location.startswith("/v2/repo/blobs/uploads/")
    uuid.UUID(upload_id(location))  # the location names a UUID session id
    assert r.headers["Range"] == "0-0"
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    r = await client.put(
        location, params={"digest": DIGEST}, data=BLOB, headers={"Content-Type": "application/octet-stream"}
    )
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"/v2/repo/blobs/{DIGEST}"
    assert r.headers["Docker-Content-Digest"] == DIGEST
    assert await get_blob(client, "repo", DIGEST) == BLOB
    # The session is closed.
    await expect_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")


async def test_post_without_trailing_slash(client: Client) -> None:
    r = await client.post("/v2/repo/blobs/uploads")
    assert r.status == 202
    assert r.headers["Location"].startswith("/v2/repo/blobs/uploads/")


async def test_single_post_with_digest(client: Client) -> None:
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": DIGEST}, data=BLOB)
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"/v2/repo/blobs/{DIGEST}"
    assert r.headers["Docker-Content-Digest"] == DIGEST
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_single_post_with_wrong_digest_links_nothing(client: Client, registry: Registry) -> None:
    before = await snapshot(registry)
    wrong = sha256(b"other")
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": wrong}, data=BLOB)
    await expect_error(r, 400, "DIGEST_INVALID")
    assert (await client.head(f"/v2/repo/blobs/{wrong}")).status == 404
    assert (await client.head(f"/v2/repo/blobs/{DIGEST}")).status == 404
    assert await snapshot(registry) == before


async def test_pushing_the_same_blob_twice(client: Client) -> None:
    assert await push_blob(client, "repo", BLOB) == DIGEST
    assert await push_blob(client, "repo", BLOB) == DIGEST
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_empty_blob(client: Client) -> None:
    empty = sha256(b"")
    location = await start_upload(client, "repo")
    r = await client.put(location, params={"digest": empty})
    assert r.status == 201, await r.text()
    assert r.headers["Docker-Content-Digest"] == empty
    r = await client.head(f"/v2/repo/blobs/{empty}")
    assert r.status == 200 and r.headers["Content-Length"] == "0"
    assert await get_blob(client, "repo", empty) == b""
    # And by a single POST into another repository.
    r = await client.post("/v2/other/blobs/uploads/", params={"digest": empty}, data=b"")
    assert r.status == 201
    assert await get_blob(client, "other", empty) == b""


# -------------------------------------------------------------------- chunked


async def test_chunked_upload_with_content_range(client: Client) -> None:
    location = await start_upload(client, "repo")
    pieces = [BLOB[:4000], BLOB[4000:8000], BLOB[8000:]]
    offset = 0
    for piece in pieces:
        code, location, rng = await patch(client, location, piece, start=offset)
        assert code == 202
        offset += len(piece)
        assert rng == f"0-{offset - 1}"
        assert location.startswith("/v2/repo/blobs/uploads/")
    r = await client.put(location, params={"digest": DIGEST})
    assert r.status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_out_of_order_first_chunk_is_416(client: Client) -> None:
    location = await start_upload(client, "repo")
    code, _, rng = await patch(client, location, BLOB[100:200], start=100)
    assert code == 416
    assert rng == "0-0"
    assert await status(client, location) == "0-0"
    # The session survives; the upload can start properly.
    code, location, rng = await patch(client, location, BLOB, start=0)
    assert code == 202 and rng == f"0-{len(BLOB) - 1}"
    assert (await client.put(location, params={"digest": DIGEST})).status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


@pytest.mark.parametrize(
    ("start", "what"),
    [(500, "overlapping"), (0, "a retry of the first chunk"), (1500, "a gap"), (999, "off by one")],
)
async def test_bad_chunk_is_416_with_real_offset_then_recovery(client: Client, start: int, what: str) -> None:
    location = await start_upload(client, "repo")
    code, location, rng = await patch(client, location, BLOB[:1000], start=0)
    assert (code, rng) == (202, "0-999")
    r = await client.patch(
        location, data=BLOB[start : start + 1000], headers={"Content-Range": f"{start}-{start + 999}"}
    )
    assert r.headers["Range"] == "0-999", what
    await expect_error(r, 416, "BLOB_UPLOAD_INVALID")
    # Recovery: ask where the upload stands and continue from there.
    r = await client.get(location)
    assert r.status == 204
    assert r.headers["Range"] == "0-999"
    location = r.headers["Location"]
    code, location, rng = await patch(client, location, BLOB[1000:], start=1000)
    assert (code, rng) == (202, f"0-{len(BLOB) - 1}")
    assert (await client.put(location, params={"digest": DIGEST})).status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_final_chunk_out_of_order_in_put_is_416(client: Client) -> None:
    location = await start_upload(client, "repo")
    code, location, _ = await patch(client, location, BLOB[:1000], start=0)
    assert code == 202
    r = await client.put(
        location,
        params={"digest": DIGEST},
        data=BLOB[2000:],
        headers={"Content-Range": f"2000-{len(BLOB) - 1}"},
    )
    assert r.headers["Range"] == "0-999"
    await expect_error(r, 416, "BLOB_UPLOAD_INVALID")
    # Nothing was linked and the session still works.
    assert (await client.head(f"/v2/repo/blobs/{DIGEST}")).status == 404
    assert await status(client, location) == "0-999"
    r = await client.put(
        location,
        params={"digest": DIGEST},
        data=BLOB[1000:],
        headers={"Content-Range": f"1000-{len(BLOB) - 1}"},
    )
    assert r.status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_concurrent_chunks_at_the_same_offset(client: Client) -> None:
    """Two writers race for the same range: one chunk is appended, the other gets 416."""
    location = await start_upload(client, "repo")
    results = await asyncio.gather(*(patch(client, location, BLOB[:5000], start=0) for _ in range(2)))
    assert sorted(code for code, _, _ in results) == [202, 416]
    assert {rng for _, _, rng in results} == {"0-4999"}
    assert await status(client, location) == "0-4999"
    _, location, _ = await patch(client, location, BLOB[5000:], start=5000)
    assert (await client.put(location, params={"digest": DIGEST})).status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_content_range_not_matching_content_length(client: Client) -> None:
    location = await start_upload(client, "repo")
    r = await client.patch(location, data=BLOB[:10], headers={"Content-Range": "0-99"})
    assert r.status == 416
    await error_code(r, 416)
    assert await status(client, location) == "0-0"


@pytest.mark.parametrize("header", ["abc", "0-", "-5", "bytes=a-b", "1-2-3", "0x0-0x9"])
async def test_malformed_content_range_is_400(client: Client, header: str) -> None:
    location = await start_upload(client, "repo")
    r = await client.patch(location, data=BLOB[:10], headers={"Content-Range": header})
    await expect_error(r, 400, "BLOB_UPLOAD_INVALID")
    assert await status(client, location) == "0-0"


async def test_patch_without_content_range_appends(client: Client) -> None:
    """docker-style: PATCH chunks with no Content-Range, each appended."""
    location = await start_upload(client, "repo")
    code, location, rng = await patch(client, location, BLOB[:5000])
    assert (code, rng) == (202, "0-4999")
    code, location, rng = await patch(client, location, BLOB[5000:])
    assert (code, rng) == (202, f"0-{len(BLOB) - 1}")
    assert (await client.put(location, params={"digest": DIGEST})).status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_patch_streamed_without_length(client: Client) -> None:
    """A PATCH body sent chunked (no Content-Length), as docker streams a layer."""

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(BLOB), 777):
            yield BLOB[i : i + 777]

    location = await start_upload(client, "repo")
    r = await client.patch(location, data=body(), headers={"Content-Type": "application/octet-stream"})
    assert r.status == 202, await r.text()
    assert r.headers["Range"] == f"0-{len(BLOB) - 1}"
    r = await client.put(r.headers["Location"], params={"digest": DIGEST}, headers={"Content-Length": "0"})
    assert r.status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_final_chunk_in_put(client: Client) -> None:
    location = await start_upload(client, "repo")
    code, location, _ = await patch(client, location, BLOB[:6000], start=0)
    assert code == 202
    r = await client.put(
        location,
        params={"digest": DIGEST},
        data=BLOB[6000:],
        headers={"Content-Range": f"6000-{len(BLOB) - 1}", "Content-Type": "application/octet-stream"},
    )
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"/v2/repo/blobs/{DIGEST}"
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_final_chunk_in_put_without_content_range(client: Client) -> None:
    location = await start_upload(client, "repo")
    code, location, _ = await patch(client, location, BLOB[:6000])
    assert code == 202
    r = await client.put(location, params={"digest": DIGEST}, data=BLOB[6000:])
    assert r.status == 201
    assert await get_blob(client, "repo", DIGEST) == BLOB


async def test_status_is_204_with_location_and_range(client: Client) -> None:
    location = await start_upload(client, "repo")
    assert await status(client, location) == "0-0"
    _, location, _ = await patch(client, location, BLOB[:10], start=0)
    r = await client.get(location)
    assert r.status == 204
    assert r.headers["Range"] == "0-9"
    assert URL(r.headers["Location"]).path == URL(location).path
    assert await r.read() == b""


async def test_head_of_an_upload_is_its_status_without_a_body(client: Client) -> None:
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB[:10], start=0)
    r = await client.head(location)
    assert r.status == 204
    assert r.headers["Range"] == "0-9"
    assert URL(r.headers["Location"]).path == URL(location).path
    assert r.headers["Docker-Upload-UUID"] == upload_id(location)
    assert await r.read() == b""
    assert (await client.delete(location)).status == 204
    r = await client.head(location)
    assert r.status == 404
    assert await r.read() == b""


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Range": "garbage"},
        {"Content-Range": "5-2"},
        {"Content-Range": "0-99"},  # does not match Content-Length
        {"Content-Range": "10-19"},  # where the upload ended
        {"Content-Range": "99999999999999999999999-1"},
        {"Content-Type": "text/plain", "Content-Range": "0-0"},
    ],
)
async def test_patch_or_put_after_cancel_is_upload_unknown_whatever_the_request_says(
    client: Client, headers: dict[str, str]
) -> None:
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB[:10], start=0)
    assert (await client.delete(location)).status == 204
    r = await client.patch(location, data=BLOB[10:20], headers=headers)
    await expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    r = await client.put(location, params={"digest": DIGEST}, data=BLOB[10:20], headers=headers)
    await expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    for digest in ("", "sha256:nothex", "md5:" + "0" * 32):
        r = await client.put(location, params={"digest": digest}, data=BLOB[10:20], headers=headers)
        await expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
    r = await client.put(location, data=BLOB[10:20], headers=headers)
    await expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN")


async def test_cancel_is_204_then_404(client: Client, registry: Registry) -> None:
    before = await snapshot(registry)
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB[:10], start=0)
    r = await client.delete(location)
    assert r.status == 204
    await expect_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.delete(location), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.patch(location, data=b"x"), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.put(location, params={"digest": DIGEST}), 404, "BLOB_UPLOAD_UNKNOWN")
    after = await snapshot(registry)
    # No staged bytes or session left behind (the repository record may remain).
    assert not [f for f in after.files if f.startswith("uploads/")]
    assert {k for k in after.keys if b"/u/" in k} == {k for k in before.keys if b"/u/" in k}


async def test_wrong_digest_on_put_is_400_and_nothing_is_linked(client: Client, registry: Registry) -> None:
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB, start=0)
    wrong = sha256(b"not the content")
    r = await client.put(location, params={"digest": wrong})
    entry = await expect_error(r, 400, "DIGEST_INVALID")
    assert entry["detail"]["actual"] == DIGEST
    assert (await client.head(f"/v2/repo/blobs/{wrong}")).status == 404
    assert (await client.head(f"/v2/repo/blobs/{DIGEST}")).status == 404
    assert blob_files(registry) == set()


async def test_put_without_digest_is_400_and_upload_survives(client: Client) -> None:
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB, start=0)
    await expect_error(await client.put(location), 400, "DIGEST_INVALID")
    await expect_error(await client.put(location, params={"digest": ""}), 400, "DIGEST_INVALID")
    assert await status(client, location) == f"0-{len(BLOB) - 1}"
    assert (await client.put(location, params={"digest": DIGEST})).status == 201


@pytest.mark.parametrize("bad", ["sha256:1234", "md5:" + "0" * 32, "sha256:" + "F" * 64, "nonsense"])
async def test_put_with_malformed_digest_is_400(client: Client, bad: str) -> None:
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB, start=0)
    await expect_error(await client.put(location, params={"digest": bad}), 400, "DIGEST_INVALID")
    assert (await client.put(location, params={"digest": DIGEST})).status == 201


# -------------------------------------------------------------------- digests


async def test_sha512_with_digest_algorithm_param(client: Client) -> None:
    digest = sha512(BLOB)
    location = await start_upload(client, "repo", **{"digest-algorithm": "sha512"})
    _, location, _ = await patch(client, location, BLOB[:3000], start=0)
    _, location, _ = await patch(client, location, BLOB[3000:], start=3000)
    r = await client.put(location, params={"digest": digest})
    assert r.status == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"] == f"/v2/repo/blobs/{digest}"
    assert await get_blob(client, "repo", digest) == BLOB


async def test_sha512_digest_on_a_default_session(client: Client) -> None:
    digest = sha512(BLOB)
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB, start=0)
    r = await client.put(location, params={"digest": digest})
    assert r.status == 201
    assert await get_blob(client, "repo", digest) == BLOB


async def test_sha512_single_post(client: Client) -> None:
    digest = sha512(BLOB)
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": digest}, data=BLOB)
    assert r.status == 201
    assert await get_blob(client, "repo", digest) == BLOB


async def test_wrong_sha512_digest_is_400(client: Client) -> None:
    location = await start_upload(client, "repo", **{"digest-algorithm": "sha512"})
    _, location, _ = await patch(client, location, BLOB, start=0)
    await expect_error(await client.put(location, params={"digest": sha512(b"x")}), 400, "DIGEST_INVALID")


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "SHA256", "sha384", ""])
async def test_unsupported_digest_algorithm_param_is_400(
    client: Client, registry: Registry, algorithm: str
) -> None:
    before = await snapshot(registry)
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest-algorithm": algorithm})
    await expect_error(r, 400, "DIGEST_INVALID")
    assert await snapshot(registry) == before


@pytest.mark.parametrize("bad", ["md5:" + "0" * 32, "sha1:" + "0" * 40, "sha256:short", "sha256:" + "A" * 64])
async def test_unsupported_or_malformed_digest_on_single_post_is_400(
    client: Client, registry: Registry, bad: str
) -> None:
    before = await snapshot(registry)
    r = await client.post("/v2/repo/blobs/uploads/", params={"digest": bad}, data=BLOB)
    await expect_error(r, 400, "DIGEST_INVALID")
    assert await snapshot(registry) == before


# ---------------------------------------------------------------- session ids


@pytest.mark.parametrize(
    "bad_id",
    [
        "not-a-uuid",
        str(uuid.uuid4()),  # well formed, never issued
        str(uuid.uuid4()).upper(),
        "..%2F..%2Fetc%2Fpasswd",
        "a" * 300,
        "%00",
    ],
)
async def test_malformed_or_unknown_upload_ids_are_404(
    client: Client, registry: Registry, bad_id: str
) -> None:
    await start_upload(client, "repo")
    before = await snapshot(registry)
    url = URL(f"/v2/repo/blobs/uploads/{bad_id}", encoded=True)
    await expect_error(await client.get(url), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.patch(url, data=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(
        await client.put(url, params={"digest": sha256(b"abc")}, data=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    await expect_error(await client.delete(url), 404, "BLOB_UPLOAD_UNKNOWN")
    assert await snapshot(registry) == before


async def test_session_id_without_its_signed_state_is_404(client: Client) -> None:
    location = await start_upload(client, "repo")
    bare = URL(location).path
    await expect_error(await client.get(bare), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.patch(bare, data=b"abc"), 404, "BLOB_UPLOAD_UNKNOWN")
    assert await status(client, location) == "0-0"


async def test_upload_of_one_repo_via_another_repos_url_is_404(client: Client, registry: Registry) -> None:
    location = await start_upload(client, "one")
    _, location, _ = await patch(client, location, BLOB[:100], start=0)
    await start_upload(client, "two")
    before = await snapshot(registry)
    other = location.replace("/v2/one/", "/v2/two/", 1)
    await expect_error(await client.get(other), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(await client.patch(other, data=BLOB[100:]), 404, "BLOB_UPLOAD_UNKNOWN")
    await expect_error(
        await client.put(other, params={"digest": DIGEST}, data=BLOB[100:]), 404, "BLOB_UPLOAD_UNKNOWN"
    )
    await expect_error(await client.delete(other), 404, "BLOB_UPLOAD_UNKNOWN")
    assert await snapshot(registry) == before
    # The session is untouched in its own repository.
    assert await status(client, location) == "0-99"
    r = await client.put(location, params={"digest": DIGEST}, data=BLOB[100:])
    assert r.status == 201
    assert (await client.head(f"/v2/two/blobs/{DIGEST}")).status == 404


async def test_upload_continues_on_another_replica(
    client: Client, registry: Registry, tmp_path: Path
) -> None:
    """No sticky sessions: a second registry on the same etcd prefix and storage
    finishes an upload the first one started (re-hashing the staged bytes)."""
    location = await start_upload(client, "repo")
    _, location, _ = await patch(client, location, BLOB[:5000], start=0)
    store_root = registry.store.root if isinstance(registry.store, FilesystemBlobStore) else tmp_path
    store = FilesystemBlobStore(store_root)
    other = Registry(
        registry.kv, store, SystemClock(), RandomIds(), prefix=registry.meta.keys.root.decode(), replica="b"
    )
    await other.start()
    try:
        async with TestClient(TestServer(init_app(other))) as client_b:
            assert await status(client_b, location) == "0-4999"
            code, location, rng = await patch(client_b, location, BLOB[5000:], start=5000)
            assert (code, rng) == (202, f"0-{len(BLOB) - 1}")
            r = await client.put(location, params={"digest": DIGEST})
            assert r.status == 201, await r.text()
            assert await get_blob(client_b, "repo", DIGEST) == BLOB
    finally:
        await other.stop()
        await store.close()


# --------------------------------------------------------------------- mounts


async def test_cross_repo_mount_is_201(client: Client) -> None:
    digest = await push_blob(client, "src", BLOB)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status == 201, await r.text()
    assert r.headers["Location"] == f"/v2/dst/blobs/{digest}"
    assert r.headers["Docker-Content-Digest"] == digest
    assert await get_blob(client, "dst", digest) == BLOB
    # Mounting what is already there is also a 201.
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status == 201


async def test_mount_from_a_repo_lacking_the_blob_starts_an_upload(client: Client) -> None:
    await push_blob(client, "src", b"something else")
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": DIGEST, "from": "src"})
    assert r.status == 202
    location = r.headers["Location"]
    assert location.startswith("/v2/dst/blobs/uploads/")
    assert (await client.head(f"/v2/dst/blobs/{DIGEST}")).status == 404
    # The new session is a working upload.
    r = await client.put(location, params={"digest": DIGEST}, data=BLOB)
    assert r.status == 201
    assert await get_blob(client, "dst", DIGEST) == BLOB


async def test_mount_from_unknown_repo_or_without_from_starts_an_upload(client: Client) -> None:
    digest = await push_blob(client, "src", BLOB)
    for params in ({"mount": digest, "from": "nosuchrepo"}, {"mount": digest}):
        r = await client.post("/v2/dst/blobs/uploads/", params=params)
        assert r.status == 202, params
        assert r.headers["Location"].startswith("/v2/dst/blobs/uploads/")
    assert (await client.head(f"/v2/dst/blobs/{digest}")).status == 404


@pytest.mark.parametrize("bad_from", ["UPPER", "../src", "src/", "", "a" * 300, "src\x00"])
async def test_mount_with_invalid_from_starts_an_upload(client: Client, bad_from: str) -> None:
    digest = await push_blob(client, "src", BLOB)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": bad_from})
    assert r.status == 202
    assert r.headers["Location"].startswith("/v2/dst/blobs/uploads/")
    assert (await client.head(f"/v2/dst/blobs/{digest}")).status == 404


async def test_mount_with_invalid_digest_is_400(client: Client, registry: Registry) -> None:
    await push_blob(client, "src", BLOB)
    before = await snapshot(registry)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": "sha256:nope", "from": "src"})
    await expect_error(r, 400, "DIGEST_INVALID")
    assert await snapshot(registry) == before


async def test_mount_into_invalid_repository_is_400(client: Client) -> None:
    digest = await push_blob(client, "src", BLOB)
    r = await client.post("/v2/Dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    await expect_error(r, 400, "NAME_INVALID")


# ---------------------------------------------------------- threaded hashing


async def test_uploads_with_digests_computed_beside_the_loop(kv: EtcdKV, tmp_path: Path) -> None:
    """What `hareg serve` runs: chunks of 64 KiB and more are hashed in a thread
    pool while they are written; digests are still checked before anything is linked."""
    rng = random.Random(3)
    big = rng.randbytes(3 * 1024 * 1024 + 17)
    digest = sha256(big)
    store = FilesystemBlobStore(tmp_path / "blobs")
    with ThreadPoolExecutor(max_workers=2) as pool:
        reg = Registry(
            kv,
            store,
            SystemClock(),
            RandomIds(),
            prefix=f"/test-{uuid.uuid4().hex[:12]}",
            hashing=ThreadedHashing(pool, threshold=64 * 1024),
        )
        await reg.start()
        try:
            async with TestClient(TestServer(init_app(reg))) as client:
                assert await push_blob(client, "mono", big) == digest
                assert await get_blob(client, "mono", digest) == big
                # Chunked, over three PATCHes and a final PUT chunk (the running hash is kept).
                location = await start_upload(client, "chunked")
                offset = 0
                for size in (700_000, 1_300_000, 65_536):
                    code, location, _ = await patch(
                        client, location, big[offset : offset + size], start=offset
                    )
                    assert code == 202
                    offset += size
                r = await client.put(location, params={"digest": digest}, data=big[offset:])
                assert r.status == 201, await r.text()
                assert await get_blob(client, "chunked", digest) == big
                # A wrong digest is refused, monolithic and chunked, and links nothing.
                before = await snapshot(reg)
                wrong = sha256(big + b"!")
                r = await client.post("/v2/mono/blobs/uploads/", params={"digest": wrong}, data=big)
                await expect_error(r, 400, "DIGEST_INVALID")
                location = await start_upload(client, "chunked")
                code, location, _ = await patch(client, location, big, start=0)
                r = await client.put(location, params={"digest": wrong})
                await expect_error(r, 400, "DIGEST_INVALID")
                assert (await client.head(f"/v2/mono/blobs/{wrong}")).status == 404
                after = await snapshot(reg)
                assert after.files == before.files
        finally:
            await reg.stop()
            await store.close()


# ---------------------------------------------------------- limits: caps and expiry


class ShiftedClock(SystemClock):
    """The real clock, with wall-clock time moved forward on demand."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


@asynccontextmanager
async def registry_with(
    kv: EtcdKV, tmp_path: Path, limits: LimitsConfig, clock: SystemClock | None = None
) -> AsyncIterator[tuple[Registry, Client]]:
    async with serving(kv, FilesystemBlobStore(tmp_path / "blobs"), clock=clock, limits=limits) as served:
        yield served


async def test_upload_sessions_are_capped_per_repository_and_in_all(kv: EtcdKV, tmp_path: Path) -> None:
    limits = LimitsConfig(max_upload_sessions=3, max_upload_sessions_per_repository=2)
    async with registry_with(kv, tmp_path, limits) as (_, client):
        first = await start_upload(client, "a")
        await start_upload(client, "a")
        r = await client.post("/v2/a/blobs/uploads/")
        entry = await expect_error(r, 429, "TOOMANYREQUESTS")
        assert "limits.maxUploadSessionsPerRepository" in entry["message"]
        assert entry["detail"] == {"limit": "limits.maxUploadSessionsPerRepository"}
        await start_upload(client, "b")  # another repository has room, and the registry one more
        r = await client.post("/v2/c/blobs/uploads/")
        entry = await expect_error(r, 429, "TOOMANYREQUESTS")
        assert "limits.maxUploadSessions" in entry["message"] and "PerRepository" not in entry["message"]
        # A session that ends (cancelled here; finished alike) makes room again.
        assert (await client.delete(first)).status == 204
        await start_upload(client, "a")


async def test_blob_size_is_capped_while_streaming(kv: EtcdKV, tmp_path: Path) -> None:
    async with registry_with(kv, tmp_path, LimitsConfig(max_blob_size=1000)) as (reg, client):
        before = await snapshot(reg)
        # Monolithic, over the cap: refused, nothing stored.
        big = b"m" * 1001
        r = await client.post("/v2/repo/blobs/uploads/", params={"digest": sha256(big)}, data=big)
        entry = await expect_error(r, 413, "SIZE_INVALID")
        assert "limits.maxBlobSize" in entry["message"]
        assert (await snapshot(reg)).files == before.files
        # Chunked: a chunk that declares too many bytes is refused before it is read...
        data = bytes(range(250)) * 4
        location = await start_upload(client, "repo")
        code, location, _ = await patch(client, location, data[:600], start=0)
        assert code == 202
        r = await client.patch(location, data=b"z" * 401, headers={"Content-Range": "600-1000"})
        await expect_error(r, 413, "SIZE_INVALID")

        # ...and one without a length as soon as its bytes pass the cap.
        async def stream() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"z" * 100

        r = await client.patch(location, data=stream())
        entry = await expect_error(r, 413, "SIZE_INVALID")
        assert entry["detail"]["limit"] == "limits.maxBlobSize"
        r = await client.get(location)
        assert r.status == 204 and r.headers["Range"] == "0-599"
        # A blob of exactly the cap is accepted.
        r = await client.put(location, params={"digest": sha256(data)}, data=data[600:])
        assert r.status == 201, await r.text()
        assert await get_blob(client, "repo", sha256(data)) == data


async def test_upload_urls_expire_with_their_session(kv: EtcdKV, tmp_path: Path) -> None:
    clock = ShiftedClock()
    async with registry_with(kv, tmp_path, LimitsConfig(), clock) as (reg, client):
        location = await start_upload(client, "repo")
        code, location, _ = await patch(client, location, b"abc", start=0)
        assert code == 202 and (await client.get(location)).status == 204
        # Past the session's lifetime (its lease TTL after its last write), the URL names no upload.
        clock.offset = reg.meta.upload_ttl + reg.meta.upload_lease_window + 5
        for r in (
            await client.get(location),
            await client.patch(location, data=b"d", headers={"Content-Range": "3-3"}),
            await client.put(location, params={"digest": sha256(b"abc")}),
            await client.delete(location),
        ):
            entry = await expect_error(r, 404, "BLOB_UPLOAD_UNKNOWN")
            assert "expired" in entry["message"]
