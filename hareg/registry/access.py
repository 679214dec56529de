"""Access control: who the caller is, and whether it may send this request.

The service-layer half of authentication and authorization
(docs/security.md); the HTTP layer (``hareg/http/auth.py``) only hands it the
``Authorization`` header, the client's address, the method, path and query,
and renders what it raises.

* Identities: htpasswd users (``Basic``, checked off the event loop,
  failures rate-limited per name and per address), robot accounts
  (``Basic`` as ``robot+NAME``, kept in etcd: ``robots.py``), hareg's own
  bearer tokens and an external issuer's (``Bearer``, verified by
  ``tokens.py``), and ``anonymous`` for a request without credentials.
* Decisions: ``authz.py``'s rules on the subject's bindings (the
  configuration's, and those granted at runtime, read once per request
  through the read barrier, so a grant or revoke acknowledged anywhere
  applies to the next request on every replica) and, for a bearer token, on
  what the token grants; hareg's own tokens are also re-checked against the
  bindings, so a revoke (or a binding removed on SIGHUP) takes effect before
  the tokens issued under it expire.
* Refusals: no credentials (or ``anonymous`` not allowed) is 401 with the
  token-flow challenge; a token lacking a scope its subject could get is
  401 ``insufficient_scope`` (the client fetches a new token); anything else
  is 403 ``DENIED``.  A refusal never depends on whether the repository
  exists, so a repository the caller may not see cannot be told from one
  that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from hareg.clock import Clock, rfc3339
from hareg.config.model import AuthConfig
from hareg.ids import IdSource
from hareg.metadata.access import AccessMetadata, AccessView
from hareg.registry import authz, forwarded, robots
from hareg.registry.access_admin import AccessAdmin
from hareg.registry.authz import ANONYMOUS, Binding, Need, Role
from hareg.registry.errors import ErrorCode, RegistryError
from hareg.registry.htpasswd import Users
from hareg.registry.login_limits import LoginLimiter
from hareg.registry.names import check_name
from hareg.registry.tokens import (
    CATALOG,
    CLUSTER_SCOPE,
    Grant,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    format_scope,
    parse_scopes,
)

__all__ = ["AccessControl", "Caller", "Identity", "TokenReply", "bindings_of"]

TOKEN_KEY_SETTING: Final = "token-key"
SERVICE: Final = "hareg"
_MAX_HEADER: Final = 8192  # an Authorization header longer than this is malformed
# Bearer tokens already verified, kept until they expire: checking an ES256
# signature costs about 0.1 ms, a good part of a cached manifest GET; a client
# sends the same token with every request of a pull.  Bounded (about 500
# bytes a token: a few MiB), the oldest forgotten first.
VERIFIED_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class Identity:
    subject: str
    # Credentials were presented and accepted (an anonymous token counts: the
    # client followed the token flow).
    logged_in: bool
    # What a bearer token grants; None for Basic and no credentials (the bindings decide).
    grants: tuple[Grant, ...] | None = None
    own_token: bool = False  # issued by hareg (re-checked against the bindings)

    @property
    def anonymous(self) -> bool:
        return self.subject == ANONYMOUS


NOBODY: Final = Identity(ANONYMOUS, logged_in=False)
NO_GRANTS: Final = AccessView((), 0)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, and the bindings in force when it was admitted."""

    identity: Identity
    bindings: tuple[Binding, ...]  # the subject's (the configuration's and the runtime ones)
    # The runtime grants were read while etcd was current (False: as the
    # replica last heard of them, etcd being unreachable).
    current: bool = True

    @property
    def subject(self) -> str:
        return self.identity.subject


@dataclass(frozen=True, slots=True)
class TokenReply:
    token: str
    expires_in: int
    issued_at: str

    def to_json(self) -> dict[str, object]:
        return {
            "token": self.token,
            "access_token": self.token,
            "expires_in": self.expires_in,
            "issued_at": self.issued_at,
        }


def bindings_of(config: AuthConfig) -> tuple[Binding, ...]:
    return tuple(Binding(b.subject, Role(b.role), b.repositories) for b in config.bindings)


def _runtime_bindings(view: AccessView) -> tuple[Binding, ...]:
    out = []
    for grant in view.grants:
        with contextlib.suppress(ValueError):  # a role a newer replica knows: grants nothing here
            out.append(Binding(grant.subject, Role(grant.role), (grant.pattern,)))
    return tuple(out)


