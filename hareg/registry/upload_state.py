"""Upload state carried in the upload URL, signed with the shared httpSecret.

Like distribution's ``_state`` parameter: the Location a client gets back names
the repository and upload id under an HMAC, so any replica (they all share the
secret) can check that the URL is one the registry issued for that repository,
and a tampered or forged URL is refused before any storage is touched.

The state also carries an expiry: a session's record lives under a lease of
the session TTL (renewed by its writes), and every Location the registry
returns is valid as long as a session last written then can live.  A URL
past it names no session (BLOB_UPLOAD_UNKNOWN), even if the session was kept
alive by later requests (their Locations are the valid ones).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from hareg.clock import Clock
from hareg.registry.errors import ErrorCode, RegistryError

STATE_PARAM = "_state"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadStateSigner:
    def __init__(self, secret: bytes, clock: Clock, ttl: float) -> None:
        if len(secret) < 16:
            raise ValueError("httpSecret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock
        self._ttl = ttl  # how long a Location stays valid: the session's lease TTL

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, repo: str, upload_id: str) -> str:
        expires = int(self._clock.now() + self._ttl) + 1
        payload = json.dumps({"n": repo, "u": upload_id, "e": expires}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str | None, repo: str, upload_id: str) -> None:
        """Raise BLOB_UPLOAD_UNKNOWN unless ``token`` was issued for this repository
        and upload: a URL the registry did not issue names no upload it knows."""
        invalid = RegistryError(
            ErrorCode.BLOB_UPLOAD_UNKNOWN,
            "the upload URL's signed state is missing or invalid; use the Location the registry returned",
        )
        if not token or "." not in token or len(token) > 2048:
            raise invalid
        payload_b64, mac_b64 = token.split(".", 1)
        try:
            payload, mac = _unb64(payload_b64), _unb64(mac_b64)
        except ValueError:
            raise invalid from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise invalid
        try:
            state = json.loads(payload)
        except ValueError:
            raise invalid from None
        if not isinstance(state, dict) or state.get("n") != repo or state.get("u") != upload_id:
            raise invalid
        expires = state.get("e")
        # A URL issued before URLs expired carries none: it is refused like an expired one.
        if not isinstance(expires, int) or isinstance(expires, bool) or self._clock.now() > expires:
            raise RegistryError(
                ErrorCode.BLOB_UPLOAD_UNKNOWN,
                "the upload URL has expired with its session; start the upload again",
            )
