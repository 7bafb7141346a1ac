"""A real OCI registry on loopback for tests and benchmarks, and images the tests build themselves.

``Registry`` runs Debian's ``docker-registry`` (the distribution project's registry 2.x) on a
free port of 127.0.0.1, over plain HTTP. With ``users`` it runs behind a token service of its
own (``TokenService``, a ThreadingHTTPServer): anonymous clients get tokens that reach only
repositories under ``public/``, users with the right password reach everything, a wrong
password is refused as Docker Hub refuses it. The registry checks the tokens itself: RS256 JWTs
with the signing certificate in ``x5c``, verified against the bundle in its configuration.

Images are built from Python: ``layer()`` writes a tar (gzip) from a dict of paths, and
``push_image`` uploads blobs and a manifest (Docker v2 or OCI) through the registry's HTTP API,
``push_index`` a multi-platform index over pushed manifests.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.conftest import free_port

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SERVICE, ISSUER = "test-registry", "test-token-issuer"
#: What a path in a layer holds: bytes (a file), a dict (a directory: {"mode": 0o755}),
#: ("symlink", target), ("hardlink", path), or None for a whiteout of that path.
Entry = bytes | dict[str, Any] | tuple[str, str] | None


def sha256(data: bytes) -> str:
    """Return an OCI digest of bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """One layer blob: compressed bytes, digest, and the diff_id of its tar."""

    blob: bytes
    digest: str
    diff_id: str


def layer(
    entries: Mapping[str, Entry], opaque: tuple[str, ...] = (), mtime: int = 1_700_000_000
) -> Layer:
    """Return a gzip'd tar layer of ``entries`` (see :data:`Entry`), ``opaque`` dirs marked."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in opaque:
            info = tarfile.TarInfo(f"{directory}/.wh..wh..opq")
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(b""))
        for path, value in entries.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.mtime = mtime
            data = None
            if value is None:
                head, _, base = info.name.rpartition("/")
                info.name = f"{head}/.wh.{base}" if head else f".wh.{base}"
            elif isinstance(value, bytes):
                info.size, info.mode, data = len(value), 0o755, io.BytesIO(value)
            elif isinstance(value, dict):
                info.type, info.mode = tarfile.DIRTYPE, int(value.get("mode", 0o755))
            elif value[0] == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, value[1]
            else:
                info.type, info.linkname = tarfile.LNKTYPE, value[1].lstrip("/")
            tar.addfile(info, data)
    tar_bytes = raw.getvalue()
    blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return Layer(blob, sha256(blob), sha256(tar_bytes))


def busybox_root(marker: str | None = None, shell: bool = True) -> dict[str, Entry]:
    """Return a small root file system: the host's static busybox and its applet links."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    entries: dict[str, Entry] = {"bin": {}, "etc": {}, "tmp": {"mode": 0o1777}}
    entries["bin/busybox"] = busybox
    if shell:  # every applet, as a busybox image has them
        busybox_path = shutil.which("busybox") or "/bin/busybox"
        found = subprocess.run([busybox_path, "--list"], capture_output=True, text=True, check=True)
        listed = found.stdout.split()
        for applet in listed:
            if applet != "busybox":
                entries[f"bin/{applet}"] = ("symlink", "busybox")
    entries["etc/passwd"] = b"root:x:0:0:root:/root:/bin/sh\n"
    if marker is not None:
        entries["etc/marker"] = marker.encode()
    return entries


def config(
    layers: list[Layer],
    architecture: str = "amd64",
    os_name: str = "linux",
    variant: str = "",
    **container: Any,
) -> bytes:
    """Return an image config: the layers' diff_ids and ``container`` (Env, Entrypoint, ...)."""
    doc: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name,
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "created": "2024-01-01T00:00:00Z",
    }
    if variant:
        doc["variant"] = variant
    return json.dumps(doc, sort_keys=True).encode()


# -- the token service ----------------------------------------------------------------------------


class TokenService:
    """Issues registry tokens: anonymous ones for ``public/``, full ones for known users."""

    def __init__(self, workdir: Path, users: Mapping[str, str]) -> None:
        """Start on a free port; write the signing certificate under ``workdir``."""
        self.users = dict(users)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = workdir / "token-cert.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.refused = 0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                status, body = service.answer(self.headers.get("Authorization"), query)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.realm = f"http://127.0.0.1:{self.server.server_port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, authorization: str | None, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        """Return the status and body for one token request."""
        user = None
        if authorization and authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self.refused += 1
                return 401, {"details": "incorrect username or password"}
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repository, _, actions = rest.rpartition(":")
            if kind == "repository" and (user or repository.startswith("public/")):
                access.append({"type": kind, "name": repository, "actions": actions.split(",")})
        return 200, {"token": self.token(user or "", access), "expires_in": 300}

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        """Return a token the registry accepts for ``access``."""
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": uuid.uuid4().hex, "access": access,
        }  # fmt: skip
        chain = [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()]
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"x5c": chain})

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


