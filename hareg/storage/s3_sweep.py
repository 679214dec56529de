"""Incomplete multipart uploads left in the bucket by a replica that died in
the middle of a whole-blob put (``S3Driver.upload_put``): listed and aborted.

A put that fails or is cancelled is aborted by obstore itself; only a
process killed mid-put leaves one behind, its parts stored but invisible.
obstore has no call to list or abort multipart uploads, so this module makes
those two S3 requests itself (ListMultipartUploads, AbortMultipartUpload)
with the standard library's HTTP client in a worker thread, signed by
``hareg/storage/sigv4.py``.  It needs static credentials (an access key and
a secret key): without them the driver does not sweep.
"""

from __future__ import annotations

import asyncio
import datetime
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from xml.etree import ElementTree

from hareg.storage.base import StorageError, StorageUnavailable
from hareg.storage.sigv4 import canonical_query, sign_request

__all__ = ["Incomplete", "MultipartSweeper"]

_NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
_PAGES = 100  # at most 100,000 uploads looked at per sweep


@dataclass(frozen=True, slots=True)
class Incomplete:
    key: str
    upload_id: str
    initiated: datetime.datetime


class MultipartSweeper:
    """ListMultipartUploads and AbortMultipartUpload on one bucket."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        endpoint: str | None,
        virtual_hosted_style: bool,
        access_key: str,
        secret_key: str,
        timeout: float,
    ) -> None:
        base = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
        if virtual_hosted_style:
            split = urllib.parse.urlsplit(base)
            self._root = f"{split.scheme}://{bucket}.{split.netloc}"
        else:
            self._root = f"{base}/{bucket}"
        self._region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self._timeout = timeout

    def _request(self, method: str, key: str, params: dict[str, str]) -> bytes:
        url = f"{self._root}/{urllib.parse.quote(key, safe='/-_.~')}?{canonical_query(params)}"
        headers = sign_request(
            method, url, access_key=self._access_key, secret_key=self._secret_key, region=self._region
        )
        request = urllib.request.Request(url, method=method)
        for name, value in headers.items():
            if name != "host":
                request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                body: bytes = resp.read()
                return body
        except urllib.error.HTTPError as e:
            if e.code == 404 and method == "DELETE":
                return b""  # aborted already
            error = StorageUnavailable if e.code >= 500 else StorageError
            raise error(f"object store answered {e.code} to {method} {key or '/'}?{'&'.join(params)}") from e
        except (OSError, TimeoutError) as e:
            raise StorageUnavailable(f"object store failed {method} {key or '/'}: {e}") from e

    def list_incomplete(self, prefix: str) -> list[Incomplete]:
        """Every incomplete multipart upload whose key starts with ``prefix``."""
        found: list[Incomplete] = []
        params = {"uploads": "", "prefix": prefix}
        for _ in range(_PAGES):
            root = ElementTree.fromstring(self._request("GET", "", params))
            for upload in root.findall("s3:Upload", _NS):
                key = upload.findtext("s3:Key", "", _NS)
                upload_id = upload.findtext("s3:UploadId", "", _NS)
                initiated = upload.findtext("s3:Initiated", "", _NS)
                try:
                    when = datetime.datetime.fromisoformat(initiated.replace("Z", "+00:00"))
                except ValueError:
                    continue
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.UTC)
                if key and upload_id:
                    found.append(Incomplete(key, upload_id, when))
            if root.findtext("s3:IsTruncated", "false", _NS).lower() != "true":
                break
            params = {
                **params,
                "key-marker": root.findtext("s3:NextKeyMarker", "", _NS),
                "upload-id-marker": root.findtext("s3:NextUploadIdMarker", "", _NS),
            }
        return found

    def abort(self, key: str, upload_id: str) -> None:
        self._request("DELETE", key, {"uploadId": upload_id})

    async def sweep(self, prefix: str, older_than: datetime.datetime) -> int:
        """Abort every incomplete multipart upload under ``prefix`` initiated
        before ``older_than``; returns how many were aborted."""
        stale = [u for u in await asyncio.to_thread(self.list_incomplete, prefix) if u.initiated < older_than]
        for upload in stale:
            await asyncio.to_thread(self.abort, upload.key, upload.upload_id)
        return len(stale)
