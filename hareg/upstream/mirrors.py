"""The configuration's ``pullThrough`` entries as the service layer's mirrors,
each with its HTTP client (``hareg serve`` builds them once at start-up)."""

from __future__ import annotations

from collections.abc import Callable

from hareg.clock import Clock
from hareg.config.model import Config
from hareg.registry.pull_through import Mirror
from hareg.upstream.client import Credentials, RegistryClient


class MirrorSetupError(Exception):
    """A pullThrough entry that cannot be used (its password or CA file); says which."""


def build_mirrors(
    config: Config, clock: Clock, on_secret: Callable[[bytes], None] | None = None
) -> list[Mirror]:
    """One Mirror per ``pullThrough`` entry; ``on_secret`` is told each password
    (so the log redaction list holds it).  Files are read here, once: a
    missing or unreadable one stops start-up with the field's name."""
    mirrors: list[Mirror] = []
    for index, entry in enumerate(config.pull_through):
        credentials = None
        if entry.username is not None and entry.password_file is not None:
            try:
                with open(entry.password_file, encoding="utf-8") as f:
                    password = f.read().rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise MirrorSetupError(
                    f"pullThrough[{index}].passwordFile: cannot read {entry.password_file}: "
                    f"{getattr(exc, 'strerror', None) or exc}"
                ) from None
            if not password:
                raise MirrorSetupError(f"pullThrough[{index}].passwordFile: {entry.password_file} is empty")
            if on_secret is not None:
                on_secret(password.encode())
            credentials = Credentials(entry.username, password)
        try:
            client = RegistryClient(
                entry.remote,
                clock,
                credentials=credentials,
                proxy=config.proxy,
                ca_file=entry.ca_file,
                insecure=entry.insecure,
            )
        except OSError as exc:  # the CA bundle
            raise MirrorSetupError(
                f"pullThrough[{index}].caFile: cannot load {entry.ca_file}: {exc.strerror or exc}"
            ) from None
        mirrors.append(Mirror(entry.prefix, client, entry.ttl, entry.allow, entry.expire_after))
    return mirrors
