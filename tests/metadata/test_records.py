"""Records round-trip in their compact form, the maps earlier versions wrote
still decode, and decoding tolerates newer writers."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid

import msgpack

from hareg.metadata.records import (
    HistoryEntry,
    LinkRecord,
    ManifestRecord,
    ReferrerRecord,
    TagRecord,
    UploadRecord,
    decode,
    encode,
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_record_round_trips_with_tuples_and_maps() -> None:
    rec = ManifestRecord(
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=3,
        created=1.5,
        blobs=("sha256:a", sha256(b"b"), "sha512:" + hashlib.sha512(b"c").hexdigest()),
        annotations={"k": "v", "d": sha256(b"d")},
        body=b"{}",
    )
    assert decode(ManifestRecord, encode(rec)) == rec


def test_the_encoding_is_an_array_of_the_fields_in_order_without_trailing_defaults() -> None:
    rec = HistoryEntry(seq=2, time=3.0, old=None, new="sha256:x", replica="r0", action="push")
    assert msgpack.unpackb(encode(rec), raw=False) == list(dataclasses.astuple(rec))
    link = LinkRecord(size=5, created=1.0)  # touched: its default, left out
    assert msgpack.unpackb(encode(link), raw=False) == [5, 1.0]
    assert decode(LinkRecord, encode(link)) == link


def test_digests_and_write_ids_are_stored_as_raw_bytes() -> None:
    digest, write_id = sha256(b"x"), str(uuid.uuid4())
    rec = TagRecord(digest, 7, 1.7e9, "replica-0", write_id)
    data = encode(rec)
    assert digest.encode() not in data and write_id.encode() not in data
    assert bytes.fromhex(digest[7:]) in data and uuid.UUID(write_id).bytes in data
    assert len(data) < 80  # 170 bytes as a map of field names
    assert decode(TagRecord, data) == rec
    # Text that only looks alike stays text: upper-case hex, a short digest, a non-canonical UUID.
    odd = TagRecord("sha256:" + "AB" * 32, 1, 0.0, "r", write_id.upper())
    assert decode(TagRecord, encode(odd)) == odd


def test_a_large_record_is_stored_deflated_and_digests_its_body_repeats_cost_little() -> None:
    layers = [sha256(bytes([i])) for i in range(5)]
    body = json.dumps(
        {
            "schemaVersion": 2,
            "layers": [{"mediaType": "application/x", "digest": d, "size": 1} for d in layers],
        }
    ).encode()
    rec = ManifestRecord(
        "application/vnd.oci.image.manifest.v1+json", len(body), 1.0, tuple(layers), body=body
    )
    data = encode(rec)
    assert data[0] == 0xC1  # never the first byte of msgpack
    assert len(data) < len(body)  # the body's own digests are where the record's point back to
    assert decode(ManifestRecord, data) == rec


def test_maps_an_earlier_version_wrote_still_decode() -> None:
    """Exactly the bytes the map encoding wrote (``msgpack.packb({name: value})``)."""
    old_manifest = {
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "size": 10,
        "created": 2.5,
        "blobs": [sha256(b"c"), sha256(b"l")],
        "manifests": [],
        "subject": sha256(b"s"),
        "artifact_type": "application/x.sig",
        "annotations": {"a": "b"},
        "body": b'{"schemaVersion":2}',
    }
    rec = decode(ManifestRecord, msgpack.packb(old_manifest, use_bin_type=True))
    assert rec.blobs == (sha256(b"c"), sha256(b"l")) and rec.annotations == {"a": "b"}
    assert rec.body == b'{"schemaVersion":2}' and rec.subject == sha256(b"s")
    old_referrer = {"media_type": "m", "size": 1, "artifact_type": None, "annotations": {"x": "y"}}
    assert decode(ReferrerRecord, msgpack.packb(old_referrer, use_bin_type=True)) == ReferrerRecord(
        "m", 1, None, {"x": "y"}
    )
    old_upload = {"repo": "r", "algorithm": "sha256", "created": 1.0, "updated": 2.0}  # before "sealed"
    assert decode(UploadRecord, msgpack.packb(old_upload, use_bin_type=True)) == UploadRecord(
        "r", "sha256", 1.0, 2.0
    )


def test_fields_a_newer_replica_added_are_ignored() -> None:
    data = msgpack.packb(
        {"digest": "sha256:x", "seq": 1, "updated": 0.0, "replica": "r9", "write_id": "w", "future": 1},
        use_bin_type=True,
    )
    assert decode(TagRecord, data) == TagRecord("sha256:x", 1, 0.0, "r9", "w")
    newer = msgpack.packb(["sha256:x", 1, 0.0, "r9", "w", "a field of the future"], use_bin_type=True)
    assert decode(TagRecord, newer) == TagRecord("sha256:x", 1, 0.0, "r9", "w")
