"""Queue routing: which LocalQueue a principal's tasks go to, and what they may ask of Kueue.

Read from KUEUE_TES_ROUTES_FILE (YAML or JSON) once, when the API starts; docs/auth.md shows
the format. Pure apart from reading that file. A route's envelope replaces the global policy
of the KUEUE_TES_* settings for the principals it matches; the first matching route wins.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app import policy
from app.credentials import Principal
from app.settings import Settings


class _Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    queue: str | None = None
    queues: list[str] | None = None
    priority_classes: list[str] | None = None
    gpu_types: list[str] | None = None
    max_gpus: int | None = Field(default=None, ge=0)
    max_run_seconds: int | None = Field(default=None, gt=0)


class _Route(_Envelope):
    principals: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _matches_someone(self) -> _Route:
        if not (self.principals or self.groups):
            raise ValueError("a route needs principals or groups to match")
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: _Envelope | Literal["deny"] = Field(default_factory=_Envelope)
    routes: list[_Route] = Field(default_factory=list)


@dataclass(frozen=True)
class Route:
    """Principals and groups, and the envelope their tasks get."""

    principals: frozenset[str]
    groups: frozenset[str]
    envelope: policy.Envelope

    def matches(self, principal: Principal) -> bool:
        """Tell whether the route applies to ``principal``."""
        return principal.name in self.principals or bool(principal.groups & self.groups)


@dataclass(frozen=True)
class Routes:
    """The routes in file order, and the envelope of principals that match none (None: deny)."""

    routes: tuple[Route, ...]
    default: policy.Envelope | None

    def envelope(self, principal: Principal) -> policy.Envelope | None:
        """Return what ``principal`` may ask for, or None if it may not create tasks."""
        for route in self.routes:
            if route.matches(principal):
                return route.envelope
        return self.default


def _names(what: str, values: Iterable[str]) -> tuple[str, ...]:
    for value in values:
        if not policy.is_name(value):
            raise ValueError(f"'{value}' is not a {what} name")
    return tuple(values)


def _envelope(
    spec: _Envelope, base: policy.Envelope, settings: Settings, label: str | None
) -> policy.Envelope:
    """Return ``spec`` over ``base``: what it leaves out, ``base`` decides."""
    queue = _names("LocalQueue", [spec.queue])[0] if spec.queue else base.queue
    if spec.queues is not None:
        queues = _names("LocalQueue", spec.queues)
    elif label is not None:  # a route that lists no queues may name only its own
        queues = (queue,)
    else:
        queues = base.queues
    kinds = dict(base.gpu_kinds)
    if spec.gpu_types is not None:
        offered = policy.gpu_kinds(settings)
        unknown = [kind for kind in spec.gpu_types if kind not in offered]
        if unknown:
            raise ValueError(
                f"GPU kind '{unknown[0]}' is not one of KUEUE_TES_GPU_RESOURCES "
                f"({', '.join(offered) or 'none'})"
            )
        kinds = {kind: offered[kind] for kind in spec.gpu_types}
    default_gpu = base.default_gpu_type
    if default_gpu not in kinds:
        default_gpu = next(iter(kinds), None)
    max_run = spec.max_run_seconds or base.max_run_seconds
    ceiling = settings.max_run_seconds
    if max_run is not None and ceiling is not None and max_run > ceiling:
        # The worker caps every task at the global limit, also tasks already queued.
        raise ValueError(
            f"max_run_seconds {max_run} is over KUEUE_TES_MAX_RUN_SECONDS ({ceiling}), "
            "which bounds every route"
        )
    classes = spec.priority_classes
    return policy.Envelope(
        queue=queue,
        queues=queues,
        priority_classes=base.priority_classes
        if classes is None
        else _names("WorkloadPriorityClass", classes),
        gpu_kinds=kinds,
        default_gpu_type=default_gpu,
        max_gpus=base.max_gpus if spec.max_gpus is None else spec.max_gpus,
        max_run_seconds=max_run,
        route=label,
    )


def parse(text: str, settings: Settings, source: str = "routes") -> Routes:
    """Return the routes of a YAML or JSON text; ValueError says what to fix, and where."""
    try:
        raw = yaml.safe_load(text)
        spec = _File.model_validate({} if raw is None else raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML or JSON: {exc}") from exc
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        raise ValueError(f"{source}: {where}: {error['msg']}") from exc
    glob = policy.Envelope.from_settings(settings)
    default: policy.Envelope | None = None
    try:
        if spec.default != "deny":
            default = _envelope(spec.default, glob, settings, None)
    except ValueError as exc:
        raise ValueError(f"{source}: default: {exc}") from exc
    routes = []
    for i, item in enumerate(spec.routes):
        label = ", ".join([*item.principals, *(f"group:{g}" for g in item.groups)])
        try:
            envelope = _envelope(item, default or glob, settings, f"the route of {label}")
        except ValueError as exc:
            raise ValueError(f"{source}: routes[{i}] ({label}): {exc}") from exc
        routes.append(Route(frozenset(item.principals), frozenset(item.groups), envelope))
    return Routes(tuple(routes), default)


def load(settings: Settings) -> Routes:
    """Return the routes of KUEUE_TES_ROUTES_FILE, or the global policy for all when unset."""
    path: Path | None = settings.routes_file
    if path is None:
        return Routes((), policy.Envelope.from_settings(settings))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"KUEUE_TES_ROUTES_FILE: cannot read {path}: {exc}") from exc
    return parse(text, settings, f"KUEUE_TES_ROUTES_FILE {path}")
