"""Creating objects with a prepared JSON body, past the Kubernetes client's models.

The client's create methods validate a body against its generated models and serialise it
again: for a Job, that costs more CPU than the rest of a submission (docs/performance.md). Our
manifests are plain dicts already (``worker.jobspec``), so they are posted as JSON through the
client's own connection pool, with its headers and credentials (``Configuration.auth_settings``
refreshes an expiring service account token, as the client does). Errors map as the client's
do (``k8s_errors``). It does not import ``kubernetes``: the ApiClient is passed in.
"""

from __future__ import annotations

import json
from typing import Any

import urllib3

from worker.cluster import k8s_errors
from worker.cluster.base import TransientError
from worker.cluster.k8s_errors import CONFIGMAPS, JOBS, LEASES

Json = dict[str, Any]

#: The collection path of each resource we create, by namespace.
_COLLECTIONS = {
    JOBS: "/apis/batch/v1/namespaces/{}/jobs",
    CONFIGMAPS: "/api/v1/namespaces/{}/configmaps",
    LEASES: "/apis/coordination.k8s.io/v1/namespaces/{}/leases",
}


def headers(api_client: Any) -> dict[str, str]:
    """Return the headers the client would send with a JSON body, credentials included."""
    sent = {**api_client.default_headers}
    sent["Accept"] = sent["Content-Type"] = "application/json"
    if api_client.cookie:
        sent["Cookie"] = api_client.cookie
    for setting in api_client.configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            sent[setting["key"]] = setting["value"]
    return sent


def create(api_client: Any, resource: str, namespace: str, body: Json, timeout: float) -> Json:
    """POST ``body`` to the collection of ``resource`` in ``namespace``; return what was made."""
    url = api_client.configuration.host + _COLLECTIONS[resource].format(namespace)
    try:
        response = api_client.rest_client.pool_manager.request(
            "POST",
            url,
            body=json.dumps(body).encode(),
            headers=headers(api_client),
            timeout=urllib3.Timeout(total=timeout),
            preload_content=True,
        )
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(
            f"create {resource} in namespace {namespace}: the API server cannot be reached "
            f"({type(exc).__name__}: {exc}); will retry"
        ) from exc
    if not 200 <= response.status < 300:
        raise k8s_errors.from_status(response.status, response.data, "create", resource, namespace)
    try:
        data = json.loads(response.data)
    except ValueError as exc:
        raise TransientError(f"create {resource}: unreadable answer: {exc}") from exc
    if not isinstance(data, dict):
        raise TransientError(f"create {resource}: the answer is not a JSON object")
    return data
