"""Benchmarks for hareg, side by side with CNCF distribution on the same machine.

``python -m bench throughput ...`` (see ``bench/__main__.py``).  One job per
module: ``client`` is the async OCI client, ``blobs`` makes deterministic blob
content, ``targets`` starts and measures the registries, ``workload`` runs
timed operations with latencies, ``throughput`` is the benchmark itself and
``report`` writes its JSON, Markdown and plots.
"""
