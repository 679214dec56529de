"""Running one registry replica: its dependencies, its HTTP listener, its shutdown.

With no etcd endpoints configured the replica starts a private single-member
etcd as a child process under the data directory (the embedded default) and
stops it on shutdown; the child is also tied to this process's life with
PR_SET_PDEATHSIG, so it never outlives the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from hareg.clock import SystemClock
from hareg.config.addresses import advertised_url
from hareg.config.model import Config
from hareg.http.app import init_app
from hareg.http.connections import ConnectionGuard, start_listener
from hareg.http.keys import HttpSettings
from hareg.http.limits import LIMITS
from hareg.ids import RandomIds
from hareg.kv.etcd import EtcdKV
from hareg.kv.instrumented import InstrumentedKV
from hareg.observability.logs import add_log_secret
from hareg.observability.metrics import Metrics
from hareg.processes.etcd import EtcdProcess
from hareg.processes.ports import free_ports
from hareg.registry.gc import Policy
from hareg.registry.hashing import ThreadedHashing
from hareg.registry.htpasswd import HtpasswdError
from hareg.registry.manifest_format import UrlPolicy
from hareg.registry.service import Registry
from hareg.server.auth import AuthSetupError, build_access, exposure_problem
from hareg.server.reload import Reloader
from hareg.server.tls import TLSError, load_route_contexts, start_route_sites
from hareg.storage.base import BlobStore
from hareg.storage.checked import StorageObserver
from hareg.storage.filesystem import FilesystemBlobStore
from hareg.upstream.mirrors import MirrorSetupError, build_mirrors

log = logging.getLogger("hareg.server")

# How long a stopping replica lets in-flight requests finish (aiohttp's default
# is 60 s, longer than Kubernetes' 30 s termination grace).  An upload cut off
# here is resumed by the client on another replica.
SHUTDOWN_GRACE = 10.0
HASH_THREADS = max(2, os.cpu_count() or 2)  # chunks hashed at once beside the loop
# Password checks at once beside the loop: bcrypt costs tens of milliseconds
# of CPU each, and more threads than cores would only queue them in the kernel.
PASSWORD_THREADS = max(1, min(4, os.cpu_count() or 1))


class StartupError(Exception):
    """A clear, user-facing reason the registry could not start."""


@dataclass(frozen=True)
class ServeOptions:
    config: Config
    data_dir: Path
    listen: str  # host:port
    etcd_endpoints: tuple[str, ...]
    etcd_binary: str | None = None
    replica: str | None = None
    config_path: str | None = None  # re-read on SIGHUP


def etcd_ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context of the members endpoint's etcd probes (None: plain HTTP)."""
    etcd = config.etcd
    if not (etcd.ca_file or etcd.cert_file):
        return None
    context = ssl.create_default_context(cafile=etcd.ca_file)
    if etcd.cert_file:
        context.load_cert_chain(etcd.cert_file, etcd.key_file)
    return context


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise StartupError(f"listen address {listen!r} must be HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # an empty host: every interface, as documented


def _embedded_etcd(data_dir: Path, binary: str | None) -> EtcdProcess:
    """The private etcd, on ports kept in the data dir so a restart reuses them."""
    etcd_dir = data_dir / "etcd"
    etcd_dir.mkdir(parents=True, exist_ok=True)
    ports_file = etcd_dir / "ports.json"
    ports: list[int] | None = None
    if ports_file.exists():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            saved = json.loads(ports_file.read_text())
            ports = [int(saved["client"]), int(saved["peer"])]
    if ports is None or not all(_port_free(p) for p in ports):
        ports = free_ports(2)
        ports_file.write_text(json.dumps({"client": ports[0], "peer": ports[1]}))
    return EtcdProcess(
        "hareg-embedded",
        etcd_dir / "data",
        client_port=ports[0],
        peer_port=ports[1],
        binary=binary,
        log_file=etcd_dir / "etcd.log",
    )


def _unusable_dir(exc: OSError) -> StartupError:
    """A data or storage directory that cannot be created or written (a file in the way, permissions)."""
    where = f" {exc.filename}" if exc.filename else ""
    return StartupError(f"cannot use directory{where}: {exc.strerror or exc}")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def make_store(config: Config, data_dir: Path, observe: StorageObserver | None = None) -> BlobStore:
    """The configured driver, behind the checks and metrics every driver shares
    (``observe`` gets every storage call: ``Metrics.observe_storage``)."""
    storage = config.storage
    if storage.kind == "filesystem":
        return FilesystemBlobStore(storage.filesystem.root_directory or data_dir / "blobs", observe=observe)
    if storage.kind == "pvc":
        return FilesystemBlobStore(storage.pvc.claim or data_dir / "blobs", observe=observe)
    if storage.kind == "emptyDir":
        return FilesystemBlobStore(data_dir / "emptydir-blobs", observe=observe)
    if storage.kind == "s3":
        from hareg.storage.s3 import S3BlobStore  # obstore is only loaded when used

        try:
            return S3BlobStore.from_config(storage.s3, observe=observe)
        except ValueError as exc:
            raise StartupError(f"storage.s3: {exc}") from None
    raise StartupError(f"storage kind {storage.kind!r} is not available in this build")


# File descriptors a replica needs beside its client connections: etcd and
# object-store connections, blob files being read or written, logs.
_SPARE_FILES = 1024


def raise_open_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to the hard limit, as Go's runtime
    does for distribution: the default soft limit (often 1024) is below
    ``limits.maxConnections``, and running out of descriptors fails far more
    than the one connection too many.  Warns if even the hard limit is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    wanted = max_connections + _SPARE_FILES if max_connections else 0
    if soft != resource.RLIM_INFINITY and wanted > soft:
        log.warning(
            "the open-file limit is below what limits.maxConnections needs",
            extra={"fields": {"limit": "limits.maxConnections", "open_files": soft, "needed": wanted}},
        )


def _close_all(listeners: list[asyncio.Server]) -> None:
    for listener in listeners:
        listener.close()


async def serve(options: ServeOptions, on_ready: Callable[[str], None] = print) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly; SIGHUP reloads
    logLevel, readOnly and requests from the configuration file."""
    config = options.config
    host, port = split_listen(options.listen)
    problem = exposure_problem(
        config,
        [("listen " + options.listen, options.listen.rpartition(":")[0])]
        + [(f"route {r.name} ({r.listen})", r.listen.rpartition(":")[0]) for r in config.routes if r.listen],
    )
    if problem:
        raise StartupError(problem)
    try:  # certificates first: a bad one stops us before anything starts
        route_listeners = load_route_contexts(config.routes)
    except TLSError as exc:
        raise StartupError(str(exc)) from None
    for secret in (config.http_secret, config.storage.s3.secret_key):
        add_log_secret(secret)  # a generated httpSecret is added when the registry loads it
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    on_hangup: list[Callable[[], object]] = []

    def hangup() -> None:
        if not on_hangup:
            log.warning("SIGHUP before the registry is ready: ignored")
        for hook in on_hangup:
            hook()

    loop.add_signal_handler(signal.SIGHUP, hangup)
    metrics = Metrics()
    async with AsyncExitStack() as stack:
        endpoints = list(options.etcd_endpoints)
        if not endpoints:
            try:
                etcd = _embedded_etcd(options.data_dir, options.etcd_binary)
            except OSError as exc:
                raise _unusable_dir(exc) from None
            stack.push_async_callback(etcd.stop)
            await etcd.start()
            endpoints = [etcd.client_url]
            log.info("started embedded etcd", extra={"fields": {"etcd": etcd.client_url, "pid": etcd.pid}})
        kv = await EtcdKV.connect(
            endpoints,
            timeout=config.etcd.request_timeout,
            member_timeout=config.etcd.member_timeout,
            keepalive_time=config.etcd.keepalive_time,
            keepalive_timeout=config.etcd.keepalive_timeout,
            ca_file=config.etcd.ca_file,
            cert_file=config.etcd.cert_file,
            key_file=config.etcd.key_file,
            check=True,
        )
        stack.push_async_callback(kv.close)
        try:
            store = make_store(config, options.data_dir, metrics.observe_storage)
        except OSError as exc:
            raise _unusable_dir(exc) from None
        stack.push_async_callback(store.close)
        replica = options.replica or f"{socket.gethostname()}:{port}"
        # Where other replicas reach this one (the pruner's forwarding); with an
        # ephemeral port (0) nobody could, so it does not register.
        advertise: str | None = advertised_url(config.advertise_url, host, port, socket.gethostname())
        if not port and not config.advertise_url:
            advertise = None
        if advertise and host in ("0.0.0.0", "::") and not config.advertise_url:
            log.info(
                "listening on a wildcard address: advertising the host name to other replicas "
                "(set advertiseURL to choose)",
                extra={"fields": {"advertiseURL": advertise}},
            )
        # Digests of pushed bytes are computed beside the event loop (hashlib
        # releases the GIL), so a large push does not stall other requests.
        hash_pool = ThreadPoolExecutor(max_workers=HASH_THREADS, thread_name_prefix="hareg-hash")
        stack.callback(hash_pool.shutdown, wait=True)
        try:
            mirrors = build_mirrors(config, SystemClock(), add_log_secret)
        except MirrorSetupError as exc:
            raise StartupError(str(exc)) from None
        for mirror in mirrors:
            stack.push_async_callback(mirror.upstream.close)
        registry = Registry(
            InstrumentedKV(kv, metrics.observe_etcd),
            store,
            SystemClock(),
            RandomIds(),
            prefix=config.etcd.prefix,
            replica=replica,
            http_secret=config.http_secret,
            url=advertise,
            upload_grace=config.pruner.upload_grace,
            election_grace=config.etcd.election_grace,
            gc_policy=Policy(
                keep_tag_revisions=config.pruner.keep_tag_revisions,
                keep_younger_than=config.pruner.keep_younger_than,
                grace=config.pruner.upload_grace,
            ),
            # Unmanaged: the registry serves, but nothing is pruned on a schedule.
            pruner_schedule=config.pruner.schedule if config.management_state == "Managed" else None,
            pruner_suspend=config.pruner.suspend,
            fsck_schedule=config.pruner.fsck_schedule if config.management_state == "Managed" else None,
            fsck_repair=config.pruner.fsck_repair,
            read_only=config.read_only,
            max_list_page_size=config.max_list_page_size,
            manifest_urls=UrlPolicy.compile(
                config.validation.manifest_urls.allow, config.validation.manifest_urls.deny
            ),
            hashing=ThreadedHashing(hash_pool),
            limits=config.limits,
            on_secret=add_log_secret,
            mirrors=mirrors,
            # etcd's space: the NOSPACE alarm, defragmentation (docs/operations.md).
            etcd_maintenance=kv,
            maintenance_settings=config.etcd.maintenance
            if config.management_state == "Managed"
            else replace(config.etcd.maintenance, suspend=True),
        )
        raise_open_file_limit(config.limits.max_connections)
        await registry.start()
        stack.push_async_callback(registry.stop)
        access = None
        if config.auth is not None and not config.auth.disabled:
            password_pool = ThreadPoolExecutor(
                max_workers=PASSWORD_THREADS, thread_name_prefix="hareg-bcrypt"
            )
            stack.callback(password_pool.shutdown, wait=True)
            try:
                access = build_access(config.auth, registry, SystemClock(), RandomIds(), password_pool)
                access.on_secret = add_log_secret
                await access.start()
            except (AuthSetupError, ValueError) as exc:
                raise StartupError(str(exc)) from None
        elif config.auth is not None:
            log.warning(
                "authentication is disabled (auth.disabled): anyone who reaches the registry may do anything"
            )
        app = init_app(
            registry,
            HttpSettings(
                disable_redirect=config.disable_redirect,
                requests=config.requests,
                management_state=config.management_state,
                body_stall_timeout=config.limits.body_stall_timeout,
                etcd_endpoints=tuple(endpoints),
                etcd_ssl=etcd_ssl_context(config),
            ),
            metrics=metrics,
            connections=ConnectionGuard(
                config.limits.request_header_timeout,
                config.limits.max_connections,
                config.limits.response_stall_timeout,
            ),
            access=access,
        )
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=SHUTDOWN_GRACE,
            keepalive_timeout=config.limits.idle_connection_timeout,
        )
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        listeners: list[asyncio.Server] = []
        # Stop listening before runner.cleanup closes the connections (the stack unwinds in reverse).
        stack.callback(_close_all, listeners)
        try:
            listeners.append(await start_listener(runner, host, port))
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        sockets = listeners[0].sockets
        bound = (
            sockets[0].getsockname()[1] if port == 0 and sockets else port
        )  # an ephemeral port: the real one
        url = f"http://{host}:{bound}"
        try:
            tls_urls = await start_route_sites(runner, route_listeners, listeners)
        except TLSError as exc:
            raise StartupError(str(exc)) from None

        def apply(new: Config) -> None:
            registry.settings.config_read_only = new.read_only
            app[LIMITS].configure(new.requests)
            if access is not None and new.auth is not None:
                access.reconfigure(new.auth)
                access.users.path = new.auth.htpasswd_path
                try:
                    users = access.users.load()
                except HtpasswdError as exc:
                    log.error("htpasswd not reloaded; keeping the users loaded before: %s", exc)
                else:
                    log.warning("htpasswd reloaded", extra={"fields": {"users": users}})

        on_hangup.append(Reloader(options.config_path, config, apply).reload)
        log.info(
            "registry ready",
            extra={"fields": {"url": url, "routes": tls_urls, "replica": replica, "etcd": endpoints}},
        )
        on_ready(url)
        await stop.wait()
        log.info("shutting down")
