"""A minimal AWS Signature V4 signer (stdlib only): for the few S3 requests
obstore has no call for (listing and aborting multipart uploads,
``hareg/storage/s3_sweep.py``) and for SeaweedFS's readiness probe.

``url``'s query must already be canonical (sorted, each name and value
percent-encoded as ``canonical_query`` does).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse

__all__ = ["canonical_query", "sign_request"]


def canonical_query(params: dict[str, str]) -> str:
    """The query string SigV4 signs: sorted, names and values percent-encoded."""
    quote = urllib.parse.quote
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))


def sign_request(
    method: str,
    url: str,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    body: bytes = b"",
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    parts = urllib.parse.urlsplit(url)
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    payload_hash = hashlib.sha256(body).hexdigest()
    headers = {"host": parts.netloc, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            parts.query,
            "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
            signed,
            payload_hash,
        ]
    )
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret_key}".encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers
