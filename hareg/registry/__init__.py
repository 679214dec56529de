"""The registry service layer: every operation of the OCI Distribution API,
with no HTTP in it (the HTTP handlers and the simulator both call it)."""
