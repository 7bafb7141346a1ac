"""Bearer JWTs checked locally against the issuer's keys, found by OpenID Connect discovery.

Keys are fetched once (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``) and kept;
they are fetched again when a token names a key id we do not know (rotation), at most once per
``refresh_seconds``, and when they are older than ``max_age_seconds`` (so withdrawn keys stop
working). Only asymmetric signatures are accepted, and each key verifies only the algorithms
its own type allows, so neither ``alg: none`` nor an HMAC keyed with a public key gets through.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from app.credentials import Unauthorized, Unavailable

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
FETCH_TIMEOUT_SECONDS = 5.0
MAX_DOCUMENT_BYTES = 1 << 20
_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_OKP = ("Ed25519", "Ed448")
_SPLIT = re.compile(r"[\s,]+")

Fetch = Callable[[str], Mapping[str, Any]]


class FetchError(Exception):
    """A discovery document or key set could not be fetched or read."""


def fetch_json(url: str) -> Mapping[str, Any]:
    """GET a JSON object over http(s)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError(f"{url} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            raw = response.read(MAX_DOCUMENT_BYTES + 1)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        raise FetchError(f"GET {url}: {exc}") from exc
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise FetchError(f"GET {url}: over {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FetchError(f"GET {url}: not JSON ({exc})") from exc
    if not isinstance(document, dict):
        raise FetchError(f"GET {url}: not a JSON object")
    return document


def key_algorithms(jwk: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the algorithms a JWK may verify, pinned by its type; () for keys never used."""
    if jwk.get("use") not in (None, "sig"):
        return ()
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        allowed: tuple[str, ...] = _RSA
    elif kty == "EC" and crv in _EC:
        allowed = (_EC[crv],)
    elif kty == "OKP" and crv in _OKP:
        allowed = ("EdDSA",)
    else:  # shared secrets ("oct") and unknown types are never used
        return ()
    named = jwk.get("alg")
    if named is None:
        return allowed
    return (named,) if named in allowed else ()


@dataclass(frozen=True)
class Key:
    """One usable public key and the algorithms it verifies."""

    kid: str | None
    key: Any
    algorithms: tuple[str, ...]


def parse_jwks(document: Mapping[str, Any]) -> list[Key]:
    """Return the usable signing keys of a JWKS document."""
    keys = []
    for jwk in document.get("keys") or ():
        if not isinstance(jwk, dict):
            continue
        algorithms = key_algorithms(jwk)
        if not algorithms:
            continue
        try:
            public = jwt.PyJWK(jwk, algorithms[0]).key
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
            log.warning("JWKS key %r skipped: %s", jwk.get("kid"), exc)
            continue
        kid = jwk.get("kid")
        keys.append(Key(kid if isinstance(kid, str) else None, public, algorithms))
    return keys


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """Return a claim by name, or by a dotted path into nested objects (realm_access.roles)."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def groups_of(value: Any) -> frozenset[str]:
    """Return the groups a claim lists: a JSON list, or one comma/space-separated string."""
    if isinstance(value, str):
        return frozenset(part for part in _SPLIT.split(value) if part)
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str) and item)
    return frozenset()


def _invalid(message: str) -> Unauthorized:
    return Unauthorized(message, "Bearer", "invalid_token")


@dataclass(frozen=True)
class Identity:
    """Who a valid token names, and until when (the clock's time) it is valid."""

    name: str
    groups: frozenset[str]
    valid_until: float


class Verifier:
    """Checks Bearer tokens of one issuer for our audiences."""

    def __init__(
        self,
        issuer: str,
        audiences: list[str],
        principal_claim: str,
        groups_claim: str | None,
        leeway_seconds: float,
        refresh_seconds: float,
        max_age_seconds: float,
        clock: Callable[[], float],
        fetch: Fetch = fetch_json,
    ) -> None:
        """Remember the rules; keys are fetched on first use (or by :meth:`warm`)."""
        self.issuer, self.audiences = issuer, audiences
        self.principal_claim, self.groups_claim = principal_claim, groups_claim
        self.leeway, self.refresh_seconds = leeway_seconds, refresh_seconds
        self.max_age_seconds, self.clock, self.fetch = max_age_seconds, clock, fetch
        self._keys: list[Key] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Fetch the keys now, so that the first request does not wait; failures are logged."""
        self._refresh(self.clock())

    def _refresh(self, seen: float) -> None:
        """Fetch the keys, unless another thread did since ``seen``; keep the old on failure."""
        with self._lock:
            if self._attempted_at > seen:
                return
            self._attempted_at = self.clock()
            try:
                discovery = self.fetch(self.issuer.rstrip("/") + DISCOVERY_PATH)
                if discovery.get("issuer") != self.issuer:
                    raise FetchError(
                        f"the discovery document names the issuer {discovery.get('issuer')!r}, "
                        f"not {self.issuer!r} (KUEUE_TES_OIDC_ISSUER must match it exactly)"
                    )
                jwks_uri = discovery.get("jwks_uri")
                if not isinstance(jwks_uri, str):
                    raise FetchError("the discovery document has no jwks_uri")
                keys = parse_jwks(self.fetch(jwks_uri))
                if not keys:
                    raise FetchError(f"{jwks_uri} holds no RSA, EC or EdDSA signing key")
            except FetchError as exc:
                log.warning("OIDC keys of %s not fetched: %s", self.issuer, exc)
                return
            self._keys, self._fetched_at = keys, self._attempted_at
            log.info("OIDC keys of %s fetched: %d keys", self.issuer, len(keys))

    def _may_fetch(self, now: float) -> bool:
        return now - self._attempted_at >= self.refresh_seconds

    def _find(self, kid: str | None) -> Key | None:
        keys = self._keys or []
        if kid is None:
            # A token without a key id is accepted only from an issuer with one key.
            return keys[0] if len(keys) == 1 else None
        return next((key for key in keys if key.kid == kid), None)

    def _key(self, kid: str | None) -> Key:
        now = self.clock()
        stale = now - self._fetched_at >= self.max_age_seconds
        if (self._keys is None or stale) and self._may_fetch(now):
            self._refresh(self._attempted_at)
        found = self._find(kid)
        if found is None and self._keys is not None and self._may_fetch(now):
            self._refresh(self._attempted_at)  # an unknown kid: the keys may have rotated
            found = self._find(kid)
        if found is not None:
            return found
        if self._keys is None:
            raise Unavailable(
                "the identity provider's keys cannot be fetched, so the token cannot be "
                "checked; retry shortly"
            )
        if kid is None:
            raise _invalid("the token names no key (kid) and the issuer has several")
        raise _invalid("the token is signed with a key the issuer does not publish")

    def verify(self, token: str) -> Identity:
        """Return who a valid token names; Unauthorized says why not (may fetch keys)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise _invalid("the token is not a JWS compact JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not (alg in _RSA or alg in _EC.values() or alg == "EdDSA"):
            raise _invalid("only RSA, EC and EdDSA signatures are accepted")
        key = self._key(kid if isinstance(kid, str) else None)
        if alg not in key.algorithms:
            raise _invalid("the token's alg does not match its key")
        # Times are checked below against our own clock, with the leeway.
        options: Any = {
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "require": ["exp", "iss", "aud"],
        }
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audiences,
                issuer=self.issuer,
                options=options,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the token has no '{exc.claim}' claim") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid("the token is not meant for this service (aud)") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("the token is from another issuer (iss)") from exc
        except jwt.InvalidSignatureError as exc:
            raise _invalid("the token's signature does not verify") from exc
        except jwt.InvalidTokenError as exc:
            raise _invalid("the token is not valid") from exc
        return self._identity(claims)

    def _identity(self, claims: Mapping[str, Any]) -> Identity:
        now = self.clock()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _invalid("the token's exp is not a number")
        if now > exp + self.leeway:
            raise _invalid("the token has expired")
        if nbf is not None and (
            isinstance(nbf, bool) or not isinstance(nbf, int | float) or now + self.leeway < nbf
        ):
            raise _invalid("the token is not valid yet (nbf)")
        name = claim(claims, self.principal_claim)
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not name:
            raise _invalid(f"the token has no '{self.principal_claim}' claim to name its principal")
        groups = groups_of(claim(claims, self.groups_claim)) if self.groups_claim else frozenset()
        return Identity(name, groups, float(exp) + self.leeway)
