"""The one Settings object: every knob of kueue-tes, read from ``KUEUE_TES_*`` variables.

Each field is documented where it is defined (here, and in its base
:class:`app.settings_base.ServiceSettings`); ``kueue-tes settings`` prints the whole table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from app.settings_base import DEFAULT_BACKEND_PARAMETERS, ServiceSettings, commas

__all__ = ["DEFAULT_BACKEND_PARAMETERS", "Settings"]


class Settings(ServiceSettings):
    """Configuration of every kueue-tes process, from ``KUEUE_TES_<FIELD>`` variables."""

    model_config = SettingsConfigDict(env_prefix="KUEUE_TES_", extra="ignore", frozen=True)

    # -- the local runtime of `kueue-tes serve` (docs/local-runtime.md) ------------------------
    local_cpu: float | None = Field(
        default=None,
        description="cpu cores the local runtime admits at once (its quota); default: all.",
    )
    local_memory_bytes: int | None = Field(
        default=None,
        description="Memory the local runtime admits at once (bytes); default: all of it.",
    )
    bwrap: str = Field(default="bwrap", description="The bubblewrap executable.")
    local_images: Literal["pull", "host"] = Field(
        default="pull",
        description="`pull`: each container runs on its image's root file system, pulled from "
        "its registry and cached (kueue-tes's own containers, KUEUE_TES_IMAGE, run on the "
        "host's); `host`: every container runs on the host's root file system read-only and "
        "images are ignored, for machines without network (docs/local-runtime.md).",
    )
    insecure_registries: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Registries the local runtime pulls from over plain HTTP, `host:port` "
        "(comma-separated), e.g. 127.0.0.1:5000; every other one over HTTPS.",
    )
    registry_auth_file: Path | None = Field(
        default=None,
        description="Docker-style config.json whose `auths` give the local runtime credentials "
        "per registry (`auth` = base64 of user:password, or `username` and `password`); "
        "credential helpers are not run.",
    )
    image_cache_bytes: int = Field(
        default=20 * 1024**3,
        gt=0,
        description="Size bound of the local runtime's image cache (<data_dir>/images: layers "
        "and unpacked root file systems); beyond it the least recently used ones not in use "
        "are evicted.",
    )

    @field_validator("insecure_registries", mode="before")
    @classmethod
    def _split_registries(cls, value: object) -> object:
        return commas(value)

    # -- the watcher ----------------------------------------------------------------------------
    lease_name: str = Field(
        default="kueue-tes-watcher",
        description="coordination.k8s.io Lease that elects the watcher.",
    )
    lease_namespace: str | None = Field(
        default=None,
        description=(
            "Namespace of that Lease: the control plane's own; default: the namespace of the "
            "pod's service account, else the task namespace."
        ),
    )
    lease_duration_seconds: float = Field(
        default=15.0, description="How long a silent watcher's Lease lasts before a standby leads."
    )
    lease_renew_seconds: float = Field(
        default=5.0, description="How often the watcher renews its Lease (at most half its length)."
    )
    resync_seconds: float = Field(
        default=300.0, description="Period of the watcher's full resync of Jobs, Pods, Workloads."
    )
    resubmit_grace_seconds: float = Field(
        default=60.0,
        description="Age after which a QUEUED task with no Job, or a CANCELING one whose Job "
        "still exists, is enqueued again.",
    )
    image_pull_grace_seconds: float = Field(
        default=300.0, description="How long an image may fail to pull before SYSTEM_ERROR."
    )
    no_workload_seconds: float = Field(
        default=120.0,
        description="After this long with no Kueue Workload for a task's Job, its system logs "
        "say that Kueue does not seem to manage the namespace; a Job that asks for a "
        "WorkloadPriorityClass the worker could not check ends in SYSTEM_ERROR instead.",
    )
    pod_create_grace_seconds: float = Field(
        default=600.0,
        description="How long the cluster may refuse to create an admitted task's pod for a "
        "reason that can pass (a used-up ResourceQuota, an unreachable webhook) before the "
        "task ends in SYSTEM_ERROR; a refusal that cannot pass (Pod Security, a webhook's "
        "denial, a LimitRange) ends it at once.",
    )
    progress_seconds: float = Field(
        default=5.0,
        description="The `ready` pod layout shows no executor progress in pod status: the "
        "watcher reads the sequencer's log of an INITIALIZING task with a Ready pod at most this "
        "often, to see its first executor start (`kueue-tes serve`: 0.25 unless set).",
    )
    running_progress_seconds: float = Field(
        default=60.0,
        description="The same for RUNNING tasks, to record ended executors while the task runs "
        "(`ready` layout); 0 reads their log only when the pod ends.",
    )

    # -- security (docs/auth.md) ------------------------------------------------------------------
    auth: str = Field(
        default="none",
        description="Authentication: `none` (everyone is the admin principal `anonymous`; logged "
        "at every start and said in service-info), `basic`, `oidc`, or `basic,oidc` (both "
        "schemes accepted).",
    )
    basic_users_file: Path | None = Field(
        default=None,
        description="htpasswd file of the Basic users, bcrypt hashes as `htpasswd -B` writes "
        "them; an optional third field holds `admin` and `group:<name>` flags "
        "(comma-separated). Re-read when it changes, e.g. a mounted Secret.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OIDC issuer URL, exactly as tokens' `iss` claim has it; its discovery "
        "document (<issuer>/.well-known/openid-configuration) names the keys.",
    )
    oidc_audience: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Audiences a token's `aud` claim must name one of (comma-separated); "
        "required with oidc.",
    )
    oidc_principal_claim: str = Field(
        default="sub",
        description="Claim that names the principal, the owner of the tasks it creates (a "
        "dotted path reaches into nested claims).",
    )
    oidc_groups_claim: str | None = Field(
        default="groups",
        description="Claim that lists the principal's groups: a list or a comma/space-separated "
        "string; a dotted path reaches into nested claims (realm_access.roles); empty: none.",
    )
    oidc_leeway_seconds: float = Field(
        default=30.0, ge=0, description="Clock skew allowed when checking exp and nbf."
    )
    oidc_jwks_refresh_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Least time between two fetches of the issuer's keys when a token names a "
        "key id not yet known (key rotation).",
    )
    oidc_jwks_max_age_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Keys older than this are fetched again, so that withdrawn keys stop working.",
    )
    auth_cache_seconds: float = Field(
        default=60.0,
        ge=0,
        description="How long a checked token or password is remembered per API process (never "
        "past a token's expiry), so that polling costs no signature or bcrypt check; 0: none.",
    )
    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Principals who see and cancel every task: names and `group:<name>` "
        "entries (comma-separated).",
    )
    routes_file: Path | None = Field(
        default=None,
        description="YAML or JSON file that maps principals and groups to a default LocalQueue "
        "and to the queues, priority classes, GPUs and run time they may ask for "
        "(docs/auth.md); unset: everyone gets the global policy above.",
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_modes(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        modes = {part.strip().lower() for part in value.split(",") if part.strip()}
        if modes == {"none"}:
            return "none"
        if not modes or not modes <= {"basic", "oidc"}:
            raise ValueError(f"'{value}' is not none, basic, oidc or basic,oidc")
        return ",".join(sorted(modes))

    @field_validator("oidc_audience", "admins", mode="before")
    @classmethod
    def _split_security_lists(cls, value: object) -> object:
        return commas(value)

    @field_validator("oidc_groups_claim", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    log_level: str = Field(default="INFO", description="Log level of every process.")
    metrics: bool = Field(default=True, description="Count requests and serve GET /metrics.")
    metrics_port: int = Field(
        default=9090, description="Port of the worker's and watcher's /metrics; 0: none."
    )

    def store_path(self) -> Path:
        """Return the SQLite file the embedded store uses."""
        return self.sqlite_path or self.data_dir / "tasks.db"
