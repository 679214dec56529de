"""The pull-through cache over HTTP against real upstreams: CNCF distribution
2.8 (with and without htpasswd), a counting proxy in front of it that can be
told to lie, skopeo as the client (docs/pull-through.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import obstore
import pytest
from aiohttp.test_utils import TestClient, TestServer
from registries import running
from seaweedfs_fixtures import S3StoreFactory
from token_flow import access_control, write_htpasswd
from upstream_fixtures import (
    OCI_MANIFEST,
    Distribution,
    counting_proxy,
    distribution,
    push_image,
    push_index,
    sha256,
)

from hareg.clock import SystemClock
from hareg.config.model import BindingConfig, ProxyConfig
from hareg.http.app import init_app
from hareg.http.pull_through import STALE_HEADER
from hareg.kv.etcd import EtcdKV
from hareg.processes.etcd import EtcdProcess
from hareg.registry.pull_through import Mirror
from hareg.registry.service import Registry
from hareg.registry.streams import one_chunk
from hareg.storage.base import BlobStore
from hareg.storage.filesystem import FilesystemBlobStore
from hareg.upstream.client import Credentials, RegistryClient

ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
TOOL_TIMEOUT = 180

pytestmark = pytest.mark.skipif(not shutil.which("docker-registry"), reason="docker-registry is needed")


class OffsetClock(SystemClock):
    """The real clock, whose wall time a test can move forward (past a ttl)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


@asynccontextmanager
async def mirror_of(
    kv: EtcdKV,
    tmp_path: Path,
    remote: str,
    *,
    ttl: float = 3600.0,
    clock: SystemClock | None = None,
    credentials: Credentials | None = None,
    proxy: ProxyConfig | None = None,
    store: BlobStore | None = None,
) -> AsyncIterator[tuple[Registry, TestClient[Any, Any], str]]:
    """hareg mirroring ``remote`` under the prefix ``mirror``, served on 127.0.0.1
    (its blob store: ``store``, else a directory)."""
    clock = clock or SystemClock()
    upstream = RegistryClient(remote, clock, credentials=credentials, proxy=proxy)
    try:
        async with (
            running(
                kv,
                store or FilesystemBlobStore(tmp_path / "cache"),
                clock=clock,
                mirrors=[Mirror("mirror", upstream, ttl)],
            ) as reg,
            TestClient(TestServer(init_app(reg), host="127.0.0.1")) as client,
        ):
            yield reg, client, f"127.0.0.1:{client.port}"
    finally:
        await upstream.close()


def skopeo(*args: str) -> str:
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"skopeo {' '.join(args)} failed:\n{proc.stderr}"
    return proc.stdout


async def pull(client: TestClient[Any, Any], name: str, ref: str) -> aiohttp.ClientResponse:
    response = await client.get(f"/v2/{name}/manifests/{ref}", headers={"Accept": ACCEPT})
    await response.read()
    return response


async def assert_nothing_stored(reg: Registry, repo: str, digest: str) -> None:
    assert await reg.store.stat(digest) is None
    assert await reg.meta.get_link(repo, digest) is None


@pytest.fixture
def upstream(tmp_path: Path) -> Any:
    with distribution(tmp_path / "upstream") as running_upstream:
        yield running_upstream


