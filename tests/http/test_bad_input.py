"""A sweep of hostile input across every endpoint.

Each request is sent byte-exact (no client-side normalisation) and must get a
4xx with the spec's JSON error body and a spec error code, never a 5xx; after
the whole sweep, etcd (every key under the registry's prefix, with its
mod_revision) and the blob store directory are exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from oci_helpers import (
    EMPTY_JSON,
    OCI_INDEX,
    OCI_MANIFEST,
    SPEC_CODES,
    Client,
    RawResponse,
    config_blob,
    descriptor,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    raw_request,
    sha256,
    snapshot,
    start_upload,
)
from yarl import URL

from hareg.metadata.store import DEFAULT_INLINE_LIMIT
from hareg.registry.service import Registry

HEX = "ab" * 32
VALID_DIGEST = f"sha256:{HEX}"

# Repository names that must be refused (as they appear in the request path).
BAD_NAMES = [
    "Repo",
    "REPO/x",
    "..",
    "repo/..",
    "../repo",
    "a/../repo",
    "a/./repo",
    "/repo",  # leading slash: /v2//repo/...
    "repo/",  # trailing slash
    "a//repo",
    "%2e%2e",
    "%2E%2E/repo",
    "repo/%2e%2e/other",
    "%252e%252e",  # double encoded
    "repo%2F..%2Fother",
    "..%2F..%2Fetc",
    "a" * 256,
    "/".join(["abcdefgh"] * 40),  # long, made of valid components
    "r%C3%A9po",  # unicode (é)
    "%E2%80%AEoper",  # right-to-left override
    "repo%00",
    "re%00po",
    "repo%0A",  # trailing newline
    "repo%0D%0A",
    "re%20po",
    "repo%5C..%5Cother",  # backslashes
    "repo\\x",
    "-repo",
    "repo-",
    "a..b",
    "a___b",
    "_catalog",
    "repo@x",
    "repo:tag",
]

# Tags that must never name a manifest.
BAD_TAGS = [
    "a" * 129,
    ".hidden",
    "-dash",
    "tag%20x",
    "tag%00",
    "tag%0A",
    "t%C3%A9g",
    "a@b",
    "a+b",
    "a%2Fb",
    "a%5Cb",
    "..%2F..%2Fx",
    "%2e%2e",
    "tag*",
    "tag%25",
]

# Digests that must be refused wherever a digest is expected.
BAD_DIGESTS = [
    "sha256",
    ":" + HEX,
    "sha256:",
    "sha256:abc",
    "sha256:" + HEX.upper(),
    "sha256:" + HEX + "0",
    "sha256:" + HEX[:-1],
    "sha512:" + HEX,
    "md5:" + "0" * 32,
    "sha1:" + "0" * 40,
    "SHA256:" + HEX,
    "sha256:" + "g" * 64,
    "sha256:" + HEX + "%00",
    "sha256:" + HEX + "%0A",
    "sha256:..%2F..%2Fetc%2Fpasswd",
    "sha256:..%5C..%5Cx",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "sha256%3A" + HEX[:10],
    "sha256+x:" + HEX,
]

BAD_UPLOAD_IDS = [
    "..%2F..%2Fblobs",
    "..",
    "%2e%2e",
    "not-a-uuid",
    "00000000-0000-0000-0000-000000000000",
    "x" * 300,
    "%00",
    "a%5Cb",
]


@dataclass
class Case:
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    statuses: tuple[int, ...] = (400, 404)
    codes: frozenset[str] = SPEC_CODES

    def label(self) -> str:
        return f"{self.method} {self.target[:160]}"


@dataclass
class World:
    """What the registry holds before the sweep."""

    manifest: bytes
    manifest_digest: str
    blob: str
    index_child: str
    upload: str  # the Location of an upload in progress (path and signed state)


NAME_ERR = frozenset({"NAME_INVALID"})
# A name with CR or LF does not match the routes at all ('.' stops at a newline).
UNROUTABLE = frozenset({"UNSUPPORTED"})
DIGEST_ERR = frozenset({"DIGEST_INVALID"})


def name_cases(w: World) -> list[Case]:
    cases: list[Case] = []
    upload = URL(w.upload)
    state = upload.raw_query_string
    upload_id = upload.path.rsplit("/", 1)[1]
    json_type = {"Content-Type": OCI_MANIFEST}
    for name in BAD_NAMES:
        named: list[Case] = [
            Case("GET", f"/v2/{name}/tags/list", codes=NAME_ERR, statuses=(400,)),
            Case("GET", f"/v2/{name}/tags/list?n=2&last=a", codes=NAME_ERR, statuses=(400,)),
            Case("GET", f"/v2/{name}/manifests/latest", codes=NAME_ERR, statuses=(400,)),
            Case("HEAD", f"/v2/{name}/manifests/latest", statuses=(400,)),
            Case("GET", f"/v2/{name}/manifests/{w.manifest_digest}", codes=NAME_ERR, statuses=(400,)),
            Case(
                "PUT", f"/v2/{name}/manifests/latest", json_type, w.manifest, codes=NAME_ERR, statuses=(400,)
            ),
            Case("PUT", f"/v2/{name}/manifests/{w.manifest_digest}", json_type, w.manifest, codes=NAME_ERR),
            Case("DELETE", f"/v2/{name}/manifests/latest", codes=NAME_ERR, statuses=(400,)),
            Case("DELETE", f"/v2/{name}/manifests/{w.manifest_digest}", codes=NAME_ERR, statuses=(400,)),
            Case("GET", f"/v2/{name}/blobs/{w.blob}", codes=NAME_ERR, statuses=(400,)),
            Case("HEAD", f"/v2/{name}/blobs/{w.blob}", statuses=(400,)),
            Case("DELETE", f"/v2/{name}/blobs/{w.blob}", codes=NAME_ERR, statuses=(400,)),
            Case("POST", f"/v2/{name}/blobs/uploads/", codes=NAME_ERR, statuses=(400,)),
            Case(
                "POST",
                f"/v2/{name}/blobs/uploads/?digest={sha256(b'x')}",
                body=b"x",
                codes=NAME_ERR,
                statuses=(400,),
            ),
            Case(
                "POST", f"/v2/{name}/blobs/uploads/?mount={w.blob}&from=repo", codes=NAME_ERR, statuses=(400,)
            ),
            Case("GET", f"/v2/{name}/blobs/uploads/{upload_id}?{state}", codes=NAME_ERR, statuses=(400,)),
            Case(
                "PATCH",
                f"/v2/{name}/blobs/uploads/{upload_id}?{state}",
                body=b"data",
                codes=NAME_ERR,
                statuses=(400,),
            ),
            Case(
                "PUT",
                f"/v2/{name}/blobs/uploads/{upload_id}?{state}&digest={w.blob}",
                codes=NAME_ERR,
                statuses=(400,),
            ),
            Case("DELETE", f"/v2/{name}/blobs/uploads/{upload_id}?{state}", codes=NAME_ERR, statuses=(400,)),
            Case("GET", f"/v2/{name}/referrers/{w.manifest_digest}", codes=NAME_ERR, statuses=(400,)),
        ]
        if "%0A" in name or "%0D" in name:
            for case in named:
                case.statuses, case.codes = (404,), UNROUTABLE
        cases += named
    # Mounting *from* an invalid name into another invalid one.
    cases.append(
        Case(
            "POST", f"/v2/Repo/blobs/uploads/?mount={w.blob}&from=..%2Frepo", codes=NAME_ERR, statuses=(400,)
        )
    )
    return cases


def tag_cases(w: World) -> list[Case]:
    cases: list[Case] = []
    for tag in BAD_TAGS:
        cases += [
            Case("GET", f"/v2/repo/manifests/{tag}", statuses=(404,), codes=frozenset({"MANIFEST_UNKNOWN"})),
            Case("HEAD", f"/v2/repo/manifests/{tag}", statuses=(404,)),
            Case(
                "PUT",
                f"/v2/repo/manifests/{tag}",
                {"Content-Type": OCI_MANIFEST},
                w.manifest,
                statuses=(400,),
            ),
            Case("DELETE", f"/v2/repo/manifests/{tag}"),
            Case(
                "PUT",
                f"/v2/repo/manifests/{w.manifest_digest}?tag=ok&tag={tag}",
                {"Content-Type": OCI_MANIFEST},
                w.manifest,
                statuses=(400,),
            ),
        ]
    return cases


def digest_cases(w: World) -> list[Case]:
    cases: list[Case] = []
    for d in BAD_DIGESTS:
        cases += [
            Case("GET", f"/v2/repo/blobs/{d}", codes=DIGEST_ERR, statuses=(400,)),
            Case("HEAD", f"/v2/repo/blobs/{d}", statuses=(400,)),
            Case("DELETE", f"/v2/repo/blobs/{d}", codes=DIGEST_ERR, statuses=(400,)),
            Case("GET", f"/v2/repo/referrers/{d}", codes=DIGEST_ERR, statuses=(400,)),
            Case("POST", f"/v2/repo/blobs/uploads/?digest={d}", body=b"x", codes=DIGEST_ERR, statuses=(400,)),
            Case("POST", f"/v2/repo/blobs/uploads/?mount={d}&from=repo", codes=DIGEST_ERR, statuses=(400,)),
            Case("PUT", f"{w.upload}&digest={d}", codes=DIGEST_ERR, statuses=(400,)),
            Case("PUT", f"{w.upload}&digest={d}", body=b"final chunk", codes=DIGEST_ERR, statuses=(400,)),
        ]
        if ":" in d or "%3A" in d:  # without ':' it would be a (valid or invalid) tag
            cases += [
                Case(
                    "GET", f"/v2/repo/manifests/{d}", codes=frozenset({"DIGEST_INVALID", "MANIFEST_UNKNOWN"})
                ),
                Case(
                    "PUT",
                    f"/v2/repo/manifests/{d}",
                    {"Content-Type": OCI_MANIFEST},
                    w.manifest,
                    statuses=(400,),
                ),
                Case(
                    "DELETE",
                    f"/v2/repo/manifests/{d}",
                    codes=frozenset({"DIGEST_INVALID", "MANIFEST_UNKNOWN"}),
                ),
            ]
    for algorithm in ("md5", "sha1", "SHA256", "sha256%00", "..%2Fsha256", ""):
        cases.append(
            Case(
                "POST",
                f"/v2/repo/blobs/uploads/?digest-algorithm={algorithm}",
                codes=DIGEST_ERR,
                statuses=(400,),
            )
        )
    return cases


def upload_cases(w: World) -> list[Case]:
    unknown = frozenset({"BLOB_UPLOAD_UNKNOWN"})
    upload = URL(w.upload)
    state = upload.raw_query_string
    cases: list[Case] = []
    for upload_id in BAD_UPLOAD_IDS:
        for suffix in ("", f"?{state}"):
            base = f"/v2/repo/blobs/uploads/{upload_id}{suffix}"
            amp = "&" if suffix else "?"
            cases += [
                Case("GET", base, codes=unknown, statuses=(404,)),
                Case("PATCH", base, body=b"data", codes=unknown, statuses=(404,)),
                Case(
                    "PUT",
                    f"{base}{amp}digest={sha256(b'data')}",
                    body=b"data",
                    codes=unknown,
                    statuses=(404,),
                ),
                Case("DELETE", base, codes=unknown, statuses=(404,)),
            ]
    # The real upload through another repository's URL, or with a forged state.
    other = w.upload.replace("/v2/repo/", "/v2/other/", 1)
    forged = f"{upload.path}?_state=AAAA.BBBB"
    for target in (other, forged, upload.path):
        cases += [
            Case("GET", target, codes=unknown, statuses=(404,)),
            Case("PATCH", target, body=b"data", codes=unknown, statuses=(404,)),
            Case("DELETE", target, codes=unknown, statuses=(404,)),
        ]
    # Chunks that do not continue the upload, or declare nonsense.
    huge = "1" * 4400  # more digits than int() accepts, within aiohttp's header size limit
    for content_range in (
        "5-9",
        "100-104",
        "0-3",
        "9-5",
        "bytes=abc",
        "-1-3",
        "0--1",
        "99999999999999999999-1",
        f"{huge}-1",
        f"0-{huge}",
        "%D9%A3-%D9%A5",
    ):
        cases.append(
            Case(
                "PATCH",
                w.upload,
                {"Content-Range": content_range},
                b"12345",
                statuses=(400, 416),
                codes=frozenset({"BLOB_UPLOAD_INVALID"}),
            )
        )
    cases.append(
        Case(
            "PUT",
            f"{w.upload}&digest={sha256(b'12345')}",
            {"Content-Range": "7-11"},
            b"12345",
            statuses=(416,),
            codes=frozenset({"BLOB_UPLOAD_INVALID"}),
        )
    )
    return cases


def content_cases(w: World) -> list[Case]:
    """Bodies and states the registry must refuse without changing anything."""
    manifest_type = {"Content-Type": OCI_MANIFEST}
    invalid = frozenset({"MANIFEST_INVALID"})
    cases = [
        Case("PUT", "/v2/repo/manifests/v9", manifest_type, body, statuses=(400,), codes=invalid)
        for body in (
            b"",
            b"{",
            b"\x00\x01\x02",
            b"[]",
            b"null",
            b'{"schemaVersion": 1}',
            b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}',
            b"[" * 50_000 + b"]" * 50_000,
            b'{"schemaVersion":2,"config":{"mediaType":"x","digest":"'
            + VALID_DIGEST.encode()
            + b'","size":1},'
            b'"annotations":{"k":"\\udc00"}}',
        )
    ]
    missing_layer = image_manifest(config_blob("bad-input"), [b"missing"])
    big_missing = json.loads(missing_layer)
    big_missing["annotations"] = {"pad": "p" * (DEFAULT_INLINE_LIMIT + 10)}
    ghost_child = index_manifest([(OCI_MANIFEST, b'{"ghost": true}')])
    cases += [
        # References that do not exist in the repository.
        Case("PUT", "/v2/repo/manifests/v9", manifest_type, missing_layer, statuses=(400,)),
        Case(
            "PUT", "/v2/repo/manifests/v9", manifest_type, json.dumps(big_missing).encode(), statuses=(400,)
        ),
        Case("PUT", "/v2/repo/manifests/v9", {"Content-Type": OCI_INDEX}, ghost_child, statuses=(400,)),
        Case("PUT", "/v2/fresh/manifests/v9", manifest_type, w.manifest, statuses=(400,)),
        # Content-Type contradicting the body, or unsupported.
        Case("PUT", "/v2/repo/manifests/v9", {"Content-Type": OCI_INDEX}, w.manifest, statuses=(400,)),
        Case("PUT", "/v2/repo/manifests/v9", {"Content-Type": "text/html"}, w.manifest, statuses=(400,)),
        # A digest that is not the body's.
        Case(
            "PUT",
            f"/v2/repo/manifests/{VALID_DIGEST}",
            manifest_type,
            w.manifest,
            statuses=(400,),
            codes=DIGEST_ERR,
        ),
        # Deletes refused while something references the target.
        Case("DELETE", f"/v2/repo/blobs/{w.blob}", statuses=(400,), codes=frozenset({"DENIED"})),
        Case("DELETE", f"/v2/repo/manifests/{w.index_child}", statuses=(400,), codes=frozenset({"DENIED"})),
        # Unknown things.
        Case("DELETE", f"/v2/repo/blobs/{VALID_DIGEST}", statuses=(404,), codes=frozenset({"BLOB_UNKNOWN"})),
        Case(
            "DELETE",
            f"/v2/repo/manifests/{VALID_DIGEST}",
            statuses=(404,),
            codes=frozenset({"MANIFEST_UNKNOWN"}),
        ),
        Case(
            "DELETE", "/v2/repo/manifests/nosuchtag", statuses=(404,), codes=frozenset({"MANIFEST_UNKNOWN"})
        ),
        Case("DELETE", f"/v2/nosuch/blobs/{w.blob}", statuses=(404,), codes=frozenset({"BLOB_UNKNOWN"})),
        Case("GET", "/v2/nosuch/tags/list", statuses=(404,), codes=frozenset({"NAME_UNKNOWN"})),
        # A wrong digest for a single-POST upload.
        Case(
            "POST",
            f"/v2/repo/blobs/uploads/?digest={VALID_DIGEST}",
            body=b"not it",
            statuses=(400,),
            codes=DIGEST_ERR,
        ),
        Case("POST", "/v2/repo/blobs/uploads/?digest=", body=b"x", statuses=(400,), codes=DIGEST_ERR),
        # Ranges that cannot be served.
        Case("GET", f"/v2/repo/blobs/{w.blob}", {"Range": "bytes=999999-"}, statuses=(416,)),
        Case("GET", f"/v2/repo/blobs/{w.blob}", {"Range": "bytes=abc"}, statuses=(416,)),
    ]
    # Pagination parameters.
    for n in ("-1", "abc", "%C2%B2", "%D9%A3", "1e3", "0x1", "+1"):
        cases += [
            Case("GET", f"/v2/repo/tags/list?n={n}", statuses=(400,)),
            Case("GET", f"/v2/_catalog?n={n}", statuses=(400,)),
        ]
    # Methods the API does not have.
    cases += [
        Case(method, target, statuses=(404, 405), codes=frozenset({"UNSUPPORTED"}))
        for method, target in (
            ("PUT", "/v2/repo/tags/list"),
            ("POST", "/v2/repo/manifests/latest"),
            ("PATCH", f"/v2/repo/blobs/{w.blob}"),
            ("PUT", f"/v2/repo/blobs/{w.blob}"),
            ("DELETE", "/v2/"),
            ("POST", "/v2/_catalog"),
            ("GET", "/v2/repo/blobs/uploads/"),
            ("TRACE", "/v2/repo/tags/list"),
            ("OPTIONS", f"/v2/repo/manifests/{w.manifest_digest}"),
            ("GET", "/v2/repo/manifests/"),
            ("GET", "/v2/repo"),
            ("GET", "/v2/repo/tags"),
            ("GET", "/v3/"),
            ("GET", "/v2/repo/blobs/"),
        )
    ]
    return cases


async def build_world(client: Client) -> World:
    image = await push_image(client, "repo", "v1")
    index = index_manifest([(OCI_MANIFEST, image.body)])
    assert (await put_manifest(client, "repo", "multi", index, OCI_INDEX)).status == 201
    await push_blob(client, "other", EMPTY_JSON)
    upload = await start_upload(client, "repo")
    r = await client.patch(upload, data=b"0123456789", headers={"Content-Range": "0-9"})
    assert r.status == 202
    return World(image.body, image.digest, image.blobs[0], image.digest, r.headers["Location"])


def check(case: Case, r: RawResponse) -> str | None:
    """Why the response is wrong, or None."""
    if not 400 <= r.status < 500:
        return f"status {r.status}"
    if r.status not in case.statuses:
        return f"status {r.status}, expected {case.statuses}"
    if r.status == 405 and "Allow" not in r.headers:
        return "405 without an Allow header"
    if case.method == "HEAD":
        return None
    if r.headers.get("Content-Type", "").split(";")[0] != "application/json":
        return f"Content-Type {r.headers.get('Content-Type')!r}: {r.body[:100]!r}"
    try:
        doc = r.json()
        code = doc["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a spec error body: {r.body[:200]!r}"
    if code not in SPEC_CODES:
        return f"non-spec code {code}"
    if code not in case.codes:
        return f"code {code}, expected one of {sorted(case.codes)}"
    return None


async def test_hostile_input_gets_spec_errors_and_changes_nothing(client: Client, registry: Registry) -> None:
    world = await build_world(client)
    cases = (
        name_cases(world)
        + tag_cases(world)
        + digest_cases(world)
        + upload_cases(world)
        + content_cases(world)
    )
    before = await snapshot(registry)
    failures: list[str] = []
    for case in cases:
        r = await raw_request(client, case.method, case.target.encode(), headers=case.headers, body=case.body)
        if (why := check(case, r)) is not None:
            failures.append(f"{case.label()}: {why}")
    after = await snapshot(registry)
    assert not failures, f"{len(failures)} of {len(cases)} requests answered wrongly:\n" + "\n".join(
        failures[:60]
    )
    assert after.files == before.files
    changed = {k for k in before.keys.keys() | after.keys.keys() if before.keys.get(k) != after.keys.get(k)}
    assert not changed, sorted(changed)[:20]
    # The registry still serves what it held.
    pulled = await client.get("/v2/repo/manifests/v1")
    assert pulled.status == 200 and await pulled.read() == world.manifest
    upload = await client.get(world.upload)
    assert upload.status == 204 and upload.headers["Range"] == "0-9"


async def test_raw_bytes_the_http_parser_refuses(client: Client, registry: Registry) -> None:
    """A literal NUL or non-ASCII byte in the request line is not HTTP: aiohttp's
    parser answers 400 before any handler (or the JSON error middleware) runs.
    Percent-encoded, the same names reach the registry and get JSON errors above."""
    await build_world(client)
    before = await snapshot(registry)
    for method, target in (
        ("GET", b"/v2/re\x00po/tags/list"),
        ("GET", b"/v2/r\xc3\xa9po/tags/list"),
        ("GET", b"/v2/repo/manifests/t\xffg"),
        ("FOO", b"/v2/repo/tags/list"),  # not a method llhttp knows
    ):
        r = await raw_request(client, method, target)
        assert r.status == 400, target
    assert await snapshot(registry) == before


async def test_descriptor_with_surrogates_in_an_index_child(client: Client, registry: Registry) -> None:
    image = await push_image(client, "repo", "v1")
    doc = json.loads(index_manifest([(OCI_MANIFEST, image.body)]))
    doc["manifests"][0]["annotations"] = {"\ud801": "x"}
    doc["manifests"].append(descriptor("application/\ud800", b"y"))
    before = await snapshot(registry)
    r = await put_manifest(client, "repo", "multi", json.dumps(doc).encode(), OCI_INDEX)
    assert 400 <= r.status < 500, await r.text()
    assert await snapshot(registry) == before
