"""Pydantic models of the TES 1.1 objects, used to validate requests and to shape responses.

Request models are lenient where clients need it (unknown fields ignored, read-only fields
ignored, ``type`` optional, fractional ``cpu_cores`` rounded up); the checks that protect the
system (paths, duplicates, sizes) live in :mod:`app.validation`.
Response models carry exactly the spec's fields, so nothing internal can leak.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class State(StrEnum):
    """The TES task states."""

    UNKNOWN = "UNKNOWN"
    QUEUED = "QUEUED"
    INITIALIZING = "INITIALIZING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    COMPLETE = "COMPLETE"
    EXECUTOR_ERROR = "EXECUTOR_ERROR"
    SYSTEM_ERROR = "SYSTEM_ERROR"
    CANCELED = "CANCELED"
    PREEMPTED = "PREEMPTED"
    CANCELING = "CANCELING"


class FileType(StrEnum):
    """Whether an input or output is one file or a directory tree."""

    FILE = "FILE"
    DIRECTORY = "DIRECTORY"


class View(StrEnum):
    """How much of a task GetTask and ListTasks return."""

    MINIMAL = "MINIMAL"
    BASIC = "BASIC"
    FULL = "FULL"


class _In(BaseModel):
    # Clients send read-only fields back and fields of newer spec drafts: ignore, don't fail.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class Input(_In):
    """One input of a task: a URL to fetch or inline content, placed at ``path``."""

    name: str | None = None
    description: str | None = None
    url: str | None = None
    path: str
    type: FileType = FileType.FILE
    content: str | None = None
    streamable: bool | None = None


class Output(_In):
    """One output of a task: ``path`` (wildcards allowed) uploaded to ``url``."""

    name: str | None = None
    description: str | None = None
    url: str
    path: str
    path_prefix: str | None = None
    type: FileType = FileType.FILE


class Executor(_In):
    """One container run: an image and an argv, run after the previous executor."""

    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    workdir: str | None = None
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    env: dict[str, str] | None = None
    ignore_error: bool | None = None


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if item is not None}
    return value


class Resources(_In):
    """What the whole task needs; counted once for the task pod."""

    cpu_cores: int | None = Field(default=None, ge=0)
    preemptible: bool | None = None
    ram_gb: float | None = Field(default=None, ge=0)
    disk_gb: float | None = Field(default=None, ge=0)
    zones: list[str] | None = None
    backend_parameters: dict[str, str] | None = None
    backend_parameters_strict: bool | None = None

    @field_validator("cpu_cores", mode="before")
    @classmethod
    def _round_cores_up(cls, value: Any) -> Any:
        # The spec says integer; some engines send 0.5. Asking for less than we give is safe.
        if isinstance(value, float) and math.isfinite(value):
            return math.ceil(value)
        return value

    @field_validator("backend_parameters", mode="before")
    @classmethod
    def _no_null_parameters(cls, value: Any) -> Any:
        return _drop_nulls(value)


class TaskIn(_In):
    """The body of CreateTask."""

    name: str | None = None
    description: str | None = None
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    resources: Resources | None = None
    executors: list[Executor] = Field(min_length=1)
    volumes: list[str] | None = None
    tags: dict[str, str] | None = None

    @field_validator("tags", mode="before")
    @classmethod
    def _no_null_tags(cls, value: Any) -> Any:
        return _drop_nulls(value)


# -- responses: exactly the spec's fields --------------------------------------------------


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OutputFileLog(_Out):
    """One uploaded file."""

    url: str
    path: str
    size_bytes: str

    @field_validator("size_bytes", mode="before")
    @classmethod
    def _size_as_string(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


class ExecutorLog(_Out):
    """What one executor did."""

    start_time: str | None = None
    end_time: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int


class TaskLog(_Out):
    """One attempt of the task: one admission by Kueue."""

    logs: list[ExecutorLog] = Field(default_factory=list)
    metadata: dict[str, str] | None = None
    start_time: str | None = None
    end_time: str | None = None
    outputs: list[OutputFileLog] = Field(default_factory=list)
    system_logs: list[str] | None = None


class Task(_Out):
    """A task as GetTask returns it in the FULL view."""

    id: str
    state: State
    name: str | None = None
    description: str | None = None
    inputs: list[Input] | None = None
    outputs: list[Output] | None = None
    resources: Resources | None = None
    executors: list[Executor]
    volumes: list[str] | None = None
    tags: dict[str, str] | None = None
    logs: list[TaskLog] | None = None
    creation_time: str | None = None


class ServiceType(_Out):
    """The GA4GH service type."""

    group: str
    artifact: str
    version: str


class Organization(_Out):
    """Who runs the service."""

    name: str
    url: str


class ServiceInfo(_Out):
    """GA4GH service-info with the TES additions."""

    id: str
    name: str
    type: ServiceType
    description: str | None = None
    organization: Organization
    contactUrl: str | None = None  # noqa: N815 - the spec's name
    documentationUrl: str | None = None  # noqa: N815
    createdAt: str | None = None  # noqa: N815
    updatedAt: str | None = None  # noqa: N815
    environment: str | None = None
    version: str
    storage: list[str]
    tesResources_backend_parameters: list[str]  # noqa: N815