@pytest.mark.skipif(not shutil.which("skopeo"), reason="skopeo is needed")
async def test_first_pull_matches_upstream_and_a_second_asks_the_upstream_nothing(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "first")
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url) as (
            reg,
            _,
            host,
        ),
    ):
        ref = f"docker://{host}/mirror/lib/app:v1"
        inspected = json.loads(await asyncio.to_thread(skopeo, "inspect", "--tls-verify=false", ref))
        assert inspected["Digest"] == image.digest
        await asyncio.to_thread(skopeo, "copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'one'}:v1")
        for digest, data in image.blobs.items():
            assert (tmp_path / "one" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes() == data
            assert await reg.meta.get_link("mirror/lib/app", digest) is not None
        assert proxy.count("/blobs/") == len(image.blobs)  # each fetched once
        before = len(proxy.requests)
        await asyncio.to_thread(skopeo, "copy", "--src-tls-verify=false", ref, f"oci:{tmp_path / 'two'}:v1")
        by_digest = f"docker://{host}/mirror/lib/app@{image.digest}"
        assert (
            json.loads(await asyncio.to_thread(skopeo, "inspect", "--tls-verify=false", by_digest))["Digest"]
            == image.digest
        )
        assert proxy.requests[before:] == []


async def test_a_moved_upstream_tag_is_seen_after_the_ttl_and_not_before(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    first = await push_image(upstream.url, "lib/app", "v1", "first", layer_size=1000)
    clock = OffsetClock()
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url, ttl=60.0, clock=clock) as (_, client, _),
    ):
        response = await pull(client, "mirror/lib/app", "v1")
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == first.digest
        second = await push_image(upstream.url, "lib/app", "v1", "second", layer_size=1000)
        asked = len(proxy.requests)
        response = await pull(client, "mirror/lib/app", "v1")
        assert response.headers["Docker-Content-Digest"] == first.digest  # within the ttl
        assert STALE_HEADER not in response.headers
        assert len(proxy.requests) == asked  # answered without asking
        clock.offset += 61.0
        response = await pull(client, "mirror/lib/app", "v1")
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == second.digest
        # The old digest stays pullable from the cache.
        assert (await pull(client, "mirror/lib/app", first.digest)).status == 200
        # Mirrored repositories are in the catalog.
        catalog = await (await client.get("/v2/_catalog")).json()
        assert "mirror/lib/app" in catalog["repositories"]


async def test_with_the_upstream_killed_cached_pulls_still_work(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "kept", layer_size=1000)
    # ttl 0: every pull by tag asks the upstream.
    async with mirror_of(kv, tmp_path, upstream.url, ttl=0.0) as (_, client, _):
        assert (await pull(client, "mirror/lib/app", "v1")).status == 200
        for digest, data in image.blobs.items():
            got = await client.get(f"/v2/mirror/lib/app/blobs/{digest}")
            assert await got.read() == data
        upstream.kill()
        response = await pull(client, "mirror/lib/app", "v1")
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert response.headers[STALE_HEADER] == "stale"
        assert (await pull(client, "mirror/lib/app", image.digest)).status == 200
        for digest, data in image.blobs.items():
            got = await client.get(f"/v2/mirror/lib/app/blobs/{digest}")
            assert await got.read() == data
        # What was never cached: a clear error that names the upstream.
        missing = await pull(client, "mirror/lib/other", "v1")
        assert missing.status == 503
        error = (await missing.json())["errors"][0]
        assert error["code"] == "UNAVAILABLE"
        assert upstream.url in error["message"]
        metrics = await (await client.get("/metrics")).text()
        for line in (
            'hareg_pull_through_pulls_total{kind="manifest",prefix="mirror",result="miss"} 1.0',
            'hareg_pull_through_pulls_total{kind="manifest",prefix="mirror",result="stale"} 1.0',
            'hareg_pull_through_pulls_total{kind="manifest",prefix="mirror",result="hit"} 1.0',
            'hareg_pull_through_pulls_total{kind="blob",prefix="mirror",result="miss"} 3.0',
            'hareg_pull_through_pulls_total{kind="blob",prefix="mirror",result="hit"} 3.0',
            'hareg_pull_through_upstream_errors_total{kind="unreachable",prefix="mirror"} 2.0',
        ):
            assert line in metrics, metrics
        fetched = sum(len(b) for b in image.blobs.values()) + len(image.manifest)
        assert f'hareg_pull_through_fetched_bytes_total{{prefix="mirror"}} {float(fetched)}' in metrics


@pytest.mark.parametrize("lie", ["corrupt", "truncate"])
async def test_a_lying_upstream_blob_fails_the_pull_and_stores_nothing(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution, lie: str
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "lies")
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url) as (
            reg,
            client,
            _,
        ),
    ):
        assert (await pull(client, "mirror/lib/app", "v1")).status == 200
        proxy.lie = lie
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"/v2/mirror/lib/app/blobs/{layer}") as response:
                # The headers went out before the upstream's bytes could be judged;
                # the body breaks off before its end.
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    received += chunk
        assert received != image.blobs[layer]
        assert len(received) < len(image.blobs[layer])
        await assert_nothing_stored(reg, "mirror/lib/app", layer)
        # An honest upstream again: the same pull succeeds and is stored.
        proxy.lie = None
        async with client.get(f"/v2/mirror/lib/app/blobs/{layer}") as response:
            assert await response.read() == image.blobs[layer]
        assert await reg.meta.get_link("mirror/lib/app", layer) is not None


