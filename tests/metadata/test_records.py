"""Records round-trip through msgpack, and decoding tolerates newer writers."""

from __future__ import annotations

import dataclasses

import msgpack

from hareg.metadata.records import HistoryEntry, ManifestRecord, TagRecord, decode, encode


def test_a_record_round_trips_with_tuples_and_maps() -> None:
    rec = ManifestRecord(
        media_type="application/vnd.oci.image.manifest.v1+json",
        size=3,
        created=1.5,
        blobs=("sha256:a", "sha256:b"),
        annotations={"k": "v"},
        body=b"{}",
    )
    assert decode(ManifestRecord, encode(rec)) == rec


def test_encoding_is_the_map_of_the_fields_in_order() -> None:
    rec = HistoryEntry(seq=2, time=3.0, old=None, new="sha256:x", replica="r0", action="push")
    assert msgpack.unpackb(encode(rec), raw=False) == dataclasses.asdict(rec)
    assert list(msgpack.unpackb(encode(rec), raw=False)) == [f.name for f in dataclasses.fields(rec)]


def test_fields_a_newer_replica_added_are_ignored() -> None:
    data = msgpack.packb(
        {"digest": "sha256:x", "seq": 1, "updated": 0.0, "replica": "r9", "write_id": "w", "future": 1},
        use_bin_type=True,
    )
    assert decode(TagRecord, data) == TagRecord("sha256:x", 1, 0.0, "r9", "w")
