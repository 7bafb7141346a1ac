"""A small real OIDC identity provider for tests and benchmarks: discovery and JWKS over HTTP
on 127.0.0.1 (a ThreadingHTTPServer), keys made by ``cryptography``, tokens signed by PyJWT."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

AUDIENCE = "kueue-tes"
JWKS_PATH = "/protocol/openid-connect/certs"
REALM = "/realms/tes"


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS uses."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class IdentityProvider:
    """Serves ``/.well-known/openid-configuration`` and the JWKS of the published keys."""

    def __init__(self) -> None:
        """Start serving on a free loopback port."""
        self.private: dict[str, Any] = {}
        self.published: list[str] = []
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                # Keycloak-style issuer with a path: discovery is <issuer>/.well-known/...
                path = self.path.removeprefix(REALM) if self.path.startswith(REALM + "/") else ""
                with provider.lock:
                    provider.hits[path] += 1
                if path == "/.well-known/openid-configuration":
                    body: Any = {
                        "issuer": provider.issuer,
                        "jwks_uri": provider.issuer + JWKS_PATH,
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    }
                elif path == JWKS_PATH:
                    body = provider.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}{REALM}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> IdentityProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_key(self, kid: str, kind: str = "RSA", publish: bool = True) -> Any:
        """Make a key pair (RSA 2048 or EC P-256) and, unless told otherwise, publish it."""
        if kind == "RSA":
            key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self.private[kid] = key
        if publish:
            self.published.append(kid)
        return key

    def jwks(self) -> dict[str, Any]:
        """The JWKS document of the published keys."""
        keys = []
        for kid in self.published:
            public = self.private[kid].public_key()
            if isinstance(public, rsa.RSAPublicKey):
                jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
                jwk.update(alg="RS256")
            else:
                jwk = ECAlgorithm.to_jwk(public, as_dict=True)
            keys.append(dict(jwk, kid=kid, use="sig"))
        return {"keys": keys}

    def public_pem(self, kid: str) -> bytes:
        """The PEM of a key's public half, what an HMAC confusion attack would use as secret."""
        return bytes(
            self.private[kid]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def claims(self, sub: str = "alice", **extra: Any) -> dict[str, Any]:
        """Claims of a valid token for ``sub`` now; ``extra`` overrides (None removes)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "groups": [],
        }
        claims.update(extra)
        return {key: value for key, value in claims.items() if value is not None}

    def token(self, sub: str = "alice", kid: str | None = None, **extra: Any) -> str:
        """A token signed by ``kid`` (default: the first key) with the algorithm of its type."""
        kid = kid or next(iter(self.private))
        key = self.private[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        return jwt.encode(self.claims(sub, **extra), key, algorithm=alg, headers={"kid": kid})


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """A token with ``alg: none`` and no signature."""
    header = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


def hmac_token(claims: dict[str, Any], kid: str, secret: bytes) -> str:
    """A token with ``alg: HS256`` keyed with ``secret`` (say, the issuer's public key PEM)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"