def object_keys(store: Any) -> list[str]:
    """Every object under an S3 store's key prefix (what the bucket holds for it)."""
    inner = store.inner
    out: list[str] = []
    for batch in obstore.list(inner._store, inner.key_prefix.rstrip("/"), chunk_size=1000):
        out.extend(m["path"] for m in batch)
    return sorted(out)


@pytest.mark.parametrize("lie", ["corrupt", "truncate"])
async def test_a_broken_upstream_blob_into_s3_stores_nothing(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution, s3_store: S3StoreFactory, lie: str
) -> None:
    """The tee into the S3 store (SeaweedFS; 64 KiB parts, so several are
    written before the upstream's bytes are judged): a corrupt or cut
    transfer breaks the client's body, and neither the blob nor a staged
    part is left in the bucket; an honest transfer then stores it."""
    image = await push_image(upstream.url, "lib/app", "v1", "s3 lies")
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    store = s3_store(part_size=64 * 1024)
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url, store=store) as (reg, client, _),
    ):
        assert (await pull(client, "mirror/lib/app", "v1")).status == 200
        before = await asyncio.to_thread(object_keys, store)
        proxy.lie = lie
        received = b""
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"/v2/mirror/lib/app/blobs/{layer}") as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    received += chunk
        assert len(received) < len(image.blobs[layer])
        await assert_nothing_stored(reg, "mirror/lib/app", layer)
        # The staged parts go as the failed transfer is cleaned up (bounded wait).
        async with asyncio.timeout(30):
            while (left := await asyncio.to_thread(object_keys, store)) != before:
                await asyncio.sleep(0.05)
        assert left == before
        proxy.lie = None
        async with client.get(f"/v2/mirror/lib/app/blobs/{layer}") as response:
            assert await response.read() == image.blobs[layer]
        assert await reg.store.stat(layer) == len(image.blobs[layer])


async def test_a_manifest_that_does_not_match_its_digest_is_refused(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "bad manifest", layer_size=1000)
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url) as (
            reg,
            client,
            _,
        ),
    ):
        proxy.lie = "corrupt-manifest"
        response = await pull(client, "mirror/lib/app", "v1")
        assert response.status == 502
        error = (await response.json())["errors"][0]
        assert proxy_url in error["message"]
        assert image.digest in error["message"]
        assert await reg.meta.get_manifest("mirror/lib/app", image.digest) is None
        assert await reg.meta.get_tagged_manifest("mirror/lib/app", "v1") is None


