"""Removing the staged bytes of upload sessions that are over.

An upload session lives in etcd under a lease; when a client abandons an
upload the lease expires and the record goes, but the staged parts stay in
the blob store.  The janitor removes staging that has no session record and
has not been written for ``grace`` seconds.  The grace also covers the
single-request uploads (monolithic POSTs, large manifest bodies), which stage
bytes without a session record while the request runs: an upload that is
still being written keeps getting newer.
"""

from __future__ import annotations

import logging

from hareg.clock import Clock
from hareg.kv.base import KVError
from hareg.metadata.store import MetadataStore
from hareg.storage.base import BlobStore, StorageError

log = logging.getLogger("hareg.janitor")


class UploadJanitor:
    def __init__(
        self,
        meta: MetadataStore,
        store: BlobStore,
        clock: Clock,
        *,
        grace: float = 3600.0,
        interval: float = 600.0,
    ) -> None:
        self.meta = meta
        self.store = store
        self.clock = clock
        self.grace = grace
        self.interval = interval
        self.removed = 0

    async def sweep(self, *, dry_run: bool = False) -> list[str]:
        """Remove expired staging once; returns the upload ids removed (or,
        with ``dry_run``, that would be)."""
        live = set(await self.meta.list_upload_ids())
        removed: list[str] = []
        async for upload_id in self.store.list_uploads():
            if upload_id in live:
                continue
            modified = await self.store.upload_modified(upload_id)
            if modified is None or self.clock.now() - modified < self.grace:
                continue
            # Re-check the session: it may have been created since the listing.
            if await self.meta.get_upload(upload_id) is not None:
                continue
            if not dry_run:
                await self.store.upload_abort(upload_id)
            removed.append(upload_id)
        if dry_run:
            return removed
        # What died mid-write outside any staging (S3: a whole-blob put's
        # multipart upload); the driver knows when it is old enough.
        await self.store.sweep_abandoned()
        self.removed += len(removed)
        if removed:
            log.info("removed expired upload staging", extra={"fields": {"count": len(removed)}})
        return removed

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            try:
                await self.sweep()
            except (KVError, StorageError) as exc:
                log.warning("upload janitor sweep failed: %s", exc)
