"""The etcd key layout.

Every key starts with the configured prefix.  Repository names may contain
'/', so a repository's own keys are delimited by '@', which the name grammar
forbids: the range ``m/<repo>@`` holds exactly that repository's manifests
and never those of ``<repo>/sub``.  Digests contain ':', tags never do.

    <p>/r/<repo>                        RepoRecord       catalog
    <p>/b/<digest>                      BlobRecord       bytes exist in the blob store
    <p>/l/<repo>@<digest>               LinkRecord       repo may serve the blob
    <p>/m/<repo>@<digest>               ManifestRecord   with its references (and body if small)
    <p>/t/<repo>@<tag>                  TagRecord        tag -> digest
    <p>/s/<repo>@<tag>                  TagSeqRecord     last history number of the tag
    <p>/h/<repo>@<tag>@<seq:012d>       HistoryEntry     every move of the tag
    <p>/f/<repo>@<subject>@<digest>     ReferrerRecord   referrers index
    <p>/x/<repo>@<target><referrer>     (empty)          reverse-reference index: the manifest
                                                         <referrer> references the blob or child
                                                         manifest <target> (digests in short form)
    <p>/i/<repo>                        ImmutabilityRecord  tag patterns that may not move
    <p>/u/<upload id>                   UploadRecord     upload session (under a lease)
    <p>/d/<repo>@<digest>               write id         marker of a manifest delete (under a lease)
    <p>/c/<name>                        raw bytes        cluster-wide settings (the generated httpSecret,
                                                         the read-only switch: registry/settings.py)
    <p>/n/<replica>                     MemberRecord     replica membership (under the replica's lease)
    <p>/g/<subject>@<role>@<pattern>    GrantRecord      a role bound at runtime (subject and pattern
                                                         percent-encoded: they may hold '@' and '/')
    <p>/a/<robot name>                  RobotRecord      a robot account (its secret's hash)
    <p>/p/<repo>@<tag>                  MirrorCheckRecord  when the pull-through cache last asked the
                                                         upstream about a mirrored tag (docs/pull-through.md)
    <p>/q/<repo>@<digest or tag>        replica name     a mirrored blob or manifest being fetched upstream
                                                         (under the fetching replica's lease: single-flight)
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from hareg.kv.base import prefix_end

# Digests in reverse-index keys: a letter for the algorithm, then the raw
# digest in unpadded base64url (44 characters for sha256 rather than 71), so
# each form has one length and no form is a prefix of another.  Anything
# else (no such digest is ever stored) is kept as text between '~' and '@'.
_SHORT = {"sha256": ("s", 64), "sha512": ("t", 128)}
_LONG = {letter: (algorithm, (hexlen // 2 * 4 + 2) // 3) for algorithm, (letter, hexlen) in _SHORT.items()}


def short_digest(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    form = _SHORT.get(algorithm)
    if form is not None and len(hexpart) == form[1]:
        try:
            raw = bytes.fromhex(hexpart)
        except ValueError:
            raw = b""
        if raw.hex() == hexpart:  # lowercase hex only: it must come back the same
            return form[0] + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return "~" + digest + "@"


def split_short_digest(text: str) -> tuple[str, str]:
    """The first digest of ``text`` (in short form) and what follows it."""
    if text[:1] == "~":
        digest, _, rest = text[1:].partition("@")
        return digest, rest
    algorithm, length = _LONG[text[:1]]
    encoded = text[1 : 1 + length]
    raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    return f"{algorithm}:{raw.hex()}", text[1 + length :]


class Keys:
    def __init__(self, prefix: str = "/hareg") -> None:
        self.root = prefix.rstrip("/").encode()

    def _k(self, kind: str, *parts: str) -> bytes:
        return self.root + b"/" + kind.encode() + b"/" + "@".join(parts).encode()

    def _range(self, kind: str, *parts: str) -> tuple[bytes, bytes]:
        start = self._k(kind, *parts) + (b"@" if parts else b"")
        return start, prefix_end(start)

    def kind_prefix(self, kind: str) -> bytes:
        return self.root + b"/" + kind.encode() + b"/"

    def strip(self, kind: str, key: bytes) -> str:
        return key[len(self.kind_prefix(kind)) :].decode()

    def repo(self, repo: str) -> bytes:
        return self._k("r", repo)

    def repos(self) -> tuple[bytes, bytes]:
        p = self.kind_prefix("r")
        return p, prefix_end(p)

    def blob(self, digest: str) -> bytes:
        return self._k("b", digest)

    def link(self, repo: str, digest: str) -> bytes:
        return self._k("l", repo, digest)

    def links(self, repo: str) -> tuple[bytes, bytes]:
        return self._range("l", repo)

    def manifest(self, repo: str, digest: str) -> bytes:
        return self._k("m", repo, digest)

    def manifests(self, repo: str) -> tuple[bytes, bytes]:
        return self._range("m", repo)

    def tag(self, repo: str, tag: str) -> bytes:
        return self._k("t", repo, tag)

    def tags(self, repo: str) -> tuple[bytes, bytes]:
        return self._range("t", repo)

    def tag_seq(self, repo: str, tag: str) -> bytes:
        return self._k("s", repo, tag)

    def never_deleted(self, key: bytes) -> bool:
        """Whether ``key`` is one that nothing deletes once written: a tag's
        sequence survives the tag (invariant 5), garbage collection and
        pruning.  A compare that it is missing can then never hold again once
        it was written (metadata/writes.py relies on that to fence a re-send)."""
        return key.startswith(self.root + b"/s/")

    def history(self, repo: str, tag: str, seq: int) -> bytes:
        return self._k("h", repo, tag, f"{seq:012d}")

    def histories(self, repo: str, tag: str) -> tuple[bytes, bytes]:
        return self._range("h", repo, tag)

    def referrer(self, repo: str, subject: str, digest: str) -> bytes:
        return self._k("f", repo, subject, digest)

    def referrers(self, repo: str, subject: str) -> tuple[bytes, bytes]:
        return self._range("f", repo, subject)

    def reference(self, repo: str, target: str, referrer: str) -> bytes:
        """The reverse-index entry: manifest ``referrer`` of ``repo`` references
        ``target`` (a blob or a child manifest).  Written and deleted in the
        same transaction as the manifest (metadata/manifests.py)."""
        return self._k("x", repo, short_digest(target) + short_digest(referrer))

    def references_to(self, repo: str, target: str) -> tuple[bytes, bytes]:
        """The range of ``repo``'s reverse-index entries whose target is ``target``."""
        start = self._k("x", repo, short_digest(target))
        return start, prefix_end(start)

    def reference_parts(self, key: bytes) -> tuple[str, str, str]:
        """(repo, target, referrer) of a reverse-index entry's key."""
        repo, _, rest = self.strip("x", key).partition("@")  # names never contain '@'
        target, rest = split_short_digest(rest)
        referrer, _ = split_short_digest(rest)
        return repo, target, referrer

    def reference_index_built(self) -> bytes:
        """Written once every manifest's reverse-index entries exist
        (metadata/manifests.py ``build_reference_index``); until then deletes
        look for references the old way, over the whole repository."""
        return self.setting("reference-index")

    def immutability(self, repo: str) -> bytes:
        return self._k("i", repo)

    def upload(self, upload_id: str) -> bytes:
        return self._k("u", upload_id)

    def uploads(self) -> tuple[bytes, bytes]:
        p = self.kind_prefix("u")
        return p, prefix_end(p)

    def deletion(self, repo: str, digest: str) -> bytes:
        """A marker a manifest delete writes (its write id, under an expiring
        lease) so that a lost reply can be verified as *this* delete."""
        return self._k("d", repo, digest)

    def mirror_check(self, repo: str, tag: str) -> bytes:
        return self._k("p", repo, tag)

    def mirror_fetch(self, repo: str, name: str) -> bytes:
        return self._k("q", repo, name)

    def setting(self, name: str) -> bytes:
        return self._k("c", name)

    def member(self, replica: str) -> bytes:
        return self._k("n", replica)

    def members(self) -> tuple[bytes, bytes]:
        p = self.kind_prefix("n")
        return p, prefix_end(p)

    def grant(self, subject: str, role: str, pattern: str) -> bytes:
        return self._k("g", quote(subject, safe=""), role, quote(pattern, safe=""))

    def grants(self) -> tuple[bytes, bytes]:
        p = self.kind_prefix("g")
        return p, prefix_end(p)

    def grants_of(self, subject: str) -> tuple[bytes, bytes]:
        return self._range("g", quote(subject, safe=""))

    def robot(self, name: str) -> bytes:
        return self._k("a", name)

    def robots(self) -> tuple[bytes, bytes]:
        p = self.kind_prefix("a")
        return p, prefix_end(p)

    @staticmethod
    def last_part(key: bytes) -> str:
        """The part after the last '@' (a tag, digest or history number)."""
        return key.rsplit(b"@", 1)[1].decode()
