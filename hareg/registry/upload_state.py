"""Upload state carried in the upload URL, signed with the shared httpSecret.

Like distribution's ``_state`` parameter: the Location a client gets back names
the repository and upload id under an HMAC, so any replica (they all share the
secret) can check that the URL is one the registry issued for that repository,
and a tampered or forged URL is refused before any storage is touched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from hareg.registry.errors import ErrorCode, RegistryError

STATE_PARAM = "_state"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UploadStateSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("httpSecret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, repo: str, upload_id: str) -> str:
        payload = json.dumps({"n": repo, "u": upload_id}, separators=(",", ":")).encode()
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
