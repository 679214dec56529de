"""Registry metadata in a KV store (etcd): key layout, records, and the
transactions that keep the invariants (docs/invariants.md)."""
