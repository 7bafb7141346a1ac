"""The OCI distribution protocol, as far as pulling goes: manifests, blobs, token auth.

Speaks HTTPS (plain HTTP to the registries ``KUEUE_TES_INSECURE_REGISTRIES`` names) through
urllib3. A registry that answers 401 says how to authenticate in ``WWW-Authenticate``: Basic
(credentials sent directly), or Bearer (a token from its realm, anonymous or with credentials,
as Docker Hub, ghcr.io and quay.io issue them). Credentials come from a Docker-style
``config.json``. Manifest lists and OCI indexes are resolved to this machine's platform; every
manifest is checked against its digest. Errors become :class:`PullError` with the registry's own
words.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from worker.cluster.local.reference import DOCKER_HUB, Platform, Reference

logger = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFESTS = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
#: The largest manifest or config we read (containerd's limit for manifests is 4 MiB).
DOCUMENT_LIMIT = 8 * 1024 * 1024
USER_AGENT = "kueue-tes (local runtime)"
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')
_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io")


class PullError(Exception):
    """An image cannot be pulled; the message is what kubelet would show after ErrImagePull."""


@dataclass(frozen=True)
class Resolved:
    """A reference resolved to one image for this platform."""

    digest: str  # what the reference names: an index's digest, or the manifest's
    manifest_digest: str
    manifest: dict[str, Any]
    config_digest: str
    layers: tuple[dict[str, Any], ...]


def digest_of(data: bytes) -> str:
    """Return the sha256 digest of some bytes, OCI style."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load_credentials(path: Path | None) -> dict[str, tuple[str, str]]:
    """Read a Docker ``config.json``: registry host → (user, password); raise ValueError."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the registry auth file {path}: {exc}") from exc
    out: dict[str, tuple[str, str]] = {}
    for key, entry in ((doc or {}).get("auths") or {}).items():
        if not isinstance(entry, dict):
            continue
        user, password = entry.get("username"), entry.get("password")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: the auth of {key!r} is not base64 user:pass") from exc
        if user and password is not None:
            out[_registry_key(key)] = (str(user), str(password))
    return out


def _registry_key(key: str) -> str:
    if key in _HUB_KEYS:
        return DOCKER_HUB
    host = urlsplit(key).netloc if "://" in key else key.split("/", maxsplit=1)[0]
    return DOCKER_HUB if host in _HUB_KEYS else host


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) or m.group(3) or "" for m in _PARAM.finditer(rest)}
    return scheme.lower(), params


def _registry_words(status: int, body: bytes) -> str:
    """Return what a registry said in an error body (its ``errors`` list), or the status."""
    try:
        doc = json.loads(body[:65536])
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors:
            parts = [
                f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                for e in errors
                if isinstance(e, dict)
            ]
            return "; ".join(p for p in parts if p) or f"HTTP {status}"
        for key in ("details", "detail", "message", "error"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    text = body[:200].decode("utf-8", "replace").strip()
    return f"HTTP {status}" + (f": {text}" if text and "<" not in text else "")


@dataclass
class _Token:
    value: str
    expires: float


@dataclass
class Registry:
    """A pulling client for every registry, with its credentials and insecure hosts."""

    credentials: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    timeout: float = 30.0
    _pool: urllib3.PoolManager = field(init=False, repr=False)
    _tokens: dict[tuple[str, str], _Token] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        timeout = urllib3.Timeout(connect=min(self.timeout, 10.0), read=self.timeout)
        retries = urllib3.Retry(total=3, connect=2, read=0, status=0, redirect=5)
        self._pool = urllib3.PoolManager(maxsize=8, timeout=timeout, retries=retries)

    # -- requests ---------------------------------------------------------------------------

    def _url(self, ref: Reference, path: str) -> str:
        scheme = "http" if ref.registry in self.insecure else "https"
        return f"{scheme}://{ref.endpoint}/v2/{ref.repository}/{path}"

    def _request(
        self, ref: Reference, method: str, path: str, headers: Mapping[str, str], stream: bool
    ) -> urllib3.BaseHTTPResponse:
        url = self._url(ref, path)
        for attempt in range(2):
            sent = {"User-Agent": USER_AGENT, **headers, **self._authorization(ref)}
            try:
                response = self._pool.request(
                    method, url, headers=sent, preload_content=False, decode_content=False
                )
            except Urllib3Error as exc:
                raise PullError(f"cannot reach registry {ref.endpoint}: {_reason(exc)}") from exc
            if response.status != 401 or attempt:
                break
            challenge = response.headers.get("WWW-Authenticate", "")
            response.drain_conn()
            response.release_conn()
            self._authenticate(ref, challenge)
        if response.status >= 400 or (response.status != 200 and not stream):
            body = response.read(65536) if method != "HEAD" else b""
            response.release_conn()
            raise PullError(self._failure(ref, path, response.status, body))
        return response

    def _failure(self, ref: Reference, path: str, status: int, body: bytes) -> str:
        words = _registry_words(status, body)
        what = "manifest" if path.startswith("manifests/") else "blob"
        if status in (401, 403):
            given = "with the credentials" if ref.registry in self.credentials else "anonymously"
            hint = (
                "check the credentials in KUEUE_TES_REGISTRY_AUTH_FILE"
                if ref.registry in self.credentials
                else "the repository may be private (set KUEUE_TES_REGISTRY_AUTH_FILE) or not exist"
            )
            return f"{ref.name}: pull access denied {given} ({words}); {hint}"
        if status == 404:
            return f"{ref.canonical}: not found ({words})"
        return f"{ref.endpoint} answered HTTP {status} for the {what} of {ref.canonical}: {words}"

    # -- auth -------------------------------------------------------------------------------

    def _authorization(self, ref: Reference) -> dict[str, str]:
        with self._lock:
            token = self._tokens.get((ref.registry, ref.repository))
        if token is not None and token.expires > time.monotonic():
            return {"Authorization": token.value}
        return {}

    def _authenticate(self, ref: Reference, challenge: str) -> None:
        """Answer a 401's challenge: keep a Basic header, or fetch a bearer token."""
        scheme, params = _challenge(challenge)
        creds = self.credentials.get(ref.registry)
        basic = None
        if creds is not None:
            basic = "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        if scheme == "basic":
            if basic is None:
                raise PullError(
                    f"{ref.name}: the registry asks for credentials and none are configured "
                    "for it (KUEUE_TES_REGISTRY_AUTH_FILE)"
                )
            self._keep(ref, basic, 24 * 3600)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise PullError(
                f"{ref.name}: the registry asks for unknown authentication {challenge!r}"
            )
        query = {"scope": f"repository:{ref.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        headers = {"User-Agent": USER_AGENT, **({"Authorization": basic} if basic else {})}
        try:
            response = self._pool.request("GET", url, headers=headers)
        except Urllib3Error as exc:
            raise PullError(f"cannot reach the token service {realm}: {_reason(exc)}") from exc
        if response.status != 200:
            words = _registry_words(response.status, response.data)
            who = "the configured credentials" if basic else "anonymous access"
            raise PullError(
                f"{ref.name}: the registry's token service refused {who} ({words}); "
                "check KUEUE_TES_REGISTRY_AUTH_FILE"
            )
        try:
            doc = json.loads(response.data)
            token = str(doc.get("token") or doc["access_token"])
            lifetime = float(doc.get("expires_in") or 60)
        except (ValueError, KeyError, TypeError) as exc:
            raise PullError(f"{ref.name}: the token service {realm} answered no token") from exc
        self._keep(ref, f"Bearer {token}", lifetime)

    def _keep(self, ref: Reference, value: str, lifetime: float) -> None:
        # A token about to expire is dropped a little early, so that a pull never starts on it.
        expires = time.monotonic() + max(lifetime - 10, lifetime / 2)
        with self._lock:
            self._tokens[(ref.registry, ref.repository)] = _Token(value, expires)

    # -- manifests --------------------------------------------------------------------------

    def head(self, ref: Reference) -> str | None:
        """Return the digest the reference names now, where the registry says it on a HEAD."""
        response = self._request(ref, "HEAD", f"manifests/{ref.wanted}", {"Accept": ACCEPT}, False)
        response.release_conn()
        digest = response.headers.get("Docker-Content-Digest")
        return str(digest) if digest and digest.startswith("sha256:") else None

    def document(self, ref: Reference, path: str, expected: str | None) -> tuple[bytes, str]:
        """Return a manifest or config and its digest, checked against ``expected``."""
        headers = {"Accept": ACCEPT} if path.startswith("manifests/") else {}
        response = self._request(ref, "GET", path, headers, False)
        try:
            data = response.read(DOCUMENT_LIMIT + 1, decode_content=True)
        except Urllib3Error as exc:
            raise PullError(f"reading from {ref.endpoint} failed: {_reason(exc)}") from exc
        finally:
            response.release_conn()
        if len(data) > DOCUMENT_LIMIT:
            raise PullError(f"{ref.canonical}: {path} is larger than {DOCUMENT_LIMIT} bytes")
        digest = digest_of(data)
        announced = response.headers.get("Docker-Content-Digest")
        for wanted in (expected, announced):
            if wanted and wanted.startswith("sha256:") and wanted != digest:
                raise PullError(
                    f"{ref.canonical}: {path} has digest {digest}, not {wanted} (corrupt or "
                    "tampered with on the way)"
                )
        return data, digest

    def resolve(self, ref: Reference, platform: Platform) -> Resolved:
        """Resolve a reference to the image for ``platform``: manifest, config and layers."""
        data, digest = self.document(ref, f"manifests/{ref.wanted}", ref.digest)
        named = digest
        doc = _json(ref, data)
        kind = _media_type(doc)
        if kind in INDEXES:
            entry = choose(doc.get("manifests") or [], platform, ref, digest)
            data, digest = self.document(ref, f"manifests/{entry}", entry)
            doc = _json(ref, data)
            kind = _media_type(doc)
        if kind not in MANIFESTS:
            raise PullError(f"{ref.canonical}: unsupported manifest type {kind!r}{_schema1(doc)}")
        config = (doc.get("config") or {}).get("digest")
        layers = doc.get("layers")
        if not isinstance(config, str) or not isinstance(layers, list):
            raise PullError(f"{ref.canonical}: manifest {digest} has no config or layers")
        return Resolved(named, digest, doc, config, tuple(layers))

    def blob(self, ref: Reference, digest: str) -> urllib3.BaseHTTPResponse:
        """Open a blob for streaming (the caller checks its digest and releases it)."""
        return self._request(ref, "GET", f"blobs/{digest}", {}, True)


def choose(
    entries: Iterable[Mapping[str, Any]], platform: Platform, ref: Reference, index: str
) -> str:
    """Return the digest of the index entry that runs on ``platform``; raise PullError."""
    offered: list[str] = []
    for entry in entries:
        spec = entry.get("platform") or {}
        if spec.get("os") == "unknown":
            continue  # attestations and signatures ride along in indexes
        offered.append(
            "/".join(str(spec.get(k)) for k in ("os", "architecture", "variant") if spec.get(k))
        )
        if platform.matches(dict(spec)) and isinstance(entry.get("digest"), str):
            return str(entry["digest"])
    built = ", ".join(offered) or "no platform"
    raise PullError(
        f"{ref.canonical}: no match for platform {platform} in manifest list {index} "
        f"(the image is built for {built})"
    )


def image_config(ref: Reference, data: bytes, platform: Platform, layers: int) -> dict[str, Any]:
    """Return what the runtime keeps of an image config; check its platform and layer count."""
    try:
        doc = json.loads(data)
        diff_ids = [str(d) for d in doc["rootfs"]["diff_ids"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise PullError(f"{ref.canonical}: its image config is not valid: {exc}") from exc
    seen = {"os": doc.get("os"), "architecture": doc.get("architecture")}
    if doc.get("variant"):
        seen["variant"] = doc["variant"]
    if seen["os"] and seen["architecture"] and not platform.matches(seen):
        built = "/".join(str(v) for v in seen.values())
        raise PullError(
            f"{ref.canonical}: no match for platform {platform} (it is built for {built})"
        )
    if len(diff_ids) != layers:
        raise PullError(
            f"{ref.canonical}: its config lists {len(diff_ids)} layers, the manifest {layers}"
        )
    config = doc.get("config") or {}

    def strings(key: str) -> list[str] | None:
        value = config.get(key)
        return None if value is None else [str(v) for v in value]

    return {
        "env": strings("Env") or [],
        "entrypoint": strings("Entrypoint"),
        "cmd": strings("Cmd"),
        "working_dir": str(config.get("WorkingDir") or ""),
        "user": str(config.get("User") or ""),
        "diff_ids": diff_ids,
    }


def _json(ref: Reference, data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise PullError(f"{ref.canonical}: the registry sent a manifest that is not JSON") from exc
    if not isinstance(doc, dict):
        raise PullError(f"{ref.canonical}: the registry sent a manifest that is not an object")
    return doc


def _media_type(doc: Mapping[str, Any]) -> str:
    kind = doc.get("mediaType")
    if isinstance(kind, str):
        return kind
    # OCI made mediaType optional at first; the shape tells an index from a manifest.
    if "manifests" in doc:
        return OCI_INDEX
    return OCI_MANIFEST if "layers" in doc else ""


def _schema1(doc: Mapping[str, Any]) -> str:
    if doc.get("schemaVersion") == 1:
        return " (Docker schema 1, which container runtimes no longer pull; push it again)"
    return ""


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc)
    # urllib3 starts its connection errors with the connection object's repr.
    return text.split(">: ", 1)[1] if text.startswith("<") and ">: " in text else text
