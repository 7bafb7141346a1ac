"""The first half of the one Settings object (app/settings.py): where things live, HTTP, what
the service offers, the task pod, storage and what tasks may ask of Kueue.

Each field is documented here and only here; ``kueue-tes settings`` prints the whole table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode

#: The backend_parameters keys the service understands (design §10).
DEFAULT_BACKEND_PARAMETERS = ["queue", "priority_class", "gpus", "gpu_type", "max_run_seconds"]


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "kueue-tes"


def commas(value: object) -> object:
    """Split a comma-separated variable into its stripped, non-empty parts."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class ServiceSettings(BaseSettings):
    """Settings of the service and its task pods (a base of :class:`app.settings.Settings`)."""

    # -- where things live ------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Directory for the embedded SQLite store and local runtime state.",
    )
    mongo_uri: str | None = Field(
        default=None,
        description="MongoDB connection URI. Set it to use MongoDB; unset means embedded SQLite.",
    )
    mongo_database: str = Field(default="kueue_tes", description="MongoDB database name.")
    sqlite_path: Path | None = Field(
        default=None,
        description="SQLite file of the embedded store; default: <data_dir>/tasks.db.",
    )
    redis_url: str | None = Field(
        default=None,
        description=(
            "Redis URL of the RQ queues (redis://host:6379/0). Unset means an embedded, "
            "in-process Redis-compatible queue, served by the worker thread of `kueue-tes serve`."
        ),
    )
    rq_queue: str = Field(default="kueue-tes", description="RQ queue that carries submit jobs.")
    rq_cancel_queue: str = Field(
        default="kueue-tes-high",
        description="RQ queue that carries cancel jobs; workers drain it before submit jobs.",
    )

    # -- HTTP -------------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8000, description="Port the API listens on.")
    workers: int = Field(default=2, description="gunicorn worker processes of `kueue-tes api`.")
    max_body_bytes: int = Field(
        default=786_432,
        description=(
            "Largest CreateTask body accepted (bytes). It keeps a task inside one ConfigMap "
            "(1 MiB) with room for our own fields."
        ),
    )
    max_content_bytes: int = Field(
        default=262_144,
        description="Largest inline `content` of one input (bytes, UTF-8).",
    )

    # -- what the service offers --------------------------------------------------------------
    backend_parameters: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BACKEND_PARAMETERS),
        description=(
            "backend_parameters keys honoured (comma-separated). Other keys are dropped with a "
            "system log, or rejected with 400 when the task sets backend_parameters_strict."
        ),
    )
    storage: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "URL prefixes this deployment can reach, listed in service-info (comma-separated)."
        ),
    )
    service_id: str = Field(default="org.kueue-tes.tes", description="service-info `id`.")
    service_name: str = Field(default="kueue-tes", description="service-info `name`.")
    service_description: str = Field(
        default="GA4GH TES 1.1 on Kubernetes; Kueue admits whole tasks.",
        description="service-info `description`.",
    )
    organization_name: str = Field(
        default="kueue-tes", description="service-info `organization.name`."
    )
    organization_url: str = Field(
        default="https://example.org/kueue-tes", description="service-info `organization.url`."
    )
    contact_url: str | None = Field(default=None, description="service-info `contactUrl`.")
    documentation_url: str | None = Field(
        default=None, description="service-info `documentationUrl`."
    )
    environment: str | None = Field(default=None, description="service-info `environment`.")

    # -- the task pod (design section 7) --------------------------------------------------------
    namespace: str = Field(default="kueue-tes-tasks", description="Namespace of task Jobs.")
    default_queue: str = Field(
        default="tes", description="Kueue LocalQueue of tasks that ask for none."
    )
    image: str = Field(
        default="ghcr.io/kueue-tes/kueue-tes:latest",
        description="Our image, for the setup, sequencer and finish containers of task pods.",
    )
    pod_python: str = Field(
        default="python3",
        description="Python interpreter inside our image (the local runtime uses its own).",
    )
    task_service_account: str = Field(
        default="kueue-tes-task",
        description="Service account of task pods; it needs no RBAC and gets no token.",
    )
    job_ttl_seconds: int = Field(
        default=86_400,
        description="ttlSecondsAfterFinished of task Jobs: a backstop if the watcher is down.",
    )
    sidecar_cpu: str = Field(
        default="100m", description="cpu request of our own containers in each task pod."
    )
    sidecar_memory: str = Field(
        default="128Mi", description="Memory request and limit of our own containers."
    )
    stage_in_timeout_seconds: int = Field(
        default=86_400,
        description="Longest stage-in; then the attempt ends in SYSTEM_ERROR and says so.",
    )
    pod_layout: str = Field(
        default="ready",
        description="Task pod layout (docs/task-pod.md): `ready` runs executors as main "
        "containers that take turns, so the pod is Ready once it runs (Kueue's "
        "waitForPodsReady); tasks with several executors that use GPUs still get `init`. "
        "`init` runs every task's executors as init containers, one after the other.",
    )
    storage_secret: str | None = Field(
        default=None,
        description=(
            "Secret whose keys become environment variables of the sequencer only "
            "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...): storage credentials."
        ),
    )
    sequencer_host_env: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Names of the worker's environment variables copied into the sequencer's "
            "environment only (comma-separated, e.g. AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY): "
            "storage credentials where no Secret can be used, as in `kueue-tes serve`. The "
            "values are written into each Job; on Kubernetes prefer KUEUE_TES_STORAGE_SECRET."
        ),
    )

    # -- storage the sequencer reaches (docs/storage.md) ---------------------------------------
    file_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Directories under which file:// inputs and outputs are allowed (comma-separated); "
            "shared file systems mounted at the same path where task pods run."
        ),
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3 endpoint (MinIO, Ceph, ...); unset means AWS itself."
    )
    s3_region: str | None = Field(default=None, description="S3 region; unset lets boto3 decide.")
    s3_path_style: bool = Field(
        default=False, description="Path-style S3 addressing, which most S3-compatible stores need."
    )
    http_put: bool = Field(default=False, description="Allow http(s) outputs, uploaded with PUT.")
    transfer_retries: int = Field(
        default=4, description="Retries of one transfer after a transient failure."
    )
    transfer_backoff_seconds: float = Field(
        default=0.5, description="First pause before retrying a transfer; doubles each retry."
    )
    transfer_timeout_seconds: float = Field(
        default=60.0, description="Connect and read timeout of one network operation."
    )
    s3_multipart_threshold_bytes: int = Field(
        default=64 * 1024 * 1024,
        description="S3 objects at least this large move in parts (multipart).",
    )
    transfer_parallelism: int = Field(
        default=4, description="Transfers the sequencer runs at once."
    )

    # -- what tasks may ask of Kueue ---------------------------------------------------------
    allowed_queues: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="LocalQueues a task may name in backend_parameters.queue (comma-separated); "
        "empty: any.",
    )
    allowed_priority_classes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="WorkloadPriorityClasses a task may name in backend_parameters.priority_class "
        "(comma-separated); empty: any.",
    )
    gpu_resources: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["nvidia=nvidia.com/gpu"],
        description="GPU kinds a task may name in backend_parameters.gpu_type, each "
        "`kind=extended-resource` (comma-separated); empty: no GPUs.",
    )
    default_gpu_type: str | None = Field(
        default=None,
        description="GPU kind of tasks that ask for gpus without a gpu_type; default: the first "
        "of KUEUE_TES_GPU_RESOURCES.",
    )
    max_gpus: int = Field(
        default=8, ge=0, description="Most GPUs one task may ask for (its one pod is on one node)."
    )
    max_run_seconds: int | None = Field(
        default=None,
        gt=0,
        description="Longest run time a task may ask for, and the one it gets when it asks for "
        "none (Kueue's max-exec-time); unset: no limit.",
    )
    preemptible_priority_class: str | None = Field(
        default=None,
        description="WorkloadPriorityClass of tasks with preemptible: true that name none.",
    )
    preemptible_node_selector: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="nodeSelector of tasks with preemptible: true, `key=value` (comma-separated), "
        "e.g. cloud.google.com/gke-spot=true.",
    )
    preemptible_queue: str | None = Field(
        default=None,
        description="LocalQueue of every task with preemptible: true (a queue the task names is "
        "then ignored, with a system log); its ClusterQueue should offer the spot flavor alone, "
        "so that Kueue cannot admit the task on other capacity (docs/kueue.md).",
    )

    @field_validator(
        "backend_parameters",
        "storage",
        "sequencer_host_env",
        "file_roots",
        "allowed_queues",
        "allowed_priority_classes",
        "gpu_resources",
        "preemptible_node_selector",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        return commas(value)

    @field_validator("gpu_resources", "preemptible_node_selector")
    @classmethod
    def _key_value_pairs(cls, value: list[str]) -> list[str]:
        for item in value:
            key, equals, val = item.partition("=")
            if not (equals and key.strip() and val.strip()):
                raise ValueError(f"'{item}' is not key=value")
        return value

    @field_validator("pod_layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("ready", "init"):
            raise ValueError(f"'{value}' is not ready or init")
        return value
