"""The ``hareg serve`` process: wiring the registry to its listeners
(serve.py), TLS routes (tls.py) and reloading on SIGHUP (reload.py)."""
