"""Who is asking: Basic and Bearer (OIDC) credentials turned into a Principal (docs/auth.md).

The API's ASGI front door (app/frontdoor.py) calls :meth:`Authenticator.cached` for every
request, which answers from memory, and falls back to :meth:`Authenticator.authenticate` in a
worker thread (bcrypt, signatures, perhaps a key fetch) only when a credential is new. The
principal then travels in the ASGI scope, where handlers find it with :func:`current`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable

from connexion import context

from app import htpasswd, oidc
from app.credentials import (
    ANONYMOUS,
    ExpiringCache,
    Principal,
    Unauthorized,
    Unavailable,
)
from app.settings import Settings

__all__ = ["ANONYMOUS", "Authenticator", "Principal", "Unauthorized", "Unavailable", "current"]

log = logging.getLogger(__name__)

#: Where the front door puts the request's Principal in the ASGI scope.
SCOPE_KEY = "kueue_tes.principal"
CACHE_SIZE = 8192
OPEN_WARNING = (
    "Authentication is off (KUEUE_TES_AUTH=none): anyone who can reach this server can create, "
    "read and cancel every task."
)
# What may appear in a quoted WWW-Authenticate parameter (RFC 9110 qdtext, less backslash).
_UNQUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def modes(settings: Settings) -> frozenset[str]:
    """Return the enabled schemes of KUEUE_TES_AUTH: empty for none, else basic and/or oidc."""
    return frozenset() if settings.auth == "none" else frozenset(settings.auth.split(","))


class Authenticator:
    """Turns an Authorization header into a Principal under the settings' auth modes."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        fetch: oidc.Fetch = oidc.fetch_json,
    ) -> None:
        """Check the settings and read the users file; ValueError says what to fix."""
        self.modes, self.clock = modes(settings), clock
        self.realm = _quotable(settings.service_name)
        self.cache_seconds = settings.auth_cache_seconds
        self._cache: ExpiringCache[Principal] = ExpiringCache(CACHE_SIZE, clock)
        self._key = secrets.token_bytes(32)
        self.admin_names = {a for a in settings.admins if not a.startswith("group:")}
        self.admin_groups = {a[len("group:") :] for a in settings.admins if a.startswith("group:")}
        self.basic: htpasswd.Users | None = None
        self.oidc: oidc.Verifier | None = None
        if "basic" in self.modes:
            if settings.basic_users_file is None:
                raise ValueError("KUEUE_TES_AUTH=basic needs KUEUE_TES_BASIC_USERS_FILE")
            self.basic = htpasswd.Users(settings.basic_users_file, clock, self._cache.clear)
        if "oidc" in self.modes:
            if not settings.oidc_issuer:
                raise ValueError("KUEUE_TES_AUTH=oidc needs KUEUE_TES_OIDC_ISSUER")
            if not settings.oidc_audience:
                # Without an audience any token the issuer signs, for any client, would do.
                raise ValueError("KUEUE_TES_AUTH=oidc needs KUEUE_TES_OIDC_AUDIENCE")
            where = urllib.parse.urlsplit(settings.oidc_issuer)
            if where.scheme != "https" and where.hostname not in ("127.0.0.1", "::1", "localhost"):
                # Keys fetched over plain HTTP can be swapped by anyone on the path.
                log.warning("KUEUE_TES_OIDC_ISSUER %s is not https", settings.oidc_issuer)
            self.oidc = oidc.Verifier(
                settings.oidc_issuer,
                list(settings.oidc_audience),
                settings.oidc_principal_claim,
                settings.oidc_groups_claim,
                settings.oidc_leeway_seconds,
                settings.oidc_jwks_refresh_seconds,
                settings.oidc_jwks_max_age_seconds,
                clock,
                fetch,
            )
        self._anonymous = Principal(ANONYMOUS, admin=True)
        #: Authentication is off.
        self.is_open = not self.modes

    def warm(self) -> None:
        """Fetch what the first request would otherwise wait for (the issuer's keys)."""
        if self.oidc is not None:
            self.oidc.warm()

    def cached(self, authorization: bytes | None) -> Principal | None:
        """Return the principal without any slow check, or None if a full check is needed."""
        if not self.modes:
            return self._anonymous
        if authorization is None:
            return None
        if self.basic is not None:
            self.basic.maybe_reload()  # a changed users file empties the cache
        return self._cache.get(self._cache_key(authorization))

    def _cache_key(self, authorization: bytes) -> bytes:
        """Return a hash of the header, so that no secret outlives its request in memory."""
        if authorization[:6].lower() == b"basic ":
            # A password may be guessable: only a keyed hash keeps it from being tried offline.
            return hmac.digest(self._key, authorization, "sha256")
        # A token is not guessable, and a plain hash costs a third of a keyed one.
        return hashlib.sha256(authorization).digest()

    def authenticate(self, authorization: bytes | None) -> Principal:
        """Check the credentials fully; Unauthorized or Unavailable say why not."""
        if not self.modes:
            return self._anonymous
        if authorization is None:
            raise Unauthorized("credentials are required: " + self._wanted())
        scheme, _, credentials = authorization.strip().partition(b" ")
        kind = scheme.lower()
        if kind == b"basic" and self.basic is not None:
            principal, until = self._basic(credentials.strip())
        elif kind == b"bearer" and self.oidc is not None:
            principal, until = self._bearer(credentials.strip())
        else:
            shown = scheme.decode("latin-1")[:20]
            raise Unauthorized(f"the scheme '{shown}' is not accepted here: " + self._wanted())
        until = min(until, self.clock() + self.cache_seconds)
        self._cache.put(self._cache_key(authorization), principal, until)
        return principal

    def _wanted(self) -> str:
        wanted = []
        if self.oidc is not None:
            wanted.append("Authorization: Bearer <token from the identity provider>")
        if self.basic is not None:
            wanted.append("Authorization: Basic <user:password in base64>")
        return " or ".join(wanted)

    def _basic(self, credentials: bytes) -> tuple[Principal, float]:
        assert self.basic is not None
        try:
            decoded = base64.b64decode(credentials, validate=True)
            name_bytes, colon, password = decoded.partition(b":")
            name = name_bytes.decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise Unauthorized(
                "Basic credentials must be base64 of user:password", "Basic"
            ) from exc
        if not colon or not name:
            raise Unauthorized("Basic credentials must be base64 of user:password", "Basic")
        user = self.basic.check(name, password)
        if user is None:
            raise Unauthorized("the user name or password is wrong", "Basic")
        principal = self._principal(user.name, user.groups, user.admin)
        return principal, float("inf")

    def _bearer(self, credentials: bytes) -> tuple[Principal, float]:
        assert self.oidc is not None
        try:
            token = credentials.decode("ascii")
        except UnicodeDecodeError as exc:
            raise Unauthorized("the token is not a JWT", "Bearer", "invalid_token") from exc
        if not token:
            raise Unauthorized("the Bearer token is empty", "Bearer", "invalid_request")
        identity = self.oidc.verify(token)
        return self._principal(identity.name, identity.groups), identity.valid_until

    def _principal(self, name: str, groups: frozenset[str], admin: bool = False) -> Principal:
        admin = admin or name in self.admin_names or bool(groups & self.admin_groups)
        return Principal(name, groups, admin)

    def challenges(self, error: Unauthorized | None = None) -> list[str]:
        """Return the WWW-Authenticate values of a 401, one per enabled scheme."""
        out = []
        if self.oidc is not None:
            bearer = f'Bearer realm="{self.realm}"'
            if error is not None and error.scheme == "Bearer" and error.error:
                description = _quotable(str(error))
                bearer += f', error="{error.error}", error_description="{description}"'
            out.append(bearer)
        if self.basic is not None:
            out.append(f'Basic realm="{self.realm}", charset="UTF-8"')
        return out


def _quotable(text: str) -> str:
    # Messages may quote what a client sent; a header must not carry it raw.
    return _UNQUOTABLE.sub("?", text)[:200]


def current() -> Principal:
    """Return the principal of the request being handled (put in its scope by the front door)."""
    found = context.scope.get(SCOPE_KEY)
    if not isinstance(found, Principal):
        # Fail closed: a handler reached without the front door must not act for anyone.
        raise RuntimeError("no principal in the request scope; is the FrontDoor middleware on?")
    return found