async def test_pushes_and_deletes_under_the_prefix_are_refused(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "read-only", layer_size=1000)
    async with mirror_of(kv, tmp_path, upstream.url) as (reg, client, _):
        assert (await pull(client, "mirror/lib/app", "v1")).status == 200
        attempts = [
            client.put(
                "/v2/mirror/lib/app/manifests/v2",
                data=image.manifest,
                headers={"Content-Type": ACCEPT.split(",")[0]},
            ),
            client.post("/v2/mirror/lib/app/blobs/uploads/"),
            client.delete(f"/v2/mirror/lib/app/manifests/{image.digest}"),
            client.delete("/v2/mirror/lib/app/manifests/v1"),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status == 403
            error = (await response.json())["errors"][0]
            assert error["code"] == "DENIED"
            assert "read-only mirror" in error["message"]
        assert await reg.meta.get_manifest("mirror/lib/app", image.digest) is not None
        # Outside the prefix, pushes are as ever.
        assert (await client.post("/v2/own/app/blobs/uploads/")).status == 202


async def test_an_htpasswd_upstream_with_and_without_credentials(kv: EtcdKV, tmp_path: Path) -> None:
    with distribution(tmp_path / "auth-upstream", ("puller", "s3cret-pw")) as upstream:
        image = await push_image(upstream.url, "lib/app", "v1", "auth", upstream.auth, layer_size=1000)
        async with mirror_of(
            kv, tmp_path / "a", upstream.url, credentials=Credentials("puller", "s3cret-pw")
        ) as (_, client, _):
            response = await pull(client, "mirror/lib/app", "v1")
            assert response.status == 200
            assert response.headers["Docker-Content-Digest"] == image.digest
            layer = json.loads(image.manifest)["layers"][0]["digest"]
            got = await client.get(f"/v2/mirror/lib/app/blobs/{layer}")
            assert await got.read() == image.blobs[layer]
        for credentials in (None, Credentials("puller", "wrong")):
            async with mirror_of(kv, tmp_path / "b", upstream.url, credentials=credentials) as (_, client, _):
                response = await pull(client, "mirror/lib/app", "v1")
                assert response.status == 502
                message = (await response.json())["errors"][0]["message"]
                assert upstream.url in message
                assert "s3cret-pw" not in message and "wrong" not in message.split(upstream.url)[0]


async def test_a_token_flow_upstream_a_second_hareg(kv: EtcdKV, tmp_path: Path) -> None:
    """A second hareg with auth as the upstream: Bearer challenges, tokens from
    its realm with the configured credentials, anonymous tokens where anonymous may pull."""
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"puller": "pull-pw"})
    bindings = [
        BindingConfig("puller", "viewer", ("lib/*",)),
        BindingConfig("anonymous", "viewer", ("public/*",)),
    ]
    async with running(kv, FilesystemBlobStore(tmp_path / "upstream")) as upstream_reg:
        control = await access_control(upstream_reg, htpasswd, bindings)
        private = await push_to(upstream_reg, "lib/app", "v1", b"private layer")
        public = await push_to(upstream_reg, "public/app", "v1", b"public layer")
        async with TestServer(init_app(upstream_reg, access=control), host="127.0.0.1") as server:
            remote = str(server.make_url("")).rstrip("/")
            async with mirror_of(
                kv, tmp_path / "a", remote, credentials=Credentials("puller", "pull-pw")
            ) as (_, client, _):
                response = await pull(client, "mirror/lib/app", "v1")
                assert response.status == 200
                assert response.headers["Docker-Content-Digest"] == private
                layer = await client.get(f"/v2/mirror/lib/app/blobs/{sha256(b'private layer')}")
                assert await layer.read() == b"private layer"
            async with mirror_of(kv, tmp_path / "b", remote) as (_, client, _):
                response = await pull(client, "mirror/public/app", "v1")  # an anonymous token
                assert response.headers["Docker-Content-Digest"] == public
                refused = await pull(client, "mirror/lib/app", "v1")
                assert refused.status == 502
                assert remote in (await refused.json())["errors"][0]["message"]


async def push_to(reg: Registry, repo: str, tag: str, layer: bytes) -> str:
    """An image pushed through the service layer (the upstream's own auth is not under test here)."""
    config = b'{"architecture":"amd64","os":"linux"}'
    for blob in (config, layer):
        await reg.uploads.monolithic(repo, sha256(blob), one_chunk(blob), length=len(blob))
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    return (await reg.manifests.put(repo, tag, body, OCI_MANIFEST)).digest


