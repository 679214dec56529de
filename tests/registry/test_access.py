"""hareg.registry.access, htpasswd, tokens and login_limits: identities and decisions, without HTTP."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from hareg.config.model import AuthConfig, BindingConfig
from hareg.ids import RandomIds
from hareg.metadata.access import AccessView
from hareg.metadata.records import GrantRecord
from hareg.registry.access import AccessControl, Caller, Identity
from hareg.registry.authz import PULL, PUSH, Need
from hareg.registry.errors import RegistryError
from hareg.registry.htpasswd import HtpasswdError, Users, parse_htpasswd
from hareg.registry.login_limits import LoginLimiter
from hareg.registry.tokens import Grant, TokenError, TokenIssuer, generate_key_pem, parse_scopes

REALM = "http://registry.test/auth/token"


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def htpasswd_line(name: str, password: str) -> str:
    # As `htpasswd -B` writes it: $2y$, cost 5 keeps the tests fast.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(5)).decode()
    return f"{name}:$2y${hashed[4:]}"


def basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


def test_htpasswd_accepts_bcrypt_only_and_never_echoes_a_hash() -> None:
    users = parse_htpasswd("# users\n\n" + htpasswd_line("alice", "pw") + "\n", "f")
    assert set(users) == {"alice"}
    with pytest.raises(HtpasswdError, match="line 1: the entry of 'bob' is not a bcrypt hash") as info:
        parse_htpasswd("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n", "f")
    assert "W6ph5" not in str(info.value)
    with pytest.raises(HtpasswdError, match="line 2: expected name:bcrypt-hash"):
        parse_htpasswd(htpasswd_line("a", "b") + "\nnocolon\n", "f")


async def test_password_checks_run_in_the_executor(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(htpasswd_line("alice", "s3cret") + "\n")
    with ThreadPoolExecutor(1) as pool:
        users = Users(path, pool)
        assert users.load() == 1
        assert await users.check("alice", "s3cret")
        assert not await users.check("alice", "wrong")
        assert not await users.check("nobody", "s3cret")


def test_login_limiter_locks_out_then_forgets_and_stays_bounded() -> None:
    clock = FakeClock()
    limits = LoginLimiter(clock, max_failures=3, window=60, max_tracked=100)
    for _ in range(3):
        assert limits.retry_after("user:a", "addr:1") == 0
        limits.failed("user:a", "addr:1")
    assert limits.retry_after("user:a") == 60
    assert limits.retry_after("user:b", "addr:1") == 60  # the address is locked out too
    clock.t += 61
    assert limits.retry_after("user:a", "addr:1") == 0
    for n in range(1000):
        limits.failed(f"addr:{n}")
    assert len(limits) <= 100


def test_scopes_parse_and_malformed_ones_are_refused() -> None:
    assert parse_scopes(["repository:a/b:pull,push", "registry:catalog:*"]) == [
        Grant("repository", "a/b", ("pull", "push")),
        Grant("registry", "catalog", ("*",)),
    ]
    assert parse_scopes(["repository:localhost:5000/a:pull"]) == [
        Grant("repository", "localhost:5000/a", ("pull",))
    ]
    with pytest.raises(ValueError, match="not type:name:actions"):
        parse_scopes(["pull"])


@pytest.mark.parametrize("problem", ["expired", "wrong key", "wrong audience"])
def test_unacceptable_tokens_are_refused(problem: str) -> None:
    clock = FakeClock()
    issuer = TokenIssuer(generate_key_pem(), "hareg", 300)
    token = issuer.issue("alice", [Grant("repository", "a", ("pull",))], clock.now(), "id")
    assert issuer.verifier.verify(token, clock.now()).subject == "alice"
    verifier = issuer.verifier
    if problem == "expired":
        clock.t += 301 + 5
    elif problem == "wrong key":
        verifier = TokenIssuer(generate_key_pem(), "hareg", 300).verifier
    else:
        verifier = TokenIssuer(generate_key_pem(), "other", 300).verifier
        verifier.keys = issuer.key
    with pytest.raises(TokenError):
        verifier.verify(token, clock.now())


async def make_access(tmp_path: Path, bindings: list[BindingConfig]) -> AccessControl:
    path = tmp_path / "htpasswd"
    path.write_text("\n".join(htpasswd_line(n, f"{n}-pw") for n in ("alice", "root")) + "\n")
    users = Users(path, None)
    users.load()
    pem = generate_key_pem()

    async def key() -> bytes:
        return pem

    clock = FakeClock()
    access = AccessControl(
        AuthConfig(bindings=tuple(bindings)), users, LoginLimiter(clock), clock, RandomIds(), key_source=key
    )
    await access.start()
    return access


async def test_a_token_grants_the_intersection_of_asked_and_allowed(tmp_path: Path) -> None:
    access = await make_access(
        tmp_path,
        [BindingConfig("alice", "viewer", ("a/*",)), BindingConfig("alice", "editor", ("a/mine",))],
    )
    reply = await access.token(
        basic("alice", "alice-pw"),
        "127.0.0.1",
        REALM,
        {
            "service": ["hareg"],
            "scope": ["repository:a/x:pull,push", "repository:a/mine:pull,push,*", "repository:b:pull"],
        },
    )
    assert access.issuer is not None
    claims = access.issuer.verifier.verify(reply.token, access.clock.now())
    assert claims.access == (
        Grant("repository", "a/x", ("pull",)),
        Grant("repository", "a/mine", ("pull", "push")),  # "*" is admin's only
    )


async def test_wrong_passwords_are_answered_401_then_429(tmp_path: Path) -> None:
    access = await make_access(tmp_path, [])
    for _ in range(access.limiter.max_failures):
        with pytest.raises(RegistryError) as info:
            await access.authenticate(basic("alice", "guess"), "10.0.0.9", REALM)
        assert info.value.status == 401
    with pytest.raises(RegistryError) as info:
        await access.authenticate(basic("alice", "alice-pw"), "10.0.0.9", REALM)
    assert info.value.status == 429 and int(info.value.headers["Retry-After"]) > 0


async def test_a_cached_token_still_expires(tmp_path: Path) -> None:
    access = await make_access(tmp_path, [BindingConfig("alice", "viewer", ("a/*",))])
    assert access.issuer is not None and isinstance(access.clock, FakeClock)
    token = access.issuer.issue("alice", [Grant("repository", "a/x", ("pull",))], access.clock.now(), "t")
    first = await access.authenticate(f"Bearer {token}", "127.0.0.1", REALM)
    assert await access.authenticate(f"Bearer {token}", "127.0.0.1", REALM) is first  # from the cache
    access.clock.t += 300 + 6  # past exp and the clock-skew leeway
    with pytest.raises(RegistryError) as info:
        await access.authenticate(f"Bearer {token}", "127.0.0.1", REALM)
    assert info.value.status == 401


def _pem_of(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize("kind", ["ed25519", "p384", "garbage", "public only"])
def test_a_signing_key_of_another_kind_is_refused_saying_what_is_expected(kind: str) -> None:
    if kind == "ed25519":
        pem = _pem_of(ed25519.Ed25519PrivateKey.generate())
    elif kind == "p384":
        pem = _pem_of(ec.generate_private_key(ec.SECP384R1()))
    elif kind == "garbage":
        pem = b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
    else:
        pem = (
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    with pytest.raises(ValueError, match="must be a P-256"):
        TokenIssuer(pem, "hareg", 300)


async def test_a_write_is_refused_while_the_grants_cannot_be_read_current(tmp_path: Path) -> None:
    access = await make_access(tmp_path, [BindingConfig("alice", "editor", ("a/*",))])
    stale = Caller(Identity("alice", logged_in=True), access.bindings, current=False)
    access.authorize(stale, [Need(PULL, "a/x")], REALM)  # a read: on the grants last seen
    with pytest.raises(RegistryError) as info:
        access.authorize(stale, [Need(PUSH, "a/x")], REALM, write=True)
    assert info.value.status == 503 and info.value.headers["Retry-After"]
    access.authorize(replace(stale, current=True), [Need(PUSH, "a/x")], REALM, write=True)


async def test_a_request_looks_up_only_its_subjects_bindings_made_once_per_grants_version(
    tmp_path: Path,
) -> None:
    access = await make_access(tmp_path, [BindingConfig("alice", "viewer", ("a/*",))])
    grants = tuple(GrantRecord(f"user{i}", "editor", f"p{i}/*", 0.0) for i in range(1000))
    view = AccessView((*grants, GrantRecord("alice", "editor", "b/*", 0.0)), version=7)
    alice = access.bindings_in(view, "alice")
    assert [(b.role.value, b.repositories) for b in alice] == [("viewer", ("a/*",)), ("editor", ("b/*",))]
    assert access.bindings_in(view, "alice") is alice  # the same version: not made again
    assert access.bindings_in(view, "nobody") == ()
    changed = AccessView(grants, version=8)
    assert [b.repositories for b in access.bindings_in(changed, "alice")] == [("a/*",)]
