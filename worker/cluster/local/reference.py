"""Image references as kubelet reads them: ``alpine`` is ``docker.io/library/alpine:latest`` (pure).

The grammar is the distribution project's (``reference.ParseNormalizedNamed``): a first
component with a dot or a colon, or ``localhost``, names the registry, otherwise Docker Hub;
a Docker Hub name without a slash lives under ``library/``; no tag and no digest mean
``:latest``.
"""

from __future__ import annotations

import platform as _platform
import re
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
#: Where Docker Hub's registry API answers; ``docker.io`` itself is only a name.
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_LEGACY_HUB = frozenset({"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")
#: Pull policies, as the API server defaults and kubelet applies them.
ALWAYS, IF_NOT_PRESENT, NEVER = "Always", "IfNotPresent", "Never"
_POLICIES = frozenset({ALWAYS, IF_NOT_PRESENT, NEVER})


class InvalidReference(ValueError):
    """The string is no image reference (kubelet's ``InvalidImageName``)."""


@dataclass(frozen=True)
class Reference:
    """One normalized image reference."""

    registry: str  # as written in names: docker.io, ghcr.io, 127.0.0.1:5000
    repository: str  # library/alpine
    tag: str | None  # None only beside a digest
    digest: str | None  # sha256:...

    @property
    def name(self) -> str:
        """Return the repository's full name (``docker.io/library/alpine``)."""
        return f"{self.registry}/{self.repository}"

    @property
    def canonical(self) -> str:
        """Return the full reference, as containerd prints it."""
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @property
    def endpoint(self) -> str:
        """Return the host (and port) that serves the registry API."""
        return DOCKER_HUB_ENDPOINT if self.registry == DOCKER_HUB else self.registry

    @property
    def wanted(self) -> str:
        """Return what to ask the registry's manifest endpoint for: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        """Return the repository's name at ``digest`` (a repo digest, kubelet's imageID)."""
        return f"{self.name}@{digest}"


def parse(text: str) -> Reference:
    """Parse and normalize an image reference; raise InvalidReference saying what is wrong."""
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference format: {text!r} is empty or holds spaces")
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.match(digest):
        raise InvalidReference(f"invalid reference format: {digest!r} is not a sha256 digest")
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise InvalidReference(f"invalid reference format: tag {tag!r} in {text!r}")
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _DOMAIN.match(registry):
            raise InvalidReference(f"invalid reference format: registry {registry!r}")
    else:
        registry, path = DOCKER_HUB, rest
    if registry in _LEGACY_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path or not all(_COMPONENT.match(part) for part in path.split("/")):
        detail = "repository name must be lowercase" if path != path.lower() else "repository"
        raise InvalidReference(f"invalid reference format: {detail} in {text!r}")
    if len(registry) + 1 + len(path) > 255:
        raise InvalidReference(f"invalid reference format: {text!r} is longer than 255 characters")
    if tag is None and not digest:
        tag = "latest"
    return Reference(registry, path, tag, digest or None)


def pull_policy(image: str, declared: str | None) -> str:
    """Return the pull policy of a container: its own, else the API server's default."""
    if declared in _POLICIES:
        return str(declared)
    try:
        ref = parse(image)
    except InvalidReference:
        return IF_NOT_PRESENT  # the pull itself reports the bad name
    # The API server looks at the tag alone: `:latest`, written or implied, means Always.
    return ALWAYS if ref.tag == "latest" else IF_NOT_PRESENT


@dataclass(frozen=True)
class Platform:
    """An OCI platform: os, architecture and variant (GOOS/GOARCH/GOARM)."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def matches(self, entry: dict[str, object]) -> bool:
        """Tell whether a manifest list's ``platform`` entry runs here, as containerd judges."""
        if entry.get("os") != self.os or entry.get("architecture") != self.architecture:
            return False
        variant = str(entry.get("variant") or "")
        if self.architecture == "arm64":
            return variant in ("", "v8")
        return variant in ("", self.variant) if self.variant else True


_MACHINES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


def host_platform() -> Platform:
    """Return this machine's platform in OCI's words (linux/amd64, linux/arm64/v8, ...)."""
    machine = _platform.machine().lower()
    architecture, variant = _MACHINES.get(machine, (machine, ""))
    return Platform("linux", architecture, variant)