async def test_an_index_is_stored_before_its_children_which_are_fetched_when_pulled(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    amd = await push_image(upstream.url, "lib/multi", "amd", "amd64", layer_size=1000)
    arm = await push_image(upstream.url, "lib/multi", "arm", "arm64", layer_size=1000)
    index_digest, index_body = await push_index(upstream.url, "lib/multi", "v1", [amd, arm])
    async with mirror_of(kv, tmp_path, upstream.url) as (reg, client, _):
        response = await client.get(
            "/v2/mirror/lib/multi/manifests/v1", headers={"Accept": "application/vnd.oci.image.index.v1+json"}
        )
        assert response.status == 200
        assert response.headers["Docker-Content-Digest"] == index_digest
        assert await response.read() == index_body
        # Sparse: the children are not fetched until pulled.
        assert await reg.meta.get_manifest("mirror/lib/multi", amd.digest) is None
        child = await pull(client, "mirror/lib/multi", arm.digest)
        assert child.status == 200
        assert await child.read() == arm.manifest
        for digest, data in arm.blobs.items():
            got = await client.get(f"/v2/mirror/lib/multi/blobs/{digest}")
            assert await got.read() == data
        assert await reg.meta.get_manifest("mirror/lib/multi", arm.digest) is not None
        assert await reg.meta.get_manifest("mirror/lib/multi", amd.digest) is None
        # A HEAD of a blob not cached yet asks the upstream and fetches nothing.
        for digest, data in amd.blobs.items():
            head = await client.head(f"/v2/mirror/lib/multi/blobs/{digest}")
            assert head.status == 200
            assert head.headers["Content-Length"] == str(len(data))
            assert head.headers["Docker-Content-Digest"] == digest
            await assert_nothing_stored(reg, "mirror/lib/multi", digest)
        missing = await client.head(f"/v2/mirror/lib/multi/blobs/sha256:{'0' * 64}")
        assert missing.status == 404


async def test_outside_a_mirrored_prefix_a_manifest_with_missing_references_is_still_refused(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    """Invariant 2 for ordinary pushes: sparse storage is the mirror's only."""
    image = await push_image(upstream.url, "lib/app", "v1", "not sparse", layer_size=1000)
    async with mirror_of(kv, tmp_path, upstream.url) as (_, client, _):
        response = await client.put(
            "/v2/own/app/manifests/v1", data=image.manifest, headers={"Content-Type": OCI_MANIFEST}
        )
        assert response.status == 400
        assert (await response.json())["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


async def test_upstream_requests_go_through_the_configured_proxy(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    """The remote's name resolves nowhere: only the proxy (a forwarding
    counting proxy in front of distribution) can reach it; noProxy bypasses it."""
    image = await push_image(upstream.url, "lib/app", "v1", "proxied", layer_size=1000)
    remote = "http://upstream.invalid:5000"
    async with counting_proxy(upstream.url) as (proxy, proxy_url):
        async with mirror_of(kv, tmp_path / "a", remote, proxy=ProxyConfig(http=proxy_url)) as (_, client, _):
            response = await pull(client, "mirror/lib/app", "v1")
            assert response.status == 200
            assert response.headers["Docker-Content-Digest"] == image.digest
            assert proxy.count("/v2/lib/app/manifests/v1") >= 1
        bypass = ProxyConfig(http=proxy_url, no_proxy=".invalid")
        async with mirror_of(kv, tmp_path / "b", remote, proxy=bypass) as (_, client, _):
            asked = len(proxy.requests)
            response = await pull(client, "mirror/lib/app", "v1")
            assert response.status == 503
            assert remote in (await response.json())["errors"][0]["message"]
            assert len(proxy.requests) == asked


async def test_upstream_429_and_5xx_are_clear_errors_or_stale_answers(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    image = await push_image(upstream.url, "lib/app", "v1", "failing", layer_size=1000)
    async with (
        counting_proxy(upstream.url) as (proxy, proxy_url),
        mirror_of(kv, tmp_path, proxy_url, ttl=0.0) as (_, client, _),
    ):
        assert (await pull(client, "mirror/lib/app", "v1")).status == 200
        proxy.fail = 429
        limited = await pull(client, "mirror/lib/other", "v1")
        assert limited.status == 429
        assert limited.headers["Retry-After"] == "7"
        body = await limited.json()
        assert body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert proxy_url in body["errors"][0]["message"]
        stale = await pull(client, "mirror/lib/app", "v1")  # cached: answered stale
        assert stale.status == 200
        assert stale.headers["Docker-Content-Digest"] == image.digest
        assert stale.headers[STALE_HEADER] == "stale"
        proxy.fail = 500
        broken = await pull(client, "mirror/lib/other", "v1")
        assert broken.status == 503
        assert proxy_url in (await broken.json())["errors"][0]["message"]
        layer = json.loads(image.manifest)["layers"][0]["digest"]
        missing_blob = await client.get(f"/v2/mirror/lib/app/blobs/{layer}")
        assert missing_blob.status == 503
        assert (await missing_blob.json())["errors"][0]["code"] == "UNAVAILABLE"


async def test_concurrent_first_pulls_through_three_replicas_fetch_once(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    """Three replicas (one etcd prefix, one blob directory), 12 pulls of the same
    uncached tag, then 20 of the same uncached blob, at once: one upstream fetch
    of each (single-flight across the cluster)."""
    image = await push_image(upstream.url, "lib/app", "v1", "single flight")
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    prefix = f"/test-{uuid.uuid4().hex[:12]}"
    async with counting_proxy(upstream.url) as (proxy, proxy_url), contextlib.AsyncExitStack() as stack:
        clients = []
        for index in range(3):
            client_of_upstream = RegistryClient(proxy_url, SystemClock())
            stack.push_async_callback(client_of_upstream.close)
            reg = await stack.enter_async_context(
                running(
                    kv,
                    FilesystemBlobStore(tmp_path / "shared-blobs"),
                    prefix=prefix,
                    replica=f"replica-{index}",
                    mirrors=[Mirror("mirror", client_of_upstream, 3600.0)],
                )
            )
            clients.append(
                await stack.enter_async_context(TestClient(TestServer(init_app(reg), host="127.0.0.1")))
            )
        proxy.manifest_delay = 1.0  # every pull arrives while the first fetch is under way
        pulled = await asyncio.gather(*(pull(clients[i % 3], "mirror/lib/app", "v1") for i in range(12)))
        assert {r.headers["Docker-Content-Digest"] for r in pulled} == {image.digest}
        assert proxy.count("GET /v2/lib/app/manifests/") == 1
        assert proxy.count("HEAD /v2/lib/app/manifests/") == 1
        proxy.blob_delay = 1.0

        async def get(index: int) -> bytes:
            async with clients[index % 3].get(f"/v2/mirror/lib/app/blobs/{layer}") as response:
                assert response.status == 200
                return await response.read()

        bodies = await asyncio.gather(*(get(i) for i in range(20)))
        assert all(body == image.blobs[layer] for body in bodies)
        assert proxy.count(f"/blobs/{layer}") == 1


async def test_with_etcd_down_cached_mirrored_pulls_are_served_stale(
    own_etcd: EtcdProcess, tmp_path: Path, upstream: Distribution
) -> None:
    """Mirrored repositories keep the registry's promise: pulls through an etcd
    outage come from the cache (the upstream check cannot be recorded: stale)."""
    image = await push_image(upstream.url, "lib/app", "v1", "etcd down", layer_size=1000)
    own_kv = await EtcdKV.connect([own_etcd.client_url], timeout=5.0)
    try:
        async with mirror_of(own_kv, tmp_path, upstream.url, ttl=0.0) as (reg, client, _):
            assert (await pull(client, "mirror/lib/app", "v1")).status == 200
            for digest in image.blobs:
                assert (await (await client.get(f"/v2/mirror/lib/app/blobs/{digest}")).read()) == image.blobs[
                    digest
                ]
            async with asyncio.timeout(30):
                while reg.cache is None or reg.cache.tag("mirror/lib/app", "v1") is None:
                    await asyncio.sleep(0.01)
            own_etcd.pause()
            try:
                response = await pull(client, "mirror/lib/app", "v1")
                assert response.status == 200
                assert response.headers["Docker-Content-Digest"] == image.digest
                assert response.headers[STALE_HEADER] == "stale"
                assert (await pull(client, "mirror/lib/app", image.digest)).status == 200
                for digest, data in image.blobs.items():
                    assert await (await client.get(f"/v2/mirror/lib/app/blobs/{digest}")).read() == data
            finally:
                own_etcd.resume()
    finally:
        await own_kv.close()


async def test_referrers_pass_through_from_an_upstream_that_has_them(
    kv: EtcdKV, tmp_path: Path, upstream: Distribution
) -> None:
    async with running(kv, FilesystemBlobStore(tmp_path / "upstream-hareg")) as upstream_reg:
        subject = await push_to(upstream_reg, "lib/app", "v1", b"subject layer")
        empty = b"{}"
        await upstream_reg.uploads.monolithic("lib/app", sha256(empty), one_chunk(empty), length=len(empty))
        referrer = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": "application/vnd.example.sbom",
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(empty),
                    "size": 2,
                },
                "layers": [
                    {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2}
                ],
                "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
            }
        ).encode()
        referrer_digest = (
            await upstream_reg.manifests.put("lib/app", sha256(referrer), referrer, OCI_MANIFEST)
        ).digest
        async with TestServer(init_app(upstream_reg), host="127.0.0.1") as server:
            remote = str(server.make_url("")).rstrip("/")
            async with mirror_of(kv, tmp_path / "a", remote) as (_, client, _):
                listed = await (await client.get(f"/v2/mirror/lib/app/referrers/{subject}")).json()
                assert [m["digest"] for m in listed["manifests"]] == [referrer_digest]
                assert listed["manifests"][0]["artifactType"] == "application/vnd.example.sbom"
                filtered = await client.get(
                    f"/v2/mirror/lib/app/referrers/{subject}", params={"artifactType": "application/other"}
                )
                assert (await filtered.json())["manifests"] == []
                assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    # distribution 2.8 has no referrers API: the cache's own (none) answer.
    image = await push_image(upstream.url, "lib/app", "v1", "no referrers", layer_size=1000)
    async with mirror_of(kv, tmp_path / "b", upstream.url) as (_, client, _):
        response = await client.get(f"/v2/mirror/lib/app/referrers/{image.digest}")
        assert response.status == 200
        assert (await response.json())["manifests"] == []


async def test_referrers_an_upstream_pages_are_followed_and_the_rest_linked(
    kv: EtcdKV, tmp_path: Path
) -> None:
    """An upstream that pages its referrers (Link, rel="next"): the mirror
    follows its pages into one answer; past the pages it follows for one
    answer, its own Link leads to the upstream's next page."""
    async with running(kv, FilesystemBlobStore(tmp_path / "upstream-hareg")) as upstream_reg:
        upstream_reg.listing.referrers_page_bytes = 600  # one descriptor a page
        subject = await push_to(upstream_reg, "lib/app", "v1", b"subject layer")
        empty = b"{}"
        await upstream_reg.uploads.monolithic("lib/app", sha256(empty), one_chunk(empty), length=len(empty))
        blank = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(empty), "size": 2}
        referrers: dict[str, str] = {}  # digest -> artifactType
        for number in range(5):
            kind = "application/vnd.example.sbom" if number % 2 else "application/vnd.example.sig"
            body = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "artifactType": kind,
                    "config": blank,
                    "layers": [blank],
                    "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
                    "annotations": {"number": str(number)},
                }
            ).encode()
            put = await upstream_reg.manifests.put("lib/app", sha256(body), body, OCI_MANIFEST)
            referrers[put.digest] = kind
        async with TestServer(init_app(upstream_reg), host="127.0.0.1") as server:
            remote = str(server.make_url("")).rstrip("/")
            async with mirror_of(kv, tmp_path / "a", remote) as (reg, client, _):

                async def listed(url: str, **params: str) -> tuple[list[str], str | None]:
                    response = await client.get(url, params=params)
                    assert response.status == 200, await response.text()
                    link = response.headers.get("Link")
                    target = link[1 : link.index(">")] if link else None
                    return [m["digest"] for m in (await response.json())["manifests"]], target

                url = f"/v2/mirror/lib/app/referrers/{subject}"
                every, more = await listed(url)
                assert sorted(every) == sorted(referrers) and more is None  # five upstream pages, one answer
                sboms, more = await listed(url, artifactType="application/vnd.example.sbom")
                assert sorted(sboms) == sorted(d for d, k in referrers.items() if k.endswith("sbom"))
                assert more is None
                reg.pull_through.referrer_pages = 1  # one upstream page an answer: the rest by our Link
                seen, more = await listed(url)
                pages = 1
                while more is not None:
                    assert "upstreamNext=" in more
                    page, more = await listed(more)
                    seen += page
                    pages += 1
                assert pages == 5 and sorted(seen) == sorted(referrers) and len(set(seen)) == 5
                bad = await client.get(url, params={"upstreamNext": "last=x\r\nHost: elsewhere"})
                assert bad.status == 400
                assert (await bad.json())["errors"][0]["code"] == "UNSUPPORTED"
