"""What a replica tells its operators: structured, redacted logs and
Prometheus metrics."""
