"""create_app(settings): the Connexion app that serves our TES 1.1 spec (design section 4)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import connexion
import flask
from connexion.exceptions import BadRequestProblem
from connexion.jsonifier import Jsonifier
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import MiddlewarePosition
from connexion.resolver import Resolver
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from starlette.types import Scope

from app import auth, frontdoor, meter, problems, queue, routing, services, store
from app.api import tasks
from app.dashboard.server import Dashboard
from app.settings import Settings
from app.store.base import StoreError, TaskStore

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parent.parent / "openapi"
SPEC_FILE = "tes.yaml"
BASE_PATHS = ("/ga4gh/tes/v1", "/v1")

_HANDLERS = {
    "GetServiceInfo": "app.api.service.get_service_info",
    "ListTasks": "app.api.tasks.list_tasks",
    "CreateTask": "app.api.tasks.create_task",
    "GetTask": "app.api.tasks.get_task",
    "CancelTask": "app.api.tasks.cancel_task",
}


class _OperationResolver(Resolver):  # type: ignore[misc]
    """Map the spec's operationIds (CreateTask, ...) to our handler functions."""

    def resolve_operation_id(self, operation: Any) -> str:
        return _HANDLERS[operation.operation_id]


class _NamedParameterValidator(ParameterValidator):  # type: ignore[misc]
    """Connexion's parameter checks, with errors that name the parameter in one line."""

    @staticmethod
    def validate_parameter(
        parameter_type: str, value: Any, param: dict[str, Any], param_name: str | None = None
    ) -> str | None:
        error: str | None = ParameterValidator.validate_parameter(
            parameter_type, value, param, param_name
        )
        if error and not error.startswith("Missing"):
            return f"{param['name']}: {error.splitlines()[0]}"
        return error

    def validate_request(self, request: Any) -> None:
        """Validate; a 400 for a parameter names it in ``field``, as the front door's do."""
        try:
            super().validate_request(request)
        except BadRequestProblem as exc:
            name, _, rest = str(exc.detail).partition(": ")
            if rest and any(name == p["name"] for p in self.parameters.get("query", [])):
                exc.ext = {**(exc.ext or {}), "field": name}
            raise


def _body_validator(max_bytes: int) -> type[JSONRequestBodyValidator]:
    class _LimitedJSONBody(JSONRequestBodyValidator):  # type: ignore[misc]
        """Parse JSON within the size limit; the schema is checked by Pydantic in the handler,
        which is lenient where the spec's JSON schema is not (null tags, fractional cores)."""

        async def _parse(self, stream: AsyncGenerator[bytes, None], scope: Scope) -> Any:
            chunks: list[bytes] = []
            size = 0
            async for chunk in stream:
                size += len(chunk)
                if size > max_bytes:
                    raise BadRequestProblem(detail=tasks.too_large(max_bytes))
                chunks.append(chunk)
            raw = b"".join(chunks)
            if not raw:
                return None
            try:
                return tasks.parse_body(raw)
            except ValueError as exc:
                raise BadRequestProblem(detail=str(exc)) from exc

        def _validate(self, body: Any) -> dict[str, Any] | None:
            if body is None:
                raise BadRequestProblem(detail=tasks.NO_TASK)
            return None

    return _LimitedJSONBody


def _store_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    log.error("store error on %s %s: %s", request.method, request.url.path, exc)
    return problems.store_unavailable()


def create_app(
    settings: Settings,
    task_store: TaskStore | None = None,
    task_queue: queue.TaskQueue | None = None,
    authenticator: auth.Authenticator | None = None,
) -> connexion.FlaskApp:
    """Build the API app; the store, queue and authenticator default to what the settings name.

    Raises ValueError when the security settings are wrong (app.auth, app.routing).
    """
    authenticator = authenticator or auth.Authenticator(settings)
    routes = routing.load(settings)
    if authenticator.is_open:
        log.warning("%s Set KUEUE_TES_AUTH (docs/auth.md).", auth.OPEN_WARNING)
    else:
        authenticator.warm()
    validators = dict(VALIDATOR_MAP)
    validators["parameter"] = _NamedParameterValidator
    body = dict(VALIDATOR_MAP["body"])
    body["*/*json"] = _body_validator(settings.max_body_bytes)
    validators["body"] = type(VALIDATOR_MAP["body"])(body)

    svc = services.Services(
        settings=settings,
        store=task_store or store.open_store(settings),
        queue=task_queue or queue.TaskQueue(settings, queue.connect(settings)),
        auth=authenticator,
        routes=routes,
    )
    # No indent: an indented dump takes Python's slow JSON encoder (ten times slower on pages).
    app = connexion.FlaskApp(__name__, specification_dir=SPEC_DIR, jsonifier=Jsonifier(flask.json))
    for base_path in BASE_PATHS:
        app.add_api(
            SPEC_FILE,
            base_path=base_path,
            name=base_path.strip("/").replace("/", "_"),
            resolver=_OperationResolver(),
            validator_map=validators,
            validate_responses=False,
            strict_validation=False,
            swagger_ui_options=connexion.options.SwaggerUIOptions(swagger_ui=False),
        )
    app.add_middleware(
        frontdoor.FrontDoor, position=MiddlewarePosition.BEFORE_SWAGGER, services=svc
    )
    # Behind the front door, so behind its authentication.
    app.add_middleware(Dashboard, position=MiddlewarePosition.BEFORE_SWAGGER, services=svc)
    if settings.metrics:  # outermost but for the server-error layer: it sees every answer
        operations = meter.Operations.from_spec(SPEC_DIR / SPEC_FILE, BASE_PATHS)
        position = MiddlewarePosition.BEFORE_EXCEPTION
        app.add_middleware(meter.Meter, position=position, services=svc, operations=operations)
    app.add_error_handler(StoreError, _store_unavailable)
    app.app.json.sort_keys = False
    app.app.extensions[services.EXTENSION] = svc
    return app
