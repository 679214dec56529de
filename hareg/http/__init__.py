"""The HTTP layer: aiohttp handlers, one module per resource of the OCI Distribution API."""
