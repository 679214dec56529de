"""Child processes hareg starts and supervises: the embedded etcd, SeaweedFS
for tests and the local cluster, and the free ports they listen on."""
