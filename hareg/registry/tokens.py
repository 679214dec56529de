"""Bearer tokens: the Docker token spec's JWTs, issued by hareg or an external issuer.

A token says who (``sub``) may do what (``access``: ``[{"type":
"repository", "name": ..., "actions": ["pull", "push"]}]``) until when
(``exp``), for whom (``aud``, the ``service``) and from whom (``iss``); all
three are checked on every request, with no leeway beyond
``CLOCK_SKEW`` seconds.

hareg's own tokens are ES256 signatures with one key every replica shares:
the PEM of ``auth.token.signingKeyFile`` when configured, else a P-256 key
the first replica generates and stores in etcd (``<p>/c/token-key``, as the
httpSecret is).  An external issuer's tokens (``auth.token.jwks``, a JWKS
file of its public keys) are verified against those keys, with
``auth.token.issuer`` and ``auth.token.audience``.

The scope grammar (``repository:<name>:pull,push``, ``registry:catalog:*``)
is parsed here too, so the token endpoint and the challenge agree on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet

__all__ = [
    "CATALOG",
    "CLUSTER_SCOPE",
    "Grant",
    "TokenError",
    "TokenIssuer",
    "TokenVerifier",
    "format_scope",
    "generate_key_pem",
    "parse_scopes",
]

ALGORITHM: Final = "ES256"
CLOCK_SKEW: Final = 5  # seconds of disagreement between replicas' clocks tolerated on iat/nbf
HAREG_ISSUER: Final = "hareg"
# What an external issuer may sign with: asymmetric algorithms only.
EXTERNAL_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
CATALOG: Final = ("registry", "catalog")  # registry:catalog:* lists the catalog
CLUSTER_SCOPE: Final = ("registry", "cluster")  # registry:cluster:* for the /hareg/v1 cluster endpoints
MAX_SCOPES: Final = 32  # scopes in one token request; more is a malformed request


class TokenError(Exception):
    """A token that is not acceptable; the message says why, never the token."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One entry of a token's ``access`` claim."""

    type: str
    name: str
    actions: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "actions": list(self.actions)}


def parse_scopes(raw: Iterable[str]) -> list[Grant]:
    """``repository:<name>:pull,push`` (a name may hold ':' only as a port, so
    the type is the first field and the actions the last); malformed scopes
    raise ValueError saying which."""
    out: list[Grant] = []
    for scope in raw:
        for one in scope.split(" "):  # the spec allows several scopes in one parameter
            if not one:
                continue
            kind, sep1, rest = one.partition(":")
            name, sep2, actions = rest.rpartition(":")
            kind = kind.split("(", 1)[0]  # "repository(plugin)": the class does not matter here
            if not (sep1 and sep2 and kind and name):
                raise ValueError(f"scope {one[:200]!r} is not type:name:actions")
            out.append(Grant(kind, name, tuple(a for a in actions.split(",") if a)))
            if len(out) > MAX_SCOPES:
                raise ValueError(f"more than {MAX_SCOPES} scopes in one request")
    return out


def format_scope(kind: str, name: str, actions: Iterable[str]) -> str:
    return f"{kind}:{name}:{','.join(actions)}"


def generate_key_pem() -> bytes:
    """A new P-256 private key as PEM (the shared signing key's first value)."""
    return ECKey.generate_key("P-256").as_pem(private=True)


def _claims_registry(now: int, issuer: str, audience: str) -> jwt.JWTClaimsRegistry:
    return jwt.JWTClaimsRegistry(
        now=now,
        leeway=CLOCK_SKEW,
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    )


@dataclass(frozen=True, slots=True)
class Verified:
    subject: str
    access: tuple[Grant, ...]
    issuer: str
    expires: float  # the token's exp


def _access(claims: Mapping[str, Any]) -> tuple[Grant, ...]:
    raw = claims.get("access", [])
    if not isinstance(raw, list):
        raise TokenError("the token's access claim is not a list")
    out: list[Grant] = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise TokenError("an entry of the token's access claim is not an object")
        kind, name, actions = entry.get("type"), entry.get("name"), entry.get("actions", [])
        if not (isinstance(kind, str) and isinstance(name, str) and isinstance(actions, list)):
            raise TokenError("an entry of the token's access claim lacks type, name or actions")
        out.append(Grant(kind, name, tuple(a for a in actions if isinstance(a, str))))
    return tuple(out)


class TokenVerifier:
    """Checks one issuer's tokens: signature, iss, aud, exp (and nbf, iat)."""

    def __init__(
        self, keys: ECKey | KeySet, issuer: str, audience: str, algorithms: tuple[str, ...] = (ALGORITHM,)
    ) -> None:
        self.keys = keys
        self.algorithms = algorithms  # never "none", never HMAC with a public key
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_jwks(cls, text: str, issuer: str, audience: str) -> TokenVerifier:
        try:
            keys = KeySet.import_key_set(json.loads(text))
        except (ValueError, TypeError, KeyError, JoseError) as exc:
            raise ValueError(f"not a JWKS document of public keys ({type(exc).__name__})") from None
        return cls(keys, issuer, audience, EXTERNAL_ALGORITHMS)

    def verify(self, token: str, now: float) -> Verified:
        try:
            decoded = jwt.decode(token, self.keys, algorithms=self.algorithms)
            claims = decoded.claims
            _claims_registry(int(now), self.issuer, self.audience).validate(claims)
        except JoseError as exc:
            raise TokenError(f"token refused: {exc.error}") from None
        except (ValueError, TypeError):
            raise TokenError("token refused: malformed") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise TokenError("token refused: no subject")
        return Verified(subject, _access(claims), self.issuer, float(claims["exp"]))


class TokenIssuer:
    """Issues hareg's own tokens and verifies them."""

    def __init__(self, private_pem: bytes, audience: str, expiry: float) -> None:
        expected = "the token signing key must be a P-256 (prime256v1) EC private key in PEM"
        try:
            self.key = ECKey.import_key(private_pem)
        except (JoseError, ValueError, TypeError):  # another key type, or not a key at all
            raise ValueError(f"{expected} (`openssl ecparam -name prime256v1 -genkey -noout`)") from None
        if self.key.curve_name != "P-256" or not self.key.is_private:
            raise ValueError(expected)
        self.audience = audience
        self.expiry = expiry
        self.verifier = TokenVerifier(self.key, HAREG_ISSUER, audience)
        self.kid = self.key.thumbprint()

    def issue(self, subject: str, grants: Iterable[Grant], now: float, token_id: str) -> str:
        issued = int(now)
        claims = {
            "iss": HAREG_ISSUER,
            "sub": subject,
            "aud": self.audience,
            "exp": issued + int(self.expiry),
            "nbf": issued - CLOCK_SKEW,
            "iat": issued,
            "jti": token_id,
            "access": [g.to_json() for g in grants],
        }
        return jwt.encode({"alg": ALGORITHM, "typ": "JWT", "kid": self.kid}, claims, self.key)