def _unauthorized(message: str, challenge: str) -> RegistryError:
    return RegistryError(ErrorCode.UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


def _denied() -> RegistryError:
    # The same words whether or not the repository exists.
    return RegistryError(ErrorCode.DENIED, "requested access to the resource is denied")


def _scope_of(need: Need) -> str | None:
    """The challenge's scope; None for a name that is not a repository name
    (it would be refused anyway, and must not reach a header as it is)."""
    if need.repo is None:
        return format_scope(*CLUSTER_SCOPE, ["*"])
    try:
        check_name(need.repo)
    except RegistryError:
        return None
    actions = {authz.PULL: ["pull"], authz.PUSH: ["pull", "push"]}.get(need.action, [need.action])
    return format_scope("repository", need.repo, actions)


def _token_allows(grants: Iterable[Grant], need: Need) -> bool:
    for grant in grants:
        if need.repo is None:
            if (grant.type, grant.name) == CLUSTER_SCOPE and "*" in grant.actions:
                return True
        elif (
            grant.type == "repository"
            and grant.name == need.repo
            and (need.action in grant.actions or authz.ADMIN in grant.actions)
        ):
            return True
    return False


class AccessControl:
    def __init__(
        self,
        config: AuthConfig,
        users: Users,
        limiter: LoginLimiter,
        clock: Clock,
        ids: IdSource,
        *,
        key_source: Callable[[], Awaitable[bytes]],
        store: AccessMetadata | None = None,
        random_bytes: Callable[[int], bytes] | None = None,
        external: TokenVerifier | None = None,
        on_secret: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.proxies = forwarded.networks(config.trusted_proxies)
        self.bindings = bindings_of(config)  # the configuration's
        # The runtime grants in etcd (None: the configuration's bindings only).
        self.store = store
        # Grants and robot accounts are managed where they are kept (the robots'
        # secrets need ``random_bytes``).
        self.admin = AccessAdmin(store, random_bytes) if store is not None and random_bytes else None
        # The configuration's and the runtime bindings by subject, for the grants'
        # version they were made from: a request looks up its subject's only.
        self._by_subject: tuple[int | None, Mapping[str, tuple[Binding, ...]]] = (None, {})
        self.users = users
        self.limiter = limiter
        self.clock = clock
        self.ids = ids
        self.key_source = key_source
        self.external = external
        self.on_secret = on_secret
        self.issuer: TokenIssuer | None = None
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    async def start(self) -> None:
        """Load the shared signing key (from the file, or etcd's, made once)."""
        pem = await self.key_source()
        if self.on_secret is not None:
            self.on_secret(pem)
        self.issuer = TokenIssuer(pem, self.config.token.audience, self.config.token.expiry)

    def reconfigure(self, config: AuthConfig) -> None:
        """SIGHUP: new bindings apply to the next request."""
        self.config = config
        self.proxies = forwarded.networks(config.trusted_proxies)
        self.bindings = bindings_of(config)
        self._by_subject = (None, {})

    def client_address(self, peer: str | None, forwarded_for: Iterable[str]) -> str:
        """The address failed logins are counted by and the audit log names."""
        return forwarded.client_address(peer, forwarded_for, self.proxies)

    # ------------------------------------------------------- runtime grants

    def request_scope(self) -> contextlib.AbstractContextManager[None]:
        """Around one request: the read that admits it also serves its first read."""
        barrier = self.store.barrier if self.store is not None else None
        return barrier.request_scope() if barrier is not None else contextlib.nullcontext()

    def bindings_in(self, view: AccessView, subject: str) -> tuple[Binding, ...]:
        """``subject``'s bindings: the configuration's and the runtime ones of ``view``."""
        version, by_subject = self._by_subject
        if view.version is None or view.version != version:
            grouped: dict[str, list[Binding]] = {}
            for binding in self.bindings + _runtime_bindings(view):
                grouped.setdefault(binding.subject, []).append(binding)
            by_subject = {name: tuple(found) for name, found in grouped.items()}
            if view.version is not None:
                self._by_subject = (view.version, by_subject)
        return by_subject.get(subject, ())

    async def identify(self, authorization: str | None, client: str, realm: str) -> Caller:
        """Who sent the request and the bindings in force now (one linearizable read)."""
        robot = robots.robot_in(authorization)
        view = await self.store.access_view(robot) if self.store is not None else NO_GRANTS
        # A bearer token (the common case) or none is decided here, without a
        # coroutine of its own: this runs once per request.
        identity = self._credentials(authorization, realm)
        if identity is None:
            identity = await self.authenticate(authorization, client, realm, view)
        return Caller(identity, self.bindings_in(view, identity.subject), view.current)

    # ---------------------------------------------------------- identities

    def _credentials(self, authorization: str | None, realm: str) -> Identity | None:
        """The identity of no credentials or a bearer token; None for Basic
        ones (checked off the loop: ``authenticate``).  Raises as ``authenticate``."""
        if not authorization:
            return NOBODY
        if len(authorization) > _MAX_HEADER:
            raise _unauthorized("the Authorization header is too long", self.challenge(realm))
        scheme, _, value = authorization.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return None
        if scheme == "bearer":
            return self._bearer(value.strip(), realm)
        raise _unauthorized("expected Basic or Bearer credentials", self.challenge(realm))

    async def authenticate(
        self, authorization: str | None, client: str, realm: str, view: AccessView = NO_GRANTS
    ) -> Identity:
        """Who sent the request; raises 401 for credentials that are not
        acceptable and 429 while the name or address is locked out.  ``view``
        holds the robot account a ``robot+NAME`` login names."""
        identity = self._credentials(authorization, realm)
        if identity is not None:
            return identity
        assert authorization is not None  # Basic credentials
        return await self._basic(authorization.strip().partition(" ")[2].strip(), client, realm, view)

    async def _basic(self, value: str, client: str, realm: str, view: AccessView) -> Identity:
        try:
            name, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, ValueError):
            name, sep, password = "", "", ""
        if not sep or not name:
            raise _unauthorized("malformed Basic credentials", self.challenge(realm))
        user_key, addr_key = f"user:{name}", f"addr:{client}"
        wait = self.limiter.retry_after(user_key, addr_key)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                f"too many failed logins for this user or from this address; retry in {retry}s",
                status=429,
                headers={"Retry-After": str(retry)},
            )
        # "anonymous" is the subject of requests without credentials, never a user.
        if robots.is_robot(name):
            ok = robots.secret_matches(view.robot, password)
        else:
            ok = name != ANONYMOUS and await self.users.check(name, password)
        if not ok:
            self.limiter.failed(user_key, addr_key)
            raise _unauthorized("invalid user name or password", self.challenge(realm))
        self.limiter.succeeded(user_key)
        return Identity(name, logged_in=True)

    def _bearer(self, token: str, realm: str) -> Identity:
        now = self.clock.now()
        cached = self._verified.get(token)
        if cached is not None:
            identity, expires = cached
            if now < expires:
                return identity
            del self._verified[token]
        verifiers = [(v, True) for v in ([self.issuer.verifier] if self.issuer else [])]
        if self.external is not None:
            verifiers.append((self.external, False))
        reason = "the bearer token is not acceptable"
        for verifier, own in verifiers:
            try:
                verified = verifier.verify(token, now)
            except TokenError as exc:
                reason = str(exc)
                continue
            identity = Identity(verified.subject, logged_in=True, grants=verified.access, own_token=own)
            self._verified[token] = (identity, verified.expires)
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
            return identity
        raise _unauthorized(reason, self.challenge(realm, error="invalid_token"))

    # ------------------------------------------------------------ decisions

    def challenge(self, realm: str, scope: str | None = None, error: str | None = None) -> str:
        parts = [f'realm="{realm}"', f'service="{self.config.token.audience}"']
        if scope:
            parts.append(f'scope="{scope}"')
        if error:
            parts.append(f'error="{error}"')
        return "Bearer " + ",".join(parts)

    def permits(self, caller: Caller, need: Need) -> bool:
        identity = caller.identity
        by_roles = authz.allowed(caller.bindings, identity.subject, need.action, need.repo)
        if identity.grants is None:
            return by_roles
        by_token = _token_allows(identity.grants, need)
        return by_token and (by_roles or not identity.own_token)

    def authorize(self, caller: Caller, needs: Iterable[Need], realm: str, *, write: bool = False) -> None:
        """Raise the refusal of a request ``caller`` may not send.  A ``write``
        is refused (503) when the grants could not be read current: a revoke
        acknowledged elsewhere meanwhile must not let it commit.  Reads are
        decided on the grants last seen, as stale tag reads are served."""
        identity = caller.identity
        if write and not caller.current:
            raise RegistryError(
                ErrorCode.UNAVAILABLE,
                "the registry cannot confirm current access rights (etcd is unreachable); "
                "writes are refused until it can",
                headers={"Retry-After": "5"},
            )
        for need in needs:
            if need.open:
                continue
            if need.login or need.browse:
                if not identity.logged_in and not (need.browse and _anonymous_may_browse(caller.bindings)):
                    raise _unauthorized("authentication required", self.challenge(realm))
                continue
            if self.permits(caller, need):
                continue
            # Every scope the request needs (a mount: push here and pull on the
            # source), as distribution does: a client that asks for exactly the
            # challenge's scopes gets a token that serves the retry.
            scope = " ".join(
                s for s in (_scope_of(n) for n in needs if not (n.open or n.login or n.browse)) if s
            )
            if identity.anonymous:
                raise _unauthorized("authentication required", self.challenge(realm, scope))
            if (
                identity.grants is not None
                and identity.own_token
                and authz.allowed(caller.bindings, identity.subject, need.action, need.repo)
            ):
                raise _unauthorized(
                    "the token does not grant this scope",
                    self.challenge(realm, scope, error="insufficient_scope"),
                )
            raise _denied()

    def can_pull(self, caller: Caller, repo: str) -> bool:
        """For the catalog: repositories the caller's roles let it pull (a
        token's scopes do not list repositories, so its subject's bindings
        decide; an external token's subject needs bindings here)."""
        return authz.allowed(caller.bindings, caller.subject, authz.PULL, repo)

    # ---------------------------------------------------- the token endpoint

    async def token(
        self, authorization: str | None, client: str, realm: str, query: Mapping[str, list[str]]
    ) -> TokenReply:
        """``GET /auth/token``: a token granting what was asked for and the
        caller's roles allow (the intersection; nothing asked: no access)."""
        services = query.get("service", [])
        if services and services[0] != self.config.token.audience:
            raise RegistryError(
                ErrorCode.DENIED,
                f"this registry issues tokens for service {self.config.token.audience!r}",
                status=400,
            )
        caller = await self.identify(authorization, client, realm)
        identity = caller.identity
        if identity.grants is not None:
            raise _unauthorized("log in with a user name and password to get a token", self.challenge(realm))
        try:
            asked = parse_scopes(query.get("scope", []))
        except ValueError as exc:
            raise RegistryError(ErrorCode.UNSUPPORTED, str(exc), status=400) from None
        grants = [g for g in (self._grant(caller, a) for a in asked) if g is not None]
        assert self.issuer is not None, "AccessControl.start() loads the signing key"
        now = self.clock.now()
        token = self.issuer.issue(identity.subject, grants, now, self.ids.new_id())
        return TokenReply(token, int(self.issuer.expiry), rfc3339(now))

    def _grant(self, caller: Caller, asked: Grant) -> Grant | None:
        subject = caller.subject
        if (asked.type, asked.name) == CATALOG:
            granted: tuple[str, ...] = ("*",)  # the catalog is filtered by the roles
        elif (asked.type, asked.name) == CLUSTER_SCOPE:
            granted = ("*",) if authz.can_see_cluster(caller.bindings, subject) else ()
        elif asked.type == "repository":
            may = authz.allowed_actions(caller.bindings, subject, asked.name)
            wanted = set(asked.actions)
            if authz.ADMIN in wanted:
                wanted = set(authz.REPOSITORY_ACTIONS) if authz.ADMIN in may else wanted - {authz.ADMIN}
            granted = tuple(a for a in authz.REPOSITORY_ACTIONS if a in wanted and a in may)
        else:
            granted = ()
        return Grant(asked.type, asked.name, granted) if granted else None


def _anonymous_may_browse(bindings: Iterable[Binding]) -> bool:
    # The catalog answers anonymous callers only when anonymous has some
    # binding; otherwise the 401 tells clients to log in.
    return any(b.subject == ANONYMOUS for b in bindings)
