"""GetServiceInfo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app import auth, services
from app.models import Organization, ServiceInfo, ServiceType

TES_VERSION = "1.1.0"


def get_service_info() -> dict[str, Any]:
    """Describe this service: GA4GH service-info plus the TES storage and parameter lists.

    Public: no credentials are needed (app/frontdoor.py).
    """
    svc = services.current()
    settings = svc.settings
    started = datetime.fromtimestamp(svc.started_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    description = settings.service_description
    if svc.auth.is_open:
        # Said where clients and their users look, not only in the server's log.
        description = f"{description} {auth.OPEN_WARNING}".strip()
    info = ServiceInfo(
        id=settings.service_id,
        name=settings.service_name,
        type=ServiceType(group="org.ga4gh", artifact="tes", version=TES_VERSION),
        description=description,
        organization=Organization(name=settings.organization_name, url=settings.organization_url),
        contactUrl=settings.contact_url,
        documentationUrl=settings.documentation_url,
        createdAt=started,
        updatedAt=started,
        environment=settings.environment,
        version=_package_version(),
        storage=list(settings.storage),
        tesResources_backend_parameters=list(settings.backend_parameters),
    )
    return info.model_dump(mode="json", exclude_none=True)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kueue-tes")
    except PackageNotFoundError:
        return "0.0.0+unknown"
