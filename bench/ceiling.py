"""The ceiling: the smallest aiohttp + uvloop server that answers the
throughput benchmark's read routes, the reference a Python replica is measured
against (``python -m bench throughput`` target ``ceiling``).

``python -m bench.ceiling --listen 127.0.0.1:PORT --blobs DIR`` serves, with
no registry behind it (no metadata, no access log, no metrics, no checks):

* ``GET /v2/``: ``{}``;
* ``GET``/``HEAD /v2/<name>/manifests/<reference>``: one fixed image
  manifest (:data:`MANIFEST`) for any tag, and for its own digest (any other
  digest is a 404), with the headers a registry sends (``Content-Type``,
  ``Docker-Content-Digest``, ``Content-Length``);
* ``HEAD /v2/<name>/blobs/<digest>``: ``DIR/<algorithm>/<hex>``'s size (one
  ``stat``), 404 if there is no such file;
* ``GET /v2/<name>/blobs/<digest>``: that file, sent with ``os.sendfile`` on
  the connection's socket once the headers have left (uvloop has no
  ``loop.sendfile``, so aiohttp's ``FileResponse`` would read the file in a
  thread pool), the socket's writability awaited through the event loop.

The benchmark writes the blobs it pulls into ``DIR`` before its read phases
(:func:`stage_blob`); the write phases are not the ceiling's job.  The ready
line on stdout is ``ceiling listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import sys
from pathlib import Path

from aiohttp import web

from bench.blobs import BlobSpec
from bench.client import OCI_MANIFEST, image_manifest

READY_PREFIX = "ceiling listening on "
# The shape of the manifests the benchmark PUTs to the registries (a config
# and one layer, an annotation): the same size on the wire.
MANIFEST = image_manifest(("sha256:" + "c" * 64, 37), [("sha256:" + "1" * 64, 1200)], annotation="0")
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
_DIGEST = re.compile(r"(sha256|sha512):([0-9a-f]{64,128})")
_SENDFILE_MAX = 1 << 30  # bytes per os.sendfile call (Linux sends at most ~2 GiB at once)

BLOBS_DIR = web.AppKey("blobs_dir", Path)


def blob_path(root: Path, digest: str) -> Path | None:
    """Where the ceiling keeps ``digest`` under ``root`` (None: not a digest)."""
    m = _DIGEST.fullmatch(digest)
    return root / m.group(1) / m.group(2) if m else None


def stage_blob(root: Path, blob: BlobSpec) -> None:
    """Write ``blob`` where the ceiling serves it from (block by block)."""
    path = blob_path(root, blob.digest())
    assert path is not None
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for block in blob.blocks():
            f.write(block)
    tmp.replace(path)


async def ping(request: web.Request) -> web.Response:
    return web.Response(body=b"{}", content_type="application/json")


_MANIFEST_HEADERS = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": MANIFEST_DIGEST}


async def manifest(request: web.Request) -> web.Response:
    reference = request.match_info["reference"]
    if ":" in reference and reference != MANIFEST_DIGEST:
        return web.Response(status=404)
    return web.Response(body=MANIFEST, headers=_MANIFEST_HEADERS)


def _blob_headers(digest: str, size: int) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": digest,
        "Content-Length": str(size),
    }


async def head_blob(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    path = blob_path(request.app[BLOBS_DIR], digest)
    try:
        size = os.stat(path).st_size if path is not None else -1
    except FileNotFoundError:
        size = -1
    if size < 0:
        return web.Response(status=404)
    # A HEAD answer: aiohttp sends the Content-Length given and no body.
    return web.Response(headers=_blob_headers(digest, size))


async def get_blob(request: web.Request) -> web.StreamResponse:
    digest = request.match_info["digest"]
    path = blob_path(request.app[BLOBS_DIR], digest)
    try:
        fd = os.open(path, os.O_RDONLY) if path is not None else -1
    except FileNotFoundError:
        fd = -1
    if fd < 0:
        return web.Response(status=404)
    try:
        size = os.fstat(fd).st_size
        response = web.StreamResponse(headers=_blob_headers(digest, size))
        writer = await response.prepare(request)
        assert writer is not None
        await writer.write(b"")  # the buffered headers leave now
        transport = request.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("client went away")
        if transport.get_write_buffer_size():
            # Not out yet (a full socket buffer): wait for the transport to empty.
            low, high = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=0, low=0)
            try:
                await writer.drain()
            finally:
                transport.set_write_buffer_limits(high=high, low=low)
        await _sendfile(transport, fd, size)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


async def _sendfile(transport: asyncio.Transport, fd: int, size: int) -> None:
    """``size`` bytes of ``fd`` to the transport's (empty-buffered) socket, by
    os.sendfile.  A duplicate of the socket's descriptor is polled for
    writability: the loop refuses a writer on a descriptor a transport owns."""
    sock = transport.get_extra_info("socket")
    loop = asyncio.get_running_loop()
    out = os.dup(sock.fileno())
    ready: asyncio.Future[None] | None = None

    def writable() -> None:
        if ready is not None and not ready.done():
            ready.set_result(None)

    loop.add_writer(out, writable)
    try:
        offset = 0
        while offset < size:
            try:
                sent = os.sendfile(out, fd, offset, min(size - offset, _SENDFILE_MAX))
            except BlockingIOError:
                ready = loop.create_future()
                await ready
                continue
            if sent == 0:
                raise ConnectionResetError("file shorter than its size")
            offset += sent
    finally:
        loop.remove_writer(out)
        os.close(out)


def make_app(blobs: Path) -> web.Application:
    app = web.Application()
    app[BLOBS_DIR] = blobs
    app.router.add_get("/v2/", ping)
    app.router.add_get(r"/v2/{name:.+}/manifests/{reference}", manifest)
    app.router.add_get(r"/v2/{name:.+}/blobs/{digest}", get_blob, allow_head=False)
    app.router.add_head(r"/v2/{name:.+}/blobs/{digest}", head_blob)
    return app


async def serve(host: str, port: int, blobs: Path) -> None:
    runner = web.AppRunner(make_app(blobs), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    print(f"{READY_PREFIX}http://{bound_host}:{bound_port}", flush=True)
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ceiling", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default 127.0.0.1:0)")
    p.add_argument("--blobs", type=Path, required=True, help="the directory of the blobs it serves")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    import signal

    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(host, int(port), args.blobs)

    uvloop.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