# -- the registry ---------------------------------------------------------------------------------


@dataclass
class Registry:
    """A docker-registry process on loopback, and a client that pushes to it."""

    workdir: Path
    users: Mapping[str, str] | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    tokens: TokenService | None = None
    names: dict[str, str] = field(default_factory=dict)  # the test images, by role
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "registry.log"

    @property
    def host(self) -> str:
        """Return ``127.0.0.1:PORT``, the registry part of image names."""
        return f"127.0.0.1:{self.port}"

    def start(self, binary: str = "docker-registry") -> None:
        """Start the registry on a free port and wait until it answers."""
        self.port = free_port()
        lines = [
            "version: 0.1",
            "log: {level: info, accesslog: {disabled: false}}",
            f"storage: {{filesystem: {{rootdirectory: {self.workdir / 'data'}}}}}",
            f"http: {{addr: '127.0.0.1:{self.port}', secret: {uuid.uuid4().hex}}}",
        ]
        if self.users is not None:
            self.tokens = TokenService(self.workdir, self.users)
            lines.append(
                f"auth: {{token: {{realm: '{self.tokens.realm}', service: {SERVICE}, "
                f"issuer: {ISSUER}, rootcertbundle: '{self.tokens.bundle}'}}}}"
            )
        (self.workdir / "config.yml").write_text("\n".join(lines) + "\n")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "serve", str(self.workdir / "config.yml")], stdout=out, stderr=out
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return  # 401 with token auth: it answers
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"docker-registry did not start:\n{self.log.read_text()}"
                    ) from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the registry (and its token service)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.tokens is not None:
            self.tokens.close()

    # -- pushing ----------------------------------------------------------------------------

    def _headers(self, repository: str) -> dict[str, str]:
        if self.tokens is None:
            return {}
        access = [{"type": "repository", "name": repository, "actions": ["pull", "push"]}]
        return {"Authorization": "Bearer " + self.tokens.token("pusher", access)}

    def _call(self, method: str, url: str, repository: str, data: bytes | None = None,
              headers: Mapping[str, str] | None = None) -> Any:  # fmt: skip
        full = url if url.startswith("http") else f"http://{self.host}{url}"
        request = urllib.request.Request(
            full, data=data, method=method, headers={**self._headers(repository), **(headers or {})}
        )
        return urllib.request.urlopen(request, timeout=60)

    def push_blob(self, repository: str, data: bytes) -> str:
        """Upload a blob (monolithic upload); return its digest."""
        digest = sha256(data)
        with self._call("POST", f"/v2/{repository}/blobs/uploads/", repository) as response:
            location = response.headers["Location"]
        joiner = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream"}
        self._call("PUT", f"{location}{joiner}digest={digest}", repository, data, headers).close()
        return digest

    def push_manifest(self, repository: str, tag: str, body: bytes, media_type: str) -> str:
        """Upload a manifest or index under ``tag``; return its digest."""
        headers = {"Content-Type": media_type}
        self._call("PUT", f"/v2/{repository}/manifests/{tag}", repository, body, headers).close()
        return sha256(body)

    def push_image(
        self,
        repository: str,
        tag: str,
        layers: list[Layer],
        config_bytes: bytes | None = None,
        oci: bool = False,
    ) -> tuple[str, bytes]:
        """Push layers, a config and a manifest; return the manifest's digest and bytes."""
        config_bytes = config_bytes or config(layers)
        for item in layers:
            self.push_blob(repository, item.blob)
        self.push_blob(repository, config_bytes)
        kind = (
            (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
            if oci
            else (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
        )
        manifest = {
            "schemaVersion": 2,
            "mediaType": kind[0],
            "config": {
                "mediaType": kind[1],
                "size": len(config_bytes),
                "digest": sha256(config_bytes),
            },
            "layers": [
                {"mediaType": kind[2], "size": len(x.blob), "digest": x.digest} for x in layers
            ],
        }
        body = json.dumps(manifest).encode()
        return self.push_manifest(repository, tag, body, kind[0]), body

    def push_index(
        self, repository: str, tag: str, manifests: list[tuple[str, bytes, dict[str, str]]]
    ) -> str:
        """Push an OCI index over (digest, manifest bytes, platform) entries; return its digest."""
        index = {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": json.loads(body)["mediaType"],
                    "digest": digest,
                    "size": len(body),
                    "platform": platform,
                }
                for digest, body, platform in manifests
            ],
        }
        return self.push_manifest(repository, tag, json.dumps(index).encode(), OCI_INDEX)

    def blob_fetches(self, repository: str) -> int:
        """Return how many times a blob of ``repository`` was downloaded (GET), from the log."""
        text = self.log.read_text(errors="replace")
        return sum(
            1
            for line in text.splitlines()
            if f'"GET /v2/{repository}/blobs/' in line and '" 200 ' in line
        )


