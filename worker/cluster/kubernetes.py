"""KubernetesCluster: the cluster seam over the Kubernetes API (design sections 6, 11 and 12).

The only module that imports the ``kubernetes`` client. Every call asks for the raw JSON
(``_preload_content=False``), so observations are camelCase dicts exactly as the API server sent
them, and every library error leaves here as one of ours (see ``k8s_errors``).
See docs/kubernetes-backend.md for what it creates, the RBAC it needs and how it watches.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from worker import jobspec
from worker.cluster import k8s_errors, k8s_objects, k8s_raw, k8s_watch
from worker.cluster.base import (
    MANAGED_BY,
    TASK_ID,
    Kind,
    Observation,
    PermanentError,
    TransientError,
)
from worker.cluster.k8s_errors import (
    CONFIGMAPS,
    EVENTS,
    JOBS,
    LEASES,
    POD_LOGS,
    PODS,
    PRIORITY_CLASSES,
    WORKLOADS,
)
from worker.cluster.k8s_index import Index
from worker.cluster.k8s_watch import Listing

log = logging.getLogger(__name__)

Json = dict[str, Any]

#: Every Job and Pod we create carries this label; watches and lists select on it.
SELECTOR = f"{MANAGED_BY}=kueue-tes"
#: Events are not ours to label: the API server keeps only the Warnings about Jobs.
EVENT_FIELDS = "involvedObject.kind=Job,type=Warning"
KUEUE_GROUP, KUEUE_VERSION, WORKLOAD_PLURAL = "kueue.x-k8s.io", "v1beta2", "workloads"
_RESOURCES: dict[Kind, str] = {"Job": JOBS, "Pod": PODS, "Workload": WORKLOADS, "Event": EVENTS}


class KubernetesCluster(k8s_objects.TaskObjects):
    """Tasks as Jobs in one namespace; observed through Jobs, Pods, Workloads and Events."""

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        *,
        request_timeout: float = 30,
        watch_seconds: int = 300,
        retry_seconds: float = 1.0,
        page_size: int = 500,
        lease_namespace: str | None = None,
    ) -> None:
        """Use ``api_client`` for task objects in ``namespace``; Leases in ``lease_namespace``.

        ``watch_seconds`` bounds each watch request; ``lease_namespace`` defaults to
        ``namespace`` (the watcher's own namespace is the usual place).
        """
        self.api, self.namespace = api_client, namespace
        self.lease_namespace = lease_namespace or namespace
        self.request_timeout, self.watch_seconds = request_timeout, watch_seconds
        self.retry_seconds, self.page_size = retry_seconds, page_size
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._coordination = client.CoordinationV1Api(api_client)
        self._index = Index()
        self._watches = k8s_watch.Watches(
            namespace, _RESOURCES, self._list, self._stream, self._index, retry_seconds
        )
        self._lock = threading.Lock()
        self._streams: set[Any] = set()
        self._owns_client = False

    @classmethod
    def from_config(
        cls, namespace: str, kubeconfig: str | None = None, lease_namespace: str | None = None
    ) -> KubernetesCluster:
        """Connect with ``kubeconfig`` if given, else in-cluster config, else ~/.kube/config."""
        configuration = client.Configuration()
        # The config loaders are untyped; hold them as what they are to call them.
        in_cluster: Callable[..., None] = config.load_incluster_config
        from_file: Callable[..., None] = config.load_kube_config
        try:
            if kubeconfig is None:
                try:
                    in_cluster(client_configuration=configuration)
                except config.ConfigException:
                    from_file(client_configuration=configuration)
            else:
                from_file(config_file=kubeconfig, client_configuration=configuration)
        except (config.ConfigException, OSError, ValueError) as exc:
            where = kubeconfig or "the in-cluster service account or ~/.kube/config"
            raise PermanentError(
                f"cannot configure the Kubernetes client from {where}: {exc}"
            ) from exc
        cluster = cls(client.ApiClient(configuration), namespace, lease_namespace=lease_namespace)
        cluster._owns_client = True
        return cluster

    # -- calls ------------------------------------------------------------------------------

    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Call the client; turn whatever it raises into our errors.

        Any, not the client's annotation: with ``_preload_content=False`` it returns the raw
        urllib3 response whatever the method says.
        """
        kw.setdefault("_request_timeout", self.request_timeout)
        try:
            return fn(*args, **kw)
        except ApiException as exc:
            raise k8s_errors.from_status(
                exc.status, exc.body, verb, resource, self._where(resource)
            ) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(
                f"{verb} {resource} in namespace {self._where(resource)}: the API server cannot be "
                f"reached ({type(exc).__name__}: {exc}); will retry"
            ) from exc
        except (ValueError, TypeError) as exc:
            # The client validates bodies against its models before sending them.
            raise PermanentError(
                f"{verb} {resource}: the Kubernetes client refused the object: {exc}"
            ) from exc

    def _json(
        self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, **kw: Any
    ) -> Json:
        response = self._call(verb, resource, fn, *args, _preload_content=False, **kw)
        try:
            data = json.loads(response.data)
        except (ValueError, urllib3.exceptions.HTTPError, OSError) as exc:
            raise TransientError(f"{verb} {resource}: unreadable answer: {exc}") from exc
        if not isinstance(data, dict):
            raise TransientError(f"{verb} {resource}: the answer is not a JSON object")
        return data

    def _lister(self, kind: Kind) -> Callable[..., Any]:
        if kind == "Job":
            return functools.partial(
                self._batch.list_namespaced_job, self.namespace, label_selector=SELECTOR
            )
        if kind == "Pod":
            return functools.partial(
                self._core.list_namespaced_pod, self.namespace, label_selector=SELECTOR
            )
        if kind == "Event":
            return functools.partial(
                self._core.list_namespaced_event, self.namespace, field_selector=EVENT_FIELDS
            )
        # Kueue does not copy our labels onto Workloads: take them all, match by Job uid.
        return functools.partial(
            self._custom.list_namespaced_custom_object,
            KUEUE_GROUP,
            KUEUE_VERSION,
            self.namespace,
            WORKLOAD_PLURAL,
        )

    def _list(self, kind: Kind) -> Listing:
        """List every object of ``kind`` page by page; one consistent resourceVersion."""
        fn, resource = self._lister(kind), _RESOURCES[kind]

        def page(token: str | None) -> Json:
            return self._json("list", resource, fn, limit=self.page_size, _continue=token)

        return k8s_watch.paged(kind, page)

    def _stream(self, kind: Kind, resource_version: str) -> Iterator[Json]:
        """Open one bounded watch from ``resource_version``; yield its events until it ends."""
        resource = _RESOURCES[kind]
        response = self._call(
            "watch",
            resource,
            self._lister(kind),
            watch=True,
            resource_version=resource_version or None,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _preload_content=False,
            # The server ends the watch after timeout_seconds; the read timeout is the backstop.
            _request_timeout=(self.request_timeout, self.watch_seconds + self.request_timeout),
        )
        with self._lock:
            self._streams.add(response)
        try:
            if self._watches.stopped.is_set():
                return  # close() ran while this watch was opening; it did not see the stream
            yield from k8s_watch.json_lines(response.stream(amt=None, decode_content=True))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise TransientError(f"watch {resource}: the stream broke: {exc}") from exc
        finally:
            with self._lock:
                self._streams.discard(response)
            # Closed before release: a half-read stream must not go back to the pool.
            with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
                response.close()
                response.release_conn()

    # -- plain object calls -----------------------------------------------------------------

    def _api(self, resource: str, action: str) -> Callable[..., Any]:
        """Return the client method for ``action`` ("create", "read", ...) on ``resource``."""
        api, suffix = {
            JOBS: (self._batch, "namespaced_job"),
            CONFIGMAPS: (self._core, "namespaced_config_map"),
            LEASES: (self._coordination, "namespaced_lease"),
        }[resource]
        method: Callable[..., Any] = getattr(api, f"{action}_{suffix}")
        return method

    def _where(self, resource: str) -> str:
        return self.lease_namespace if resource == LEASES else self.namespace

    def _create(self, resource: str, body: Json) -> Json:
        # Posted as prepared JSON: the client's models would cost more than the call (k8s_raw).
        where = self._where(resource)
        return k8s_raw.create(self.api, resource, where, body, self.request_timeout)

    def _read(self, resource: str, name: str) -> Json:
        method = self._api(resource, "read")
        return self._json("get", resource, method, name, self._where(resource))

    def _replace(self, resource: str, name: str, body: Json) -> Json:
        method = self._api(resource, "replace")
        return self._json("update", resource, method, name, self._where(resource), body)

    def _delete(self, resource: str, name: str) -> bool:
        """Delete in the background (dependents follow); False if there was nothing to delete."""
        method = self._api(resource, "delete")
        body = {"propagationPolicy": "Background"}
        try:
            self._json("delete", resource, method, name, self.namespace, body=body)
        except k8s_errors.NotFound:
            return False
        return True

    # -- the protocol -----------------------------------------------------------------------

    def priority_class_exists(self, name: str) -> bool:
        """Tell whether the Kueue WorkloadPriorityClass ``name`` exists (cluster-scoped GET)."""
        try:
            self._json(
                "get",
                PRIORITY_CLASSES,
                self._custom.get_cluster_custom_object,
                KUEUE_GROUP,
                KUEUE_VERSION,
                "workloadpriorityclasses",
                name,
            )
        except k8s_errors.NotFound as exc:
            if f'"{name}" not found' in str(exc):
                return False
            raise
        return True

    def exists(self, task_id: str) -> bool:
        """Tell whether the task's Job, or a pod of the task, exists."""
        try:
            self._read(JOBS, jobspec.job_name(task_id))
            return True
        except k8s_errors.NotFound:
            return bool(self._task_pods(task_id, limit=1))

    def _task_pods(self, task_id: str, limit: int | None = None) -> list[Json]:
        selector, method = f"{SELECTOR},{TASK_ID}={task_id}", self._core.list_namespaced_pod
        page = self._json(
            "list", PODS, method, self.namespace, label_selector=selector, limit=limit
        )
        return list(page.get("items") or ())

    def snapshot(self) -> list[Observation]:
        """List our Jobs and Pods, their Workloads and Warning Events (matched by Job uid)."""
        # Queued changes are older than this listing; a standby watcher's pile-up goes too.
        self._watches.discard()
        listed = {kind: self._list(kind) for kind in k8s_watch.KINDS}
        # The watches, if they have not started yet, continue from this listing.
        self._watches.seed(listed)
        return self._index.snapshot({kind: found.items for kind, found in listed.items()})

    def watch(self, timeout: float) -> Iterator[Observation]:
        """Yield changes as they happen, for at most ``timeout`` seconds."""
        return self._watches.drain(timeout)

    def read_log(
        self,
        task_id: str,
        container: str,
        limit_bytes: int | None = None,
        *,
        pod: str | None = None,
    ) -> str:
        """Return a container's log in the pod ``pod``, else the task's newest, or ""."""
        name = pod
        if name is None:
            pods = self._task_pods(task_id)
            if not pods:
                return ""
            newest = max(
                pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or "")
            )
            name = str(newest["metadata"]["name"])
        try:
            response = self._call(
                "get",
                POD_LOGS,
                self._core.read_namespaced_pod_log,
                name,
                self.namespace,
                container=container,
                limit_bytes=limit_bytes,
                _preload_content=False,
            )
        except (k8s_errors.NotFound, k8s_errors.Invalid) as exc:
            # Gone, or the container has not started yet: there is no log to read.
            log.info("task %s: no log of %s in pod %s: %s", task_id, container, name, exc)
            return ""
        data: bytes = response.data
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        """Stop the watch threads and close their connections."""
        self._watches.stopped.set()
        with self._lock:
            streams = list(self._streams)
        for response in streams:
            # Unblocks a thread waiting in a read; it then sees the stop flag.
            shutdown = getattr(response, "shutdown", None) or response.close
            with contextlib.suppress(OSError, urllib3.exceptions.HTTPError):
                shutdown()
        self._watches.stop()
        if self._owns_client:
            close: Callable[[], None] = self.api.close
            close()
