"""The HTTP client of upstream registries (pull-through): aiohttp behind the
service layer's ``hareg.registry.upstream.Upstream`` protocol, built and
wired in by ``hareg serve`` as a blob store driver is."""