def host_architecture() -> tuple[str, str]:
    """Return this machine's (architecture, variant), as the runtime resolves indexes."""
    from worker.cluster.local.reference import host_platform

    here = host_platform()
    return here.architecture, here.variant


def running_registry(workdir: Path, users: Mapping[str, str] | None = None) -> Iterator[Registry]:
    """Yield a started registry; stop it afterwards (a generator for fixtures)."""
    registry = Registry(workdir, users)
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


def need_registry() -> str | None:
    """Return why registry tests cannot run here, or None."""
    if shutil.which("docker-registry") is None:
        return "docker-registry is not installed (apt-get install docker-registry)"
    if shutil.which("busybox") is None:
        return "busybox is not installed (apt-get install busybox-static)"
    return None


def other_platform() -> dict[str, str]:
    """Return a platform that is not this machine's, for images it must not run."""
    here, _ = host_architecture()
    return {"os": "linux", "architecture": "s390x" if here != "s390x" else "amd64"}


def push_test_images(registry: Registry) -> dict[str, str]:
    """Build and push the images the tests use; return their full references by role.

    * ``marker``: busybox and /etc/marker (Docker v2 manifest);
    * ``config``: the same with Entrypoint, Cmd, Env and WorkingDir (OCI manifest);
    * ``multi``: an index: this platform's image (marker "mine"), another's, an attestation;
    * ``lacking``: an index with another platform only;
    * ``whiteout``: a second layer deletes /etc/doomed and empties /opt/old (opaque);
    * ``noshell``: no /bin/sh, only /app/busybox and /etc/marker.
    """
    arch, variant = host_architecture()
    here = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
    base = layer(busybox_root(marker="marker from the image\n"))
    names: dict[str, str] = {}
    registry.push_image("tests/marker", "1", [base], config([base], arch))
    names["marker"] = f"{registry.host}/tests/marker:1"
    workdir = layer({"srv": {}, "srv/app": {}})
    settings = config(
        [base, workdir], arch, Entrypoint=["/bin/echo", "entry"], Cmd=["from-cmd"],
        Env=["FROM_IMAGE=image", "SHARED=image", "PATH=/bin:/image/bin"], WorkingDir="/srv/app",
    )  # fmt: skip
    registry.push_image("tests/config", "1", [base, workdir], settings, oci=True)
    names["config"] = f"{registry.host}/tests/config:1"
    mine = layer(busybox_root(marker="mine\n"))
    theirs = layer({"etc": {}, "etc/marker": b"theirs\n"})
    entries = []
    for blob, platform in ((theirs, other_platform()), (mine, here)):
        tag, built = f"p-{platform['architecture']}", config([blob], platform["architecture"])
        digest, body = registry.push_image("tests/multi", tag, [blob], built, oci=True)
        entries.append((digest, body, platform))
    entries.append((entries[0][0], entries[0][1], {"os": "unknown", "architecture": "unknown"}))
    registry.push_index("tests/multi", "1", entries)
    names["multi"] = f"{registry.host}/tests/multi:1"
    other = other_platform()
    built = config([theirs], other["architecture"])
    digest, body = registry.push_image("tests/lacking", "other", [theirs], built, oci=True)
    registry.push_index("tests/lacking", "1", [(digest, body, other)])
    names["lacking"] = f"{registry.host}/tests/lacking:1"
    lower = dict(busybox_root())
    lower.update({"etc/doomed": b"doomed\n", "opt": {}, "opt/old": {}, "opt/old/a": b"a\n"})
    upper = layer({"etc/doomed": None, "opt/old/c": b"c\n"}, opaque=("opt/old",))
    first = layer(lower)
    registry.push_image("tests/whiteout", "1", [first, upper], config([first, upper], arch))
    names["whiteout"] = f"{registry.host}/tests/whiteout:1"
    bare = layer({"app": {}, "app/busybox": busybox_root()["bin/busybox"], "etc": {},
                  "etc/marker": b"no shell here\n"})  # fmt: skip
    registry.push_image("tests/noshell", "1", [bare], config([bare], arch))
    names["noshell"] = f"{registry.host}/tests/noshell:1"
    return names


@pytest.fixture(scope="module")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with no auth holding the test images (``open_registry.names``)."""
    reason = need_registry()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    registry = Registry(tmp_path_factory.mktemp("registry"))
    registry.start()
    try:
        registry.names = push_test_images(registry)
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind its token service: ``public/box:1`` for all, ``private/box:1`` for
    alice (password ``secret``)."""
    reason = need_registry()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    registry = Registry(tmp_path_factory.mktemp("private-registry"), users={"alice": "secret"})
    registry.start()
    try:
        arch, _ = host_architecture()
        box = layer(busybox_root(marker="private marker\n"))
        for repository in ("private/box", "public/box"):
            registry.push_image(repository, "1", [box], config([box], arch))
        yield registry
    finally:
        registry.stop()
