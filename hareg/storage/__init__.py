"""Blob storage: the driver interface and its errors (base.py), and the
wrapper every driver is served through (checked.py: argument checks and
per-call metrics).

Drivers live in submodules (``hareg.storage.filesystem``, ...) and are imported
explicitly, so that importing this package never pulls in optional dependencies.
"""
