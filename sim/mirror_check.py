"""Checks of the pull-through mirror (docs/pull-through.md, docs/simulation.md).

* **Nothing unverified is served** (``mirror``): every manifest or blob a
  client took as a success hashes to its digest; a manifest pulled by digest
  is that digest; one pulled by tag is a digest the upstream held under that
  tag at some point up to the answer (the current one, one a ttl old, or,
  stale-if-error, the last one verified).  A lying upstream's bytes therefore
  never reach a client as a success.
* **Nothing unverified is stored** (``mirror``): at the end, every manifest
  in a mirrored repository hashes to its digest (inline in etcd or in the
  store), every linked blob's bytes hash to theirs, and every tag names a
  digest the upstream held under it (invariant 3's checker also re-hashes
  every blob as it is committed).
* **Single-flight** (``single-flight``): two upstream fetches of one blob
  for one repository, on two replicas, that both held the fetch claim in
  etcd from start to end never overlap; a fetch without the claim (etcd
  unreachable, or another pull's claim waited out) is allowed by the design
  and only counted (``beside_claim``: begun while another replica's claim
  stood).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

from hareg.metadata.keys import Keys
from hareg.metadata.records import ManifestRecord, TagRecord, decode
from sim.checkers import Findings
from sim.etcd_model import MVCCStore
from sim.mirror_workload import MirrorLog
from sim.storage_model import ObjectStore
from sim.upstream_model import PATHS, PREFIX, UpstreamModel


def _hash(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _short(digest: str) -> str:
    return digest[7:19] if digest.startswith("sha256:") else digest[:12]


def check_served(model: UpstreamModel, log: MirrorLog, findings: Findings) -> None:
    for pull in log.pulls:
        if not pull.ok:
            continue
        who = f"{pull.client} pulled {pull.what} {PREFIX}/{pull.path} {pull.reference[:19]}"
        actual = _hash(pull.data)
        if pull.what == "blob":
            if actual != pull.reference:
                findings.add("mirror", pull.end, f"{who}: served bytes hashing to {_short(actual)}")
            continue
        if actual != pull.digest:
            findings.add(
                "mirror",
                pull.end,
                f"{who}: served as {_short(pull.digest)}, its bytes hash to {_short(actual)}",
            )
        elif ":" in pull.reference:
            if pull.digest != pull.reference:
                findings.add("mirror", pull.end, f"{who}: served {_short(pull.digest)} instead")
        elif pull.digest not in model.held(pull.path, pull.reference, pull.end):
            findings.add(
                "mirror",
                pull.end,
                f"{who}: served {_short(pull.digest)}, never the upstream's {pull.reference} "
                f"(stale={pull.stale})",
            )


def check_stored(
    model: UpstreamModel, store: MVCCStore, objects: ObjectStore, keys: Keys, findings: Findings, now: float
) -> int:
    """The mirrored repositories' manifests, links and tags at the end; how many were judged."""
    judged = 0
    for path in PATHS:
        repo = f"{PREFIX}/{path}"
        for kv in store.live_items(*keys.manifests(repo)):
            digest = keys.strip("m", kv.key).rsplit("@", 1)[1]
            record = decode(ManifestRecord, kv.value)
            body = record.body if record.body is not None else objects.blobs.get(digest)
            judged += 1
            if body is not None and _hash(body) != digest:
                findings.add(
                    "mirror",
                    now,
                    f"manifest {repo}@{_short(digest)} stored with bytes hashing to {_short(_hash(body))}",
                )
        for kv in store.live_items(*keys.links(repo)):
            digest = keys.strip("l", kv.key).rsplit("@", 1)[1]
            data = objects.blobs.get(digest)
            judged += 1
            if data is not None and _hash(data) != digest:
                findings.add(
                    "mirror",
                    now,
                    f"blob {repo}@{_short(digest)} stored with bytes hashing to {_short(_hash(data))}",
                )
        for kv in store.live_items(*keys.tags(repo)):
            tag = keys.strip("t", kv.key).rsplit("@", 1)[1]
            digest = decode(TagRecord, kv.value).digest
            judged += 1
            if tag in {t for p, t in model.timeline if p == path} and digest not in model.held(
                path, tag, now
            ):
                findings.add("mirror", now, f"tag {repo}:{tag} names {_short(digest)}, never the upstream's")
    return judged


def check_single_flight(model: UpstreamModel, findings: Findings, now: float) -> dict[str, int]:
    """Fetches of one repository's blob on two replicas that each held the claim
    in etcd from start to end never overlap.  The claim names a replica, not a
    request: a fetch on a replica whose other request held the claim looks
    claimed at its start, so only a claim still held, by the same lease, at the
    fetch's end counts."""
    by_blob: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for fetch in model.log.fetches:
        if fetch.held_throughout and fetch.end is not None:
            by_blob.setdefault((fetch.repo, fetch.digest), []).append((fetch.start, fetch.end, fetch.replica))
    most = 0
    for (repo, digest), spans in sorted(by_blob.items()):
        spans.sort()
        most = max(most, len(spans))
        for (s1, e1, r1), (s2, _e2, r2) in itertools.pairwise(spans):
            if s2 < e1 and r1 != r2:
                findings.add(
                    "single-flight",
                    s2,
                    f"blob {repo}@{_short(digest)} fetched by {r2} at {s2:.3f}s while {r1}'s claimed "
                    f"fetch (from {s1:.3f}s) ran until {e1:.3f}s",
                )
    return {
        "fetches": len(model.log.fetches),
        "claimed": sum(f.held_throughout for f in model.log.fetches),
        # Fetches begun while another replica's claim stood: allowed only when
        # etcd could not be asked, or after waiting FETCH_WAIT (docs/pull-through.md).
        "beside_claim": sum(f.beside_claim for f in model.log.fetches),
        "most_claimed_per_blob": most,
    }


def check(
    model: UpstreamModel,
    log: MirrorLog,
    store: MVCCStore,
    objects: ObjectStore,
    keys: Keys,
    findings: Findings,
    now: float,
) -> dict[str, Any]:
    """Every mirror check; the run's mirror statistics."""
    check_served(model, log, findings)
    stored = check_stored(model, store, objects, keys, findings, now)
    flights = check_single_flight(model, findings, now)
    ok = [p for p in log.pulls if p.ok]
    return {
        "pulls": len(log.pulls),
        "ok": len(ok),
        "stale": sum(p.stale for p in ok),
        "stored_judged": stored,
        "upstream_requests": model.log.requests,
        "lies": dict(sorted(model.log.lies.items())),
        "failures": dict(sorted(model.log.failures.items())),
        **flights,
    }
