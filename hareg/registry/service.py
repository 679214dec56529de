"""The registry: one object that owns the service layer's parts.

Built from injected dependencies only (KV, blob store, clock, ids), so the
HTTP application and the simulator construct it the same way.  ``start()``
runs its background work (the watch that feeds the metadata cache and the
cluster settings) and ``stop()`` ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from hareg.clock import Clock
from hareg.config.model import EtcdMaintenanceConfig, LimitsConfig
from hareg.ids import IdSource
from hareg.kv.base import KV, KVError, Maintenance
from hareg.metadata.barrier import ReadBarrier
from hareg.metadata.cache import MetadataCache
from hareg.metadata.gc import BATCH as GC_BATCH
from hareg.metadata.gc import GcStore
from hareg.metadata.keys import Keys
from hareg.metadata.reflector import Reflector
from hareg.metadata.roles import Leadership, Membership
from hareg.metadata.store import MetadataStore
from hareg.registry.blobs import BlobService
from hareg.registry.etcd_maintenance import EtcdMaintenance, MetadataSpace, SpaceWatchedKV
from hareg.registry.fsck import IntegrityChecker
from hareg.registry.gc import GarbageCollector, MirrorExpiry, Policy
from hareg.registry.hashing import Hashing
from hareg.registry.janitor import UploadJanitor
from hareg.registry.listing import DEFAULT_MAX_PAGE_SIZE, ListingService
from hareg.registry.manifest_format import NO_URLS, UrlPolicy
from hareg.registry.manifests import ManifestLimits, ManifestService
from hareg.registry.pruner import Pruner
from hareg.registry.pull_through import Mirror, PullThrough
from hareg.registry.settings import ClusterSettings
from hareg.registry.stats import PrunerStats
from hareg.registry.tag_lifecycle import TagLifecycle
from hareg.registry.upload_state import UploadStateSigner
from hareg.registry.uploads import UploadService
from hareg.storage.base import BlobStore, StorageError

_PROBE_DIGEST = "sha256:" + "0" * 64
# A registry built without a configuration (tests, the simulator) has no caps;
# `hareg serve` passes the configuration's, whose defaults are bounded.
NO_CAPS = LimitsConfig(
    max_upload_sessions=0,
    max_upload_sessions_per_repository=0,
    max_blob_size=0,
    max_manifest_references=0,
    max_manifest_annotation_bytes=0,
)

log = logging.getLogger("hareg.registry")


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    degraded: bool  # serving pulls from the cache; writes refused
    reason: str  # CamelCase, as the operator's conditions use
    checks: dict[str, str]


class Registry:
    def __init__(
        self,
        kv: KV,
        store: BlobStore,
        clock: Clock,
        ids: IdSource,
        *,
        prefix: str = "/hareg",
        replica: str = "replica",
        cache: bool = True,
        http_secret: str | None = None,
        url: str | None = None,
        upload_grace: float = 3600.0,
        election_grace: float = 2.0,  # how long writes wait out an etcd election (config etcd.electionGrace)
        gc_policy: Policy | None = None,
        pruner_schedule: str | None = None,
        pruner_suspend: bool = False,
        fsck_schedule: str | None = None,
        fsck_repair: bool = False,
        read_only: bool = False,
        max_list_page_size: int = DEFAULT_MAX_PAGE_SIZE,  # config maxListPageSize
        manifest_urls: UrlPolicy = NO_URLS,  # descriptor urls a pushed manifest may carry
        gc_batch: int = GC_BATCH,  # deletions per garbage-collection transaction
        hashing: Hashing | None = None,  # where digests are computed (default: on the loop)
        limits: LimitsConfig = NO_CAPS,  # the caps of the configuration's ``limits``
        # Told the httpSecret in use (configured or generated) before it signs
        # anything, so the log redaction list holds it too.
        on_secret: Callable[[bytes], None] | None = None,
        # pullThrough: upstream registries mirrored under a prefix (docs/pull-through.md).
        mirrors: Sequence[Mirror] = (),
        # etcd's maintenance calls (the etcd adapter): the NOSPACE alarm's poll
        # and recovery, scheduled defragmentation.  None: none of them runs.
        etcd_maintenance: Maintenance | None = None,
        maintenance_settings: EtcdMaintenanceConfig = EtcdMaintenanceConfig(),  # noqa: B008 (frozen)
    ) -> None:
        # Whether etcd is out of space: every write refused with NOSPACE tells it.
        self.space = MetadataSpace(clock)
        kv = SpaceWatchedKV(kv, self.space)
        self.kv = kv
        self.store = store
        self.clock = clock
        self.replica = replica
        keys = Keys(prefix)
        # One list-and-watch loop feeds the replica's mirrors of etcd: the cache and the settings.
        self.reflector = Reflector(kv, clock)
        self.cache = (
            MetadataCache(self.reflector, keys, body_bytes=limits.manifest_cache_bytes) if cache else None
        )
        self.barrier = ReadBarrier(kv, self.cache, clock, write_grace=election_grace) if self.cache else None
        self.meta = MetadataStore(kv, keys, clock, ids, replica, cache=self.cache, barrier=self.barrier)
        self.blobs = BlobService(self.meta, store, clock, touch_after=upload_grace / 2)
        self.uploads = UploadService(
            self.meta,
            store,
            ids,
            hashing=hashing,
            max_sessions=limits.max_upload_sessions,
            max_sessions_per_repository=limits.max_upload_sessions_per_repository,
            max_blob_size=limits.max_blob_size,
        )
        self.manifests = ManifestService(
            self.meta,
            store,
            clock,
            ids,
            ManifestLimits(limits.max_manifest_references, limits.max_manifest_annotation_bytes),
            hashing=hashing,
            urls=manifest_urls,
        )
        self.pull_through = PullThrough(
            mirrors,
            self.meta,
            self.manifests,
            store,
            clock,
            ids,
            hashing=hashing,
            max_blob_size=limits.max_blob_size,
        )
        self.listing = ListingService(self.meta, max_page_size=max_list_page_size)
        self.tag_lifecycle = TagLifecycle(self.meta)
        self.janitor = UploadJanitor(self.meta, store, clock, grace=upload_grace)
        self.leadership = Leadership(
            kv, keys.setting("pruner-leader"), replica, clock, ids, name="pruner leadership"
        )
        gc_store = GcStore(kv, keys, batch=gc_batch)
        policy = gc_policy or Policy(grace=upload_grace)
        if mirrors:  # their unused tags expire (docs/pull-through.md#expiry)
            policy = replace(
                policy,
                mirrors=tuple(
                    MirrorExpiry(m.prefix, m.expire_after, m.ttl) for m in mirrors if m.expire_after > 0
                ),
            )
        collector = GarbageCollector(gc_store, store, clock, self.janitor, policy, replica=replica)
        # What the pruner did, exported as hareg_pruner_* metrics.
        self.pruner_stats = PrunerStats()
        self.pruner = Pruner(
            collector,
            self.leadership,
            clock,
            schedule=pruner_schedule,
            suspend=pruner_suspend,
            stats=self.pruner_stats,
            read_only=lambda: self.read_only,
            # hareg fsck: re-hash what the blob store holds (docs/operations.md).
            fsck=IntegrityChecker(gc_store, store, clock, hashing=hashing),
            fsck_schedule=fsck_schedule,
            fsck_repair=fsck_repair,
            switch=self.meta.read_only_guard,
        )
        # One replica at a time (the pruner's leader) defragments and recovers etcd.
        self.etcd_maintenance = EtcdMaintenance(
            etcd_maintenance, kv, self.leadership, self.space, clock, maintenance_settings
        )
        self.ids = ids
        # The read-only switch (file or cluster-wide); the HTTP layer enforces it.
        self.settings = ClusterSettings(kv, self.reflector, keys, clock, replica=replica, read_only=read_only)
        # Replicas that know their own URL register themselves (the local cluster's do).
        self.membership = Membership(kv, keys, clock, replica, url) if url else None
        self._http_secret = http_secret
        self._on_secret = on_secret
        self._signer: UploadStateSigner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def upload_signer(self) -> UploadStateSigner:
        if self._signer is None:
            raise RuntimeError("Registry.start() has not run: the httpSecret is not loaded")
        return self._signer

    @property
    def read_only(self) -> bool:
        """Writes are refused: the configuration or the cluster-wide switch says so."""
        return self.settings.read_only

    async def _load_secret(self) -> bytes:
        """The configured httpSecret, or the cluster's generated one: created once
        in etcd by whichever replica starts first, so every replica signs alike."""
        if self._http_secret:
            return self._http_secret.encode()
        return await self.meta.shared_setting(
            "http-secret", lambda: (self.ids.new_id() + self.ids.new_id()).encode()
        )

    async def start(self) -> None:
        secret = await self._load_secret()
        if self._on_secret is not None:
            self._on_secret(secret)
        self._signer = UploadStateSigner(
            secret, self.clock, self.meta.upload_ttl + self.meta.upload_lease_window
        )
        await self.settings.prime()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.reflector.run(), name="metadata-reflector"))
        if self.membership is not None:
            self._tasks.append(loop.create_task(self.membership.run(), name="membership"))
        if await self.meta.reference_index_trivial():
            await self.meta.build_reference_index()  # at most the marker: serve with the index at once
        else:
            self._tasks.append(loop.create_task(self._index_references(), name="reference-index"))
        self._tasks.append(loop.create_task(self.janitor.run(), name="upload-janitor"))
        self._tasks.append(loop.create_task(self.leadership.run(), name="pruner-leadership"))
        self._tasks.append(loop.create_task(self.pruner.run_scheduled(), name="pruner"))
        if self.pruner.fsck_schedule is not None:  # off by default
            self._tasks.append(loop.create_task(self.pruner.run_fsck_scheduled(), name="pruner-fsck"))
        if self.etcd_maintenance.enabled:
            maintenance = self.etcd_maintenance
            self._tasks.append(loop.create_task(maintenance.run_alarm_checks(), name="etcd-alarms"))
            self._tasks.append(loop.create_task(maintenance.run_defrag_scheduled(), name="etcd-defrag"))

    async def _index_references(self) -> None:
        """Build the reverse-reference index over data from an earlier version
        (metadata/references.py), trying again until it is done; deletes look
        the old way until then."""
        delay = 1.0
        while True:
            try:
                built = await self.meta.build_reference_index()
            except KVError as exc:
                log.warning(
                    "building the reverse-reference index failed (tried again in %.0fs): %s", delay, exc
                )
                await self.clock.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            if built:
                log.info("reverse-reference index built", extra={"fields": {"manifests": built}})
            return

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.uploads.settle()
        if self.barrier is not None:
            await self.barrier.close()
        if self.membership is not None:
            await self.membership.leave()
        await self.leadership.resign()

    async def readiness(self, probe_timeout: float = 2.0) -> Readiness:
        """Can this replica serve?  Degraded: etcd is unreachable but the cache
        serves pulls (writes get 503), or etcd is out of space (its NOSPACE
        alarm: writes get 507) — still ready, so load balancers keep it."""
        checks: dict[str, str] = {}
        barrier = self.barrier
        try:
            if barrier is not None and not barrier.store_available:
                # Seen down: answer now, the barrier's probe is on it.
                raise KVError("recently unreachable")
            async with asyncio.timeout(probe_timeout):
                await (barrier.current_revision() if barrier else self.kv.current_revision())
            checks["etcd"] = "ok"
        except (KVError, TimeoutError) as exc:
            checks["etcd"] = f"unavailable: {type(exc).__name__}"
            if barrier is not None:
                barrier.note_unavailable()
                if not barrier.writes_blocked():
                    # Perhaps an election: writes wait for it (within the
                    # grace), so the replica still takes them.
                    checks["etcd"] += f" (writes wait up to {barrier.write_grace:g}s for it)"
        try:
            async with asyncio.timeout(probe_timeout):
                await self.store.stat(_PROBE_DIGEST)
            checks["storage"] = "ok"
        except (StorageError, TimeoutError, OSError) as exc:
            checks["storage"] = f"unavailable: {type(exc).__name__}"
        cache_ready = self.cache is not None and self.cache.ready
        checks["cache"] = "ok" if cache_ready else "not loaded"
        if checks["storage"] != "ok":
            return Readiness(False, False, "StorageUnavailable", checks)
        if checks["etcd"] != "ok":
            if not cache_ready:
                return Readiness(False, False, "EtcdUnavailable", checks)
            if barrier is not None and not barrier.writes_blocked():
                return Readiness(True, False, "Ready", checks)
            return Readiness(True, True, "EtcdUnavailable", checks)
        if self.space.full:
            checks["etcdSpace"] = "NOSPACE alarm: etcd's database is at its quota; writes are refused"
            return Readiness(True, True, "MetadataStoreFull", checks)
        return Readiness(True, False, "Ready", checks)
