"""The install: kustomize overlays, Kueue samples, example tasks and the Dockerfile.

Every overlay is rendered with `kubectl kustomize` and every object passes
`kubernetes-validate --strict`; Kueue objects (CRDs, which kubernetes-validate cannot see) are
checked against what their kueue.x-k8s.io/v1beta2 schema requires. On top of the schemas: RBAC is
least-privilege, every container has requests and limits and runs as non-root, task pods get no
service account token, and the NetworkPolicies keep task pods away from the control plane.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml

from app.models import TaskIn
from app.settings import DEFAULT_BACKEND_PARAMETERS, Settings
from tests.conftest import ROOT
from worker import jobspec

Json = dict[str, Any]

KUBECTL = shutil.which("kubectl")
NO_KUBECTL = (
    "kubectl is not on PATH, so the kustomizations cannot be rendered "
    "(install kubectl >= 1.27, which bundles kustomize v5)"
)

OVERLAYS = ("kustomize/base", "kustomize/overlays/dev", "kustomize/overlays/production")
KUEUE_SAMPLES = ("manifests/kueue", "tests/e2e/manifests")
#: The oldest Kubernetes with native sidecars on by default, and a current one.
K8S_VERSIONS = ("1.29.0", "1.37.0")

CONTROL_NS = "kueue-tes"
TASK_NS = "kueue-tes-tasks"
OUR_IMAGES = ("ghcr.io/kueue-tes/kueue-tes", "kueue-tes")
KUEUE_GROUP = "kueue.x-k8s.io"
KUEUE_VERSION = f"{KUEUE_GROUP}/v1beta2"

#: Settings the manifests set that app/settings.py does not define yet: the namespace of the
#: watcher's Lease and OIDC (design section 10). Remove a name once its field exists.
PENDING_SETTINGS = frozenset(
    {
        "KUEUE_TES_LEASE_NAMESPACE",
        "KUEUE_TES_OIDC_ISSUER",
        "KUEUE_TES_OIDC_AUDIENCE",
        "KUEUE_TES_OIDC_ADMIN_GROUP",
    }
)
#: Secrets the production operator creates (docs/install-production.md), not the overlay.
EXTERNAL_SECRETS = frozenset({"kueue-tes-mongodb", "kueue-tes-redis", "kueue-tes-storage"})

#: Everything the control plane may do, per namespace: (apiGroup, resource) -> verbs. Design
#: sections 7 and 11 and docs/kubernetes-backend.md: jobs and configmaps created and deleted in
#: the task namespace (a configmap left by an older Job of the same name is updated to point at
#: the current one), pods and their logs and Kueue Workloads read, Events listed and watched
#: (Kueue's Warnings about our Jobs), one Lease in the control plane's own namespace.
READ = frozenset({"get", "list", "watch"})
ALLOWED_RULES: dict[str, dict[tuple[str, str], frozenset[str]]] = {
    TASK_NS: {
        ("batch", "jobs"): READ | {"create", "delete"},
        ("", "configmaps"): READ | {"create", "delete", "update"},
        ("", "pods"): READ,
        ("", "pods/log"): frozenset({"get"}),
        (KUEUE_GROUP, "workloads"): READ,
        ("", "events"): frozenset({"list", "watch"}),
    },
    CONTROL_NS: {("coordination.k8s.io", "leases"): frozenset({"get", "create", "update"})},
}
#: Cluster-wide, the worker reads Kueue WorkloadPriorityClasses (cluster-scoped objects) to fail
#: a task whose class does not exist before its Job is created (issue 9, item 3). Nothing else.
CLUSTER = ""
ALLOWED_CLUSTER_RULES = {(KUEUE_GROUP, "workloadpriorityclasses"): frozenset({"get"})}
#: What each process does need, so that least privilege does not become too little.
NEEDED: dict[str, list[tuple[str, str, str, str]]] = {
    "kueue-tes-worker": [
        (TASK_NS, "batch", "jobs", "create"),
        (TASK_NS, "batch", "jobs", "delete"),
        (TASK_NS, "batch", "jobs", "get"),
        (TASK_NS, "", "configmaps", "create"),
        (TASK_NS, "", "configmaps", "delete"),
        (TASK_NS, "", "configmaps", "update"),
        (TASK_NS, "", "pods", "list"),
        (CLUSTER, KUEUE_GROUP, "workloadpriorityclasses", "get"),
    ],
    "kueue-tes-watcher": [
        (TASK_NS, "batch", "jobs", "watch"),
        (TASK_NS, "batch", "jobs", "delete"),
        (TASK_NS, "", "pods", "watch"),
        (TASK_NS, "", "pods/log", "get"),
        (TASK_NS, KUEUE_GROUP, "workloads", "watch"),
        (TASK_NS, "", "events", "list"),
        (TASK_NS, "", "events", "watch"),
        (CONTROL_NS, "coordination.k8s.io", "leases", "get"),
        (CONTROL_NS, "coordination.k8s.io", "leases", "create"),
        (CONTROL_NS, "coordination.k8s.io", "leases", "update"),
    ],
}


# -- rendering ------------------------------------------------------------------------------


@functools.cache
def render(directory: str) -> tuple[Json, ...]:
    """Return the objects `kubectl kustomize directory` prints; skip the test without kubectl."""
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    done = subprocess.run(
        [KUBECTL, "kustomize", str(ROOT / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize {directory} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(objects: tuple[Json, ...], kind: str) -> list[Json]:
    """Return the objects of one kind."""
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: tuple[Json, ...], kind: str, name: str, namespace: str | None = None) -> Json:
    """Return the one object of ``kind`` called ``name`` (in ``namespace``)."""
    found = [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"]["name"] == name
        and (namespace is None or obj["metadata"].get("namespace") == namespace)
    ]
    assert len(found) == 1, f"expected one {kind} {namespace}/{name}, found {len(found)}"
    return found[0]


def settings_data(objects: tuple[Json, ...]) -> dict[str, str]:
    """Return the data of the generated settings ConfigMap."""
    maps = [
        obj
        for obj in of_kind(objects, "ConfigMap")
        if obj["metadata"]["name"].startswith("kueue-tes-settings")
    ]
    assert len(maps) == 1, "expected exactly one kueue-tes-settings ConfigMap"
    return dict(maps[0]["data"])


def pod_templates(objects: tuple[Json, ...]) -> Iterator[tuple[Json, Json]]:
    """Yield (workload, pod spec) for every object that makes pods."""
    for obj in objects:
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield obj, obj["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield obj, obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif kind == "Pod":
            yield obj, obj["spec"]


def containers(pod: Json) -> list[Json]:
    """Return a pod spec's init and regular containers."""
    return [*pod.get("initContainers", ()), *pod["containers"]]


def ours(image: str) -> bool:
    """Tell whether an image is the kueue-tes image."""
    return image.rsplit(":", 1)[0] in OUR_IMAGES


def where(obj: Json, container: Json | None = None) -> str:
    """Name an object (and container) in a failure message."""
    meta = obj["metadata"]
    text = f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}"
    return f"{text} container {container['name']}" if container else text


# -- every overlay renders and validates ------------------------------------------------------


@pytest.mark.parametrize("directory", OVERLAYS + KUEUE_SAMPLES)
def test_renders_uniquely_named_objects(directory: str) -> None:
    """Each kustomization renders, and no two objects share kind, namespace and name."""
    objects = render(directory)
    assert objects
    seen: set[tuple[str, str, str]] = set()
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("directory", OVERLAYS)
def test_objects_pass_kubernetes_validate_strict(directory: str, version: str) -> None:
    """Every built-in object passes kubernetes-validate --strict (no unknown fields)."""
    problems = []
    for obj in render(directory):
        assert not obj["apiVersion"].startswith(KUEUE_GROUP), f"{where(obj)} belongs in manifests/"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(part) for part in exc.path)
            problems.append(f"{where(obj)} at {path or '.'}: {exc.message}")
    assert not problems, "\n".join(problems)


# -- Kueue objects: what kueue.x-k8s.io/v1beta2 requires ---------------------------------------

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^(\d+(\.\d*)?|\.\d+)([eE]\d+|[KMGTPE]i|[mkMGTPE])?$")
_TOP = frozenset({"apiVersion", "kind", "metadata", "spec"})
#: The v1beta2 fields this checker knows (kubernetes-sigs/kueue apis/kueue/v1beta2/*_types.go).
_FIELDS: dict[str, frozenset[str]] = {
    "ClusterQueue.spec": frozenset(
        {
            "resourceGroups",
            "cohortName",
            "queueingStrategy",
            "namespaceSelector",
            "flavorFungibility",
            "preemption",
            "admissionChecksStrategy",
            "stopPolicy",
            "fairSharing",
            "admissionScope",
        }
    ),
    "ResourceGroup": frozenset({"coveredResources", "flavors"}),
    "FlavorQuotas": frozenset({"name", "resources"}),
    "ResourceQuota": frozenset({"name", "nominalQuota", "borrowingLimit", "lendingLimit"}),
    "ClusterQueuePreemption": frozenset(
        {"reclaimWithinCohort", "borrowWithinCohort", "withinClusterQueue"}
    ),
    "BorrowWithinCohort": frozenset({"policy", "maxPriorityThreshold"}),
    "LocalQueue.spec": frozenset({"clusterQueue", "stopPolicy", "fairSharing"}),
    "ResourceFlavor.spec": frozenset({"nodeLabels", "nodeTaints", "tolerations", "topologyName"}),
    "Cohort.spec": frozenset({"parentName", "resourceGroups", "fairSharing"}),
}
#: v1beta1 names that v1beta2 renamed: a sample still using one is refused by the API server.
_RENAMED = {"ClusterQueue.spec": {"cohort": "cohortName"}, "Cohort.spec": {"parent": "parentName"}}
_ENUMS = {
    "queueingStrategy": {"StrictFIFO", "BestEffortFIFO"},
    "stopPolicy": {"None", "Hold", "HoldAndDrain"},
    "reclaimWithinCohort": {"Never", "LowerPriority", "Any"},
    "withinClusterQueue": {"Never", "LowerPriority", "LowerOrNewerEqualPriority"},
    "borrowWithinCohort.policy": {"Never", "LowerPriority"},
    "effect": {"NoSchedule", "PreferNoSchedule", "NoExecute"},
}


def _fields(problems: list[str], where_: str, kind: str, value: Any) -> Json:
    if not isinstance(value, dict):
        problems.append(f"{where_}: must be an object")
        return {}
    for old, new in _RENAMED.get(kind, {}).items():
        if old in value:
            problems.append(f"{where_}.{old}: v1beta1 field; v1beta2 calls it {new}")
    unknown = set(value) - _FIELDS[kind] - set(_RENAMED.get(kind, {}))
    if unknown:
        problems.append(f"{where_}: unknown fields {sorted(unknown)}")
    return value


def _quantity(problems: list[str], where_: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | str):
        problems.append(f"{where_}: {value!r} is not a quantity")
    elif isinstance(value, int):
        if value < 0:
            problems.append(f"{where_}: must not be negative")
    elif not _QUANTITY.match(value):
        problems.append(f"{where_}: {value!r} is not a non-negative quantity")


def _resource_groups(
    problems: list[str], where_: str, groups: Any, flavors: set[str], cohort: bool
) -> None:
    if not isinstance(groups, list) or not 1 <= len(groups) <= 16:
        problems.append(f"{where_}: 1 to 16 resource groups")
        return
    seen_resources: set[str] = set()
    seen_flavors: set[str] = set()
    for g, group in enumerate(groups):
        at = f"{where_}[{g}]"
        group = _fields(problems, at, "ResourceGroup", group)
        covered = group.get("coveredResources")
        if not isinstance(covered, list) or not 1 <= len(covered) <= 64:
            problems.append(f"{at}.coveredResources: required, 1 to 64 resources")
            covered = []
        for name in covered:
            if name in seen_resources:
                problems.append(f"{at}.coveredResources: {name} is in two resource groups")
            seen_resources.add(name)
        quotas = group.get("flavors")
        if not isinstance(quotas, list) or not 1 <= len(quotas) <= 64:
            problems.append(f"{at}.flavors: required, 1 to 64 flavors")
            quotas = []
        for f, quota in enumerate(quotas):
            fat = f"{at}.flavors[{f}]"
            quota = _fields(problems, fat, "FlavorQuotas", quota)
            name = quota.get("name")
            if name not in flavors:
                problems.append(f"{fat}.name: no ResourceFlavor {name!r}")
            if name in seen_flavors:
                problems.append(f"{fat}.name: {name} is in two resource groups")
            seen_flavors.add(name)
            resources = quota.get("resources") or []
            names = [r.get("name") for r in resources if isinstance(r, dict)]
            if names != covered:
                problems.append(f"{fat}.resources: must list {covered} in that order, not {names}")
            for r, resource in enumerate(resources):
                rat = f"{fat}.resources[{r}]"
                resource = _fields(problems, rat, "ResourceQuota", resource)
                if "nominalQuota" not in resource:
                    problems.append(f"{rat}.nominalQuota: required")
                for key in ("nominalQuota", "borrowingLimit", "lendingLimit"):
                    if key in resource:
                        _quantity(problems, f"{rat}.{key}", resource[key])
                for key in ("borrowingLimit", "lendingLimit"):
                    if key in resource and not cohort:
                        problems.append(f"{rat}.{key}: only with spec.cohortName")


def _selects(selector: Json | None, labels: dict[str, str]) -> bool:
    """Tell whether a LabelSelector matches ``labels`` (None matches nothing)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def kueue_problems(objects: list[Json], task_ns: Json) -> list[str]:
    """Return what the v1beta2 schema and webhooks would refuse in these Kueue objects."""
    problems: list[str] = []
    flavors = {o["metadata"]["name"] for o in objects if o["kind"] == "ResourceFlavor"}
    queues = {o["metadata"]["name"] for o in objects if o["kind"] == "ClusterQueue"}
    ns_labels = {**task_ns["metadata"].get("labels", {})}
    ns_labels["kubernetes.io/metadata.name"] = task_ns["metadata"]["name"]
    for obj in objects:
        kind, meta = obj["kind"], obj.get("metadata") or {}
        at = f"{kind} {meta.get('name')}"
        if obj["apiVersion"] != KUEUE_VERSION:
            problems.append(f"{at}: apiVersion {obj['apiVersion']}, want {KUEUE_VERSION}")
        if not _DNS1123.match(str(meta.get("name", ""))):
            problems.append(f"{at}: metadata.name must be a DNS-1123 subdomain")
        top = _TOP | ({"value", "description"} if kind == "WorkloadPriorityClass" else set())
        if set(obj) - top:
            problems.append(f"{at}: unknown top-level fields {sorted(set(obj) - top)}")
        spec = obj.get("spec") or {}
        if kind == "ClusterQueue":
            spec = _fields(problems, f"{at} spec", "ClusterQueue.spec", spec)
            cohort = spec.get("cohortName")
            if cohort is not None and not _DNS1123.match(cohort):
                problems.append(f"{at} spec.cohortName: must be a DNS-1123 subdomain")
            _resource_groups(
                problems,
                f"{at} spec.resourceGroups",
                spec.get("resourceGroups"),
                flavors,
                bool(cohort),
            )
            if spec.get("queueingStrategy", "BestEffortFIFO") not in _ENUMS["queueingStrategy"]:
                problems.append(f"{at} spec.queueingStrategy: not one of the enum")
            # Without a namespaceSelector a ClusterQueue admits from no namespace at all.
            if not _selects(spec.get("namespaceSelector"), ns_labels):
                problems.append(f"{at} spec.namespaceSelector: does not select {TASK_NS}")
            preemption = _fields(
                problems,
                f"{at} spec.preemption",
                "ClusterQueuePreemption",
                spec.get("preemption", {}),
            )
            reclaim = preemption.get("reclaimWithinCohort", "Never")
            within = preemption.get("withinClusterQueue", "Never")
            borrow = _fields(
                problems,
                f"{at} spec.preemption.borrowWithinCohort",
                "BorrowWithinCohort",
                preemption.get("borrowWithinCohort", {}),
            )
            if reclaim not in _ENUMS["reclaimWithinCohort"]:
                problems.append(f"{at} spec.preemption.reclaimWithinCohort: {reclaim!r}")
            if within not in _ENUMS["withinClusterQueue"]:
                problems.append(f"{at} spec.preemption.withinClusterQueue: {within!r}")
            policy = borrow.get("policy", "Never")
            if policy not in _ENUMS["borrowWithinCohort.policy"]:
                problems.append(f"{at} spec.preemption.borrowWithinCohort.policy: {policy!r}")
            if reclaim == "Never" and policy != "Never":
                problems.append(f"{at}: borrowWithinCohort needs reclaimWithinCohort != Never")
        elif kind == "LocalQueue":
            spec = _fields(problems, f"{at} spec", "LocalQueue.spec", spec)
            if meta.get("namespace") != TASK_NS:
                problems.append(f"{at}: must live in the task namespace {TASK_NS}")
            if spec.get("clusterQueue") not in queues:
                problems.append(
                    f"{at} spec.clusterQueue: no ClusterQueue {spec.get('clusterQueue')}"
                )
        elif kind == "ResourceFlavor":
            spec = _fields(problems, f"{at} spec", "ResourceFlavor.spec", spec)
            if len(spec.get("nodeLabels") or {}) > 8:
                problems.append(f"{at} spec.nodeLabels: at most 8")
            for key in ("nodeTaints", "tolerations"):
                items = spec.get(key) or []
                if len(items) > 8:
                    problems.append(f"{at} spec.{key}: at most 8")
                for item in items:
                    if item.get("effect", "NoSchedule") not in _ENUMS["effect"]:
                        problems.append(f"{at} spec.{key}: effect {item.get('effect')!r}")
                    if key == "nodeTaints" and not {"key", "effect"} <= set(item):
                        problems.append(f"{at} spec.nodeTaints: key and effect are required")
                    if (
                        key == "tolerations"
                        and "key" not in item
                        and item.get("operator") != ("Exists")
                    ):
                        problems.append(f"{at} spec.tolerations: no key needs operator Exists")
        elif kind == "WorkloadPriorityClass":
            value = obj.get("value")
            if not isinstance(value, int) or isinstance(value, bool):
                problems.append(f"{at} value: required integer")
            elif not -(2**31) <= value < 2**31:
                problems.append(f"{at} value: out of int32 range")
            if len(str(obj.get("description", ""))) > 2048:
                problems.append(f"{at} description: at most 2048 characters")
        elif kind == "Cohort":
            spec = _fields(problems, f"{at} spec", "Cohort.spec", spec)
            if "resourceGroups" in spec:
                groups = spec["resourceGroups"]
                _resource_groups(problems, f"{at} spec.resourceGroups", groups, flavors, True)
        else:
            problems.append(f"{at}: not a kind this checker knows")
    return problems


def kueue_objects() -> list[Json]:
    """Return the Kueue objects of manifests/kueue and the e2e queue, together."""
    return [obj for directory in KUEUE_SAMPLES for obj in render(directory)]


def test_kueue_samples_meet_the_v1beta2_schema() -> None:
    """ResourceFlavors, ClusterQueues, the cohort, LocalQueues and priorities are valid v1beta2."""
    objects = kueue_objects()
    task_ns = named(render("kustomize/base"), "Namespace", TASK_NS)
    assert not kueue_problems(objects, task_ns), "\n".join(kueue_problems(objects, task_ns))
    kinds = {obj["kind"] for obj in render("manifests/kueue")}
    assert kinds == {
        "ResourceFlavor",
        "ClusterQueue",
        "Cohort",
        "LocalQueue",
        "WorkloadPriorityClass",
    }
    flavors = {o["metadata"]["name"] for o in of_kind(render("manifests/kueue"), "ResourceFlavor")}
    assert {"default-flavor", "spot", "gpu"} <= flavors
    teams = [
        cq
        for cq in of_kind(render("manifests/kueue"), "ClusterQueue")
        if cq["spec"].get("cohortName")
    ]
    assert len(teams) >= 2 and len({cq["spec"]["cohortName"] for cq in teams}) == 1
    covered = {
        resource
        for cq in of_kind(render("manifests/kueue"), "ClusterQueue")
        for group in cq["spec"]["resourceGroups"]
        for resource in group["coveredResources"]
    }
    assert {"cpu", "memory", "nvidia.com/gpu"} <= covered


@pytest.mark.parametrize(
    ("patch", "complaint"),
    [
        (lambda cq: cq["spec"].update(cohort=cq["spec"].pop("cohortName")), "calls it cohortName"),
        (lambda cq: cq["spec"]["resourceGroups"][0].pop("coveredResources"), "coveredResources"),
        (
            lambda cq: cq["spec"]["resourceGroups"][0]["flavors"][0]["resources"][0].pop(
                "nominalQuota"
            ),
            "nominalQuota: required",
        ),
        (lambda cq: cq["spec"].pop("namespaceSelector"), "does not select"),
        (lambda cq: cq["spec"]["resourceGroups"][0]["flavors"][0].update(name="nope"), "nope"),
        (lambda cq: cq["spec"].update(cohortNmae="x"), "unknown fields"),
        (lambda cq: cq.update(apiVersion="kueue.x-k8s.io/v1beta1"), "want kueue.x-k8s.io/v1beta2"),
    ],
)
def test_kueue_checker_catches_mistakes(patch: Any, complaint: str) -> None:
    """The checker is not a rubber stamp: each broken sample is refused with a reason."""
    objects = json.loads(json.dumps(kueue_objects()))
    team = next(o for o in objects if o["kind"] == "ClusterQueue" and o["spec"].get("cohortName"))
    patch(team)
    task_ns = named(render("kustomize/base"), "Namespace", TASK_NS)
    assert any(complaint in problem for problem in kueue_problems(objects, task_ns))


# -- RBAC -----------------------------------------------------------------------------------


@pytest.mark.parametrize("directory", OVERLAYS)
def test_rbac_is_least_privilege(directory: str) -> None:
    """No wildcard, no verb beyond the design's table (cluster-wide: one read), none for tasks."""
    objects = render(directory)
    roles = {
        (r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(objects, "Role")
    }
    roles.update({(CLUSTER, r["metadata"]["name"]): r for r in of_kind(objects, "ClusterRole")})
    problems = []
    for (namespace, name), role in roles.items():
        allowed = ALLOWED_RULES.get(namespace) if namespace else ALLOWED_CLUSTER_RULES
        if allowed is None:
            problems.append(f"Role {namespace}/{name}: no Role belongs in {namespace}")
            continue
        for rule in role["rules"]:
            fields = [*rule.get("apiGroups", ()), *rule["resources"], *rule["verbs"]]
            fields += rule.get("resourceNames", [])
            if any("*" in field for field in fields):
                problems.append(f"Role {namespace}/{name}: wildcard in {rule}")
            for group in rule.get("apiGroups", ()):
                for resource in rule["resources"]:
                    extra = set(rule["verbs"]) - allowed.get((group, resource), frozenset())
                    if extra:
                        problems.append(
                            f"Role {namespace}/{name}: {sorted(extra)} on {group or 'core'}/"
                            f"{resource} is more than the design needs"
                        )
    assert not problems, "\n".join(problems)

    granted: dict[str, set[tuple[str, str, str, str]]] = {}
    for binding in [*of_kind(objects, "RoleBinding"), *of_kind(objects, "ClusterRoleBinding")]:
        namespace = binding["metadata"].get("namespace", CLUSTER)
        ref = binding["roleRef"]
        kind = "Role" if namespace else "ClusterRole"
        assert ref["kind"] == kind, f"{where(binding)} must bind a {kind}"
        role = roles[(namespace, ref["name"])]
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount", f"{where(binding)}: {subject}"
            assert subject["namespace"] == CONTROL_NS, f"{where(binding)} grants to {subject}"
            for rule in role["rules"]:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.setdefault(subject["name"], set()).add(
                                (namespace, group, resource, verb)
                            )
    assert set(granted) == set(NEEDED), "only the worker and the watcher hold Kubernetes rights"
    for account, needs in NEEDED.items():
        missing = [need for need in needs if need not in granted[account]]
        assert not missing, f"{account} cannot do what it must: {missing}"


# -- pods: resources, non-root, no tokens where none is needed --------------------------------


@pytest.mark.parametrize("directory", OVERLAYS)
def test_every_container_is_bounded_and_unprivileged(directory: str) -> None:
    """Requests and limits everywhere; non-root, no escalation, no capabilities, RuntimeDefault."""
    problems = []
    for obj, pod in pod_templates(render(directory)):
        pod_sc = pod.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                problems.append(f"{where(obj)}: {flag}")
        problems += [
            f"{where(obj)}: hostPath volume {v['name']}"
            for v in pod.get("volumes", ())
            if "hostPath" in v
        ]
        for container in containers(pod):
            at = where(obj, container)
            resources = container.get("resources") or {}
            for part in ("requests", "limits"):
                for name in ("cpu", "memory"):
                    if name not in (resources.get(part) or {}):
                        problems.append(f"{at}: no {name} in resources.{part}")
            sc = container.get("securityContext") or {}
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                problems.append(f"{at}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
                problems.append(f"{at}: runAsUser 0")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{at}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                problems.append(f"{at}: privileged")
            caps = sc.get("capabilities") or {}
            if "ALL" not in (caps.get("drop") or ()) or caps.get("add"):
                problems.append(f"{at}: capabilities must drop ALL and add none")
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                problems.append(f"{at}: seccompProfile is {seccomp}, not RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{at}: root file system is writable")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_only_pods_with_rbac_get_a_token(directory: str) -> None:
    """A pod whose service account has no RoleBinding must not mount a token."""
    objects = render(directory)
    bound = {
        (s["namespace"], s["name"]) for b in of_kind(objects, "RoleBinding") for s in b["subjects"]
    }
    accounts = {
        (a["metadata"]["namespace"], a["metadata"]["name"]): a
        for a in of_kind(objects, "ServiceAccount")
    }
    for obj, pod in pod_templates(objects):
        key = (obj["metadata"]["namespace"], pod.get("serviceAccountName", "default"))
        assert key in accounts, f"{where(obj)}: service account {key} is not part of the install"
        if key not in bound:
            assert pod.get("automountServiceAccountToken") is False, f"{where(obj)} mounts a token"


def _task_doc(path: Path) -> Json:
    doc = TaskIn.model_validate(json.loads(path.read_text())).model_dump(
        mode="json", exclude_none=True
    )
    return {**doc, "id": "01jb00000000000000000000aa", "state": "QUEUED"}


def _dev_settings() -> Settings:
    data = settings_data(render("kustomize/overlays/dev"))
    fields = {key.removeprefix("KUEUE_TES_").lower(): value for key, value in data.items()}
    return Settings(**fields)


@pytest.mark.parametrize("directory", OVERLAYS)
def test_task_pods_cannot_mount_a_service_account_token(directory: str) -> None:
    """The task service account has no token and no binding; the task pod asks for none."""
    objects = render(directory)
    data = settings_data(objects)
    account = named(objects, "ServiceAccount", data["KUEUE_TES_TASK_SERVICE_ACCOUNT"], TASK_NS)
    assert account.get("automountServiceAccountToken") is False
    assert data["KUEUE_TES_NAMESPACE"] == TASK_NS
    for binding in of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert subject.get("namespace") != TASK_NS, f"{where(binding)} grants to a task pod"
            assert not subject["name"].startswith("system:serviceaccounts"), where(binding)

    settings = _dev_settings()
    for example in sorted((ROOT / "manifests" / "examples").glob("*.json")):
        job = jobspec.build_job(_task_doc(example), settings)
        pod = job["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, example.name
        assert pod["serviceAccountName"] == account["metadata"]["name"], example.name
        for volume in pod.get("volumes", ()):
            sources = (volume.get("projected") or {}).get("sources") or ()
            assert not any("serviceAccountToken" in s for s in sources), example.name


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_task_objects_validate_and_use_the_install(version: str) -> None:
    """What the worker creates from each example task, with the dev settings, is valid and lands
    in the task namespace on a LocalQueue of the samples."""
    settings = _dev_settings()
    local_queues = {o["metadata"]["name"] for o in of_kind(tuple(kueue_objects()), "LocalQueue")}
    for example in sorted((ROOT / "manifests" / "examples").glob("*.json")):
        doc = _task_doc(example)
        configmap = jobspec.build_configmap(doc, settings)
        job = jobspec.build_job(doc, settings)
        for obj in (configmap, job):
            kubernetes_validate.validate(obj, version, strict=True)
            assert obj["metadata"]["namespace"] == TASK_NS
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] in local_queues
        images = {c["image"] for c in containers(job["spec"]["template"]["spec"])}
        assert settings.image in images


def test_our_containers_in_task_pods_are_unprivileged() -> None:
    """setup, sequencer and finish run like the control plane: non-root, read-only, no caps."""
    job = jobspec.build_job(_task_doc(ROOT / "manifests/examples/hello.json"), _dev_settings())
    pod = job["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext") or {}
    for container in containers(pod):
        if not ours(container["image"]):
            continue
        sc = container.get("securityContext") or {}
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, container["name"]
        assert sc.get("readOnlyRootFilesystem") is True, container["name"]
        assert sc.get("allowPrivilegeEscalation") is False, container["name"]
        assert "ALL" in (sc.get("capabilities") or {}).get("drop", ()), container["name"]


# -- network policies ---------------------------------------------------------------------------


def _ns_labels(objects: tuple[Json, ...], namespace: str) -> dict[str, str]:
    labels = {"kubernetes.io/metadata.name": namespace}
    for ns in of_kind(objects, "Namespace"):
        if ns["metadata"]["name"] == namespace:
            labels.update(ns["metadata"].get("labels") or {})
    return labels


def _port_matches(
    ports: list[Json] | None, port: int, protocol: str, names: dict[str, int]
) -> bool:
    if not ports:
        return True
    for item in ports:
        wanted = item.get("port")
        number = names.get(wanted) if isinstance(wanted, str) else wanted
        end = item.get("endPort", number)
        if item.get("protocol", "TCP") == protocol and (
            wanted is None or (number is not None and number <= port <= end)
        ):
            return True
    return False


def _peer_matches(
    peer: Json, policy_ns: str, src_ns: str, src_ns_labels: dict[str, str], src: dict[str, str]
) -> bool:
    if "ipBlock" in peer:
        # CNIs differ on whether ipBlocks apply to pod addresses (Calico: yes, Cilium: no):
        # count them as matching pods, so that no rule here relies on the difference.
        return True
    pod_ok = "podSelector" not in peer or _selects(peer["podSelector"], src)
    if "namespaceSelector" in peer:
        return pod_ok and _selects(peer["namespaceSelector"], src_ns_labels)
    return pod_ok and src_ns == policy_ns


def ingress_allowed(
    objects: tuple[Json, ...],
    src: tuple[str, dict[str, str]],
    dst: tuple[str, dict[str, str], dict[str, int]],
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Tell whether NetworkPolicies let a pod ``src`` (namespace, labels) reach ``dst``
    (namespace, labels, named ports) on ``port``."""
    src_ns, src_labels = src
    dst_ns, dst_labels, names = dst
    applicable = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["metadata"]["namespace"] == dst_ns
        and _selects(p["spec"]["podSelector"], dst_labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not applicable:
        return True
    src_ns_labels = _ns_labels(objects, src_ns)
    for policy in applicable:
        for rule in policy["spec"].get("ingress") or ():
            peers = rule.get("from") or [{}]
            if any(
                _peer_matches(peer, dst_ns, src_ns, src_ns_labels, src_labels) for peer in peers
            ) and _port_matches(rule.get("ports"), port, protocol, names):
                return True
    return False


def egress_allowed(
    objects: tuple[Json, ...],
    src: tuple[str, dict[str, str]],
    dst: str | tuple[str, dict[str, str]],
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Tell whether NetworkPolicies let pod ``src`` send to ``dst``: an IP address outside the
    cluster, or a pod (namespace, labels)."""
    src_ns, src_labels = src
    applicable = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if p["metadata"]["namespace"] == src_ns
        and _selects(p["spec"]["podSelector"], src_labels)
        and "Egress" in p["spec"].get("policyTypes", ())
    ]
    if not applicable:
        return True
    for policy in applicable:
        for rule in policy["spec"].get("egress") or ():
            if not _port_matches(rule.get("ports"), port, protocol, {}):
                continue
            for peer in rule.get("to") or [{}]:
                if isinstance(dst, str):
                    block = peer.get("ipBlock")
                    if not peer or (block and _in_block(dst, block)):
                        return True
                elif "ipBlock" not in peer and _peer_matches(
                    peer, src_ns, dst[0], _ns_labels(objects, dst[0]), dst[1]
                ):
                    return True
    return False


def _in_block(address: str, block: Json) -> bool:
    ip = ipaddress.ip_address(address)
    cidr = ipaddress.ip_network(block["cidr"])
    if ip.version != cidr.version or ip not in cidr:
        return False
    return not any(
        ip in ipaddress.ip_network(item)
        for item in block.get("except") or ()
        if ipaddress.ip_network(item).version == ip.version
    )


def _pod(objects: tuple[Json, ...], component: str) -> tuple[str, dict[str, str], dict[str, int]]:
    for obj, pod in pod_templates(objects):
        labels = obj["spec"]["template"]["metadata"]["labels"]
        if (
            obj["metadata"]["namespace"] == CONTROL_NS
            and labels.get("app.kubernetes.io/component") == component
        ):
            names = {
                p["name"]: p["containerPort"]
                for c in pod["containers"]
                for p in c.get("ports", ())
                if "name" in p
            }
            return CONTROL_NS, labels, names
    raise LookupError(component)


TASK_POD = (TASK_NS, {"app.kubernetes.io/managed-by": "kueue-tes", "kueue-tes/task-id": "x"})
ELSEWHERE = ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
KUBE_DNS = ("kube-system", {"k8s-app": "kube-dns"})


@pytest.mark.parametrize("directory", OVERLAYS)
def test_network_policies_fence_task_pods_off_the_control_plane(directory: str) -> None:
    """Task pods reach DNS and the internet, not the control plane nor cloud metadata; only the
    API is reachable from other namespaces; the control plane's pods reach each other."""
    objects = render(directory)
    api = _pod(objects, "api")
    components = {
        obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        for obj, _ in pod_templates(objects)
        if obj["metadata"]["namespace"] == CONTROL_NS
    }
    for component in sorted(components):
        dst = _pod(objects, component)
        for port in (*dst[2].values(), 8000, 8080):
            assert not ingress_allowed(objects, TASK_POD, dst, port), (component, port)
        others = ingress_allowed(objects, ELSEWHERE, dst, 8000)
        assert others == (component == "api"), f"{component} from other namespaces: {others}"
        assert ingress_allowed(objects, (CONTROL_NS, _pod(objects, "worker")[1]), dst, 6379)
    assert not ingress_allowed(objects, ELSEWHERE, api, 9090)
    assert not ingress_allowed(objects, (CONTROL_NS, api[1]), (*TASK_POD, {}), 8080)

    assert egress_allowed(objects, TASK_POD, KUBE_DNS, 53, "UDP")
    assert egress_allowed(objects, TASK_POD, KUBE_DNS, 53, "TCP")
    for address in ("8.8.8.8", "52.216.0.1", "2600:1f18::1"):
        assert egress_allowed(objects, TASK_POD, address, 443), address
    for address in ("169.254.169.254", "fd00:ec2::254"):
        for port in (80, 443):
            assert not egress_allowed(objects, TASK_POD, address, port), address


# -- workloads, services, settings --------------------------------------------------------------


@pytest.mark.parametrize("directory", OVERLAYS)
def test_control_plane_shape(directory: str) -> None:
    """API, worker and watcher run the right commands; the API is probed on service-info on the
    port the settings name; PDBs and Services select real pods."""
    objects = render(directory)
    data = settings_data(objects)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    commands = {
        "kueue-tes-api": ["kueue-tes", "api"],
        "kueue-tes-worker": ["kueue-tes", "worker"],
        "kueue-tes-watcher": ["kueue-tes", "watch"],
    }
    for name, command in commands.items():
        pod = deployments[name]["spec"]["template"]["spec"]
        # Service links would inject KUEUE_TES_*_PORT variables for our Services, which Settings
        # would read (a Service named kueue-tes would set KUEUE_TES_PORT=tcp://...).
        assert pod.get("enableServiceLinks") is False, name
        assert pod["containers"][0]["command"] == command
        env = {e["name"] for e in pod["containers"][0].get("env", ())}
        assert {"KUEUE_TES_REDIS_URL", "KUEUE_TES_MONGO_URI"} <= env, name
    api = deployments["kueue-tes-api"]["spec"]["template"]["spec"]["containers"][0]
    assert data["KUEUE_TES_HOST"] == "0.0.0.0"
    assert api["ports"][0]["containerPort"] == int(data["KUEUE_TES_PORT"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["path"] == "/ga4gh/tes/v1/service-info"
        assert api[probe]["httpGet"]["port"] in ("http", int(data["KUEUE_TES_PORT"]))
    watcher = deployments["kueue-tes-watcher"]
    env = {e["name"] for e in watcher["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {"KUEUE_TES_LEASE_NAME", "KUEUE_TES_LEASE_NAMESPACE"} <= env

    templates = [
        (obj["metadata"]["namespace"], obj["spec"]["template"]["metadata"]["labels"], pod)
        for obj, pod in pod_templates(objects)
    ]
    for pdb in of_kind(objects, "PodDisruptionBudget"):
        hits = [
            t
            for t in templates
            if t[0] == pdb["metadata"]["namespace"] and _selects(pdb["spec"]["selector"], t[1])
        ]
        assert len(hits) == 1, f"{where(pdb)} selects {len(hits)} workloads"
    covered = {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")}
    assert set(commands) <= covered
    for service in of_kind(objects, "Service"):
        hits = [
            t
            for t in templates
            if t[0] == service["metadata"]["namespace"]
            and _selects({"matchLabels": service["spec"]["selector"]}, t[1])
        ]
        assert len(hits) == 1, f"{where(service)} selects {len(hits)} workloads"
        ports = {p.get("name") for c in hits[0][2]["containers"] for p in c.get("ports", ())}
        ports |= {p["containerPort"] for c in hits[0][2]["containers"] for p in c.get("ports", ())}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{where(service)}: no {port['targetPort']}"


@pytest.mark.parametrize("directory", OVERLAYS)
def test_settings_are_real_and_consistent(directory: str) -> None:
    """Every KUEUE_TES_* name is a setting; the task image is the image the Deployments run;
    referenced ConfigMaps, Secrets and the default LocalQueue exist."""
    objects = render(directory)
    data = settings_data(objects)
    known = {f"KUEUE_TES_{name.upper()}" for name in Settings.model_fields}
    names = set(data)
    for _, pod in pod_templates(objects):
        for container in containers(pod):
            names |= {e["name"] for e in container.get("env", ()) if e["name"].startswith("KUEUE")}
    unknown = names - known - PENDING_SETTINGS
    assert not unknown, f"not settings (typos?): {sorted(unknown)}"

    images = {
        c["image"] for _, pod in pod_templates(objects) for c in containers(pod) if ours(c["image"])
    }
    assert images == {data["KUEUE_TES_IMAGE"]}, "task pods must run the control plane's image"
    local_queues = {o["metadata"]["name"] for o in of_kind(tuple(kueue_objects()), "LocalQueue")}
    assert data["KUEUE_TES_DEFAULT_QUEUE"] in local_queues

    present = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    external = EXTERNAL_SECRETS if directory.endswith("production") else frozenset()
    for obj, pod in pod_templates(objects):
        namespace = obj["metadata"]["namespace"]
        for container in containers(pod):
            refs = [
                ("ConfigMap", e["configMapRef"]["name"])
                for e in container.get("envFrom", ())
                if "configMapRef" in e
            ]
            refs += [
                ("Secret", e["valueFrom"]["secretKeyRef"]["name"])
                for e in container.get("env", ())
                if "secretKeyRef" in (e.get("valueFrom") or {})
            ]
            for kind, name in refs:
                if kind == "Secret" and name in external:
                    continue
                assert (kind, namespace, name) in present, f"{where(obj, container)}: no {name}"
    secret = data.get("KUEUE_TES_STORAGE_SECRET")
    if secret and secret not in external:
        assert ("Secret", TASK_NS, secret) in present, "the storage Secret is in the task namespace"


def test_base_runs_two_watchers_and_everything_self_contained() -> None:
    """Base: the watcher is two replicas (one elected); Redis and MongoDB keep data on PVCs."""
    objects = render("kustomize/base")
    assert named(objects, "Deployment", "kueue-tes-watcher")["spec"]["replicas"] == 2
    for name in ("kueue-tes-redis", "kueue-tes-mongodb"):
        statefulset = named(objects, "StatefulSet", name, CONTROL_NS)
        assert statefulset["spec"]["volumeClaimTemplates"]
        named(objects, "Service", name, CONTROL_NS)
    for name in ("kueue-tes", TASK_NS):
        named(objects, "Namespace", name)


def test_dev_overlay_is_for_kind() -> None:
    """Dev: the locally built image, one replica each, an S3 server the settings point at."""
    objects = render("kustomize/overlays/dev")
    data = settings_data(objects)
    assert data["KUEUE_TES_IMAGE"] == "kueue-tes:dev"
    for deployment in of_kind(objects, "Deployment"):
        assert deployment["spec"].get("replicas", 1) == 1, where(deployment)
    endpoint = urlparse(data["KUEUE_TES_S3_ENDPOINT_URL"])
    service, namespace = endpoint.hostname.split(".")[:2]  # type: ignore[union-attr]
    s3 = named(objects, "Service", service, namespace)
    assert endpoint.port in {p["port"] for p in s3["spec"]["ports"]}
    assert egress_allowed(objects, TASK_POD, (namespace, {"app.kubernetes.io/name": "s3"}), 5000)
    settings = _dev_settings()
    assert settings.storage_secret == "kueue-tes-storage" and settings.s3_path_style


def test_production_overlay_uses_external_backends() -> None:
    """Production: no in-cluster Redis or MongoDB, URIs from Secrets, an HPA, OIDC placeholders."""
    objects = render("kustomize/overlays/production")
    assert not of_kind(objects, "StatefulSet")
    assert {s["metadata"]["name"] for s in of_kind(objects, "Secret")}.isdisjoint(EXTERNAL_SECRETS)
    replicas = {
        d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(objects, "Deployment")
    }
    assert replicas["kueue-tes-api"] >= 2 and replicas["kueue-tes-worker"] >= 2
    assert replicas["kueue-tes-watcher"] == 2
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "kueue-tes-api")
    assert hpa["spec"]["minReplicas"] >= 2
    data = settings_data(objects)
    assert data["KUEUE_TES_AUTH"] == "oidc"
    assert data["KUEUE_TES_OIDC_ISSUER"].startswith("https://")
    assert not data["KUEUE_TES_IMAGE"].endswith(":latest")
    doc = (ROOT / "docs" / "install-production.md").read_text()
    for secret in EXTERNAL_SECRETS:
        assert secret in doc, f"docs/install-production.md must say how to create {secret}"


# -- example tasks, Dockerfile, docs -------------------------------------------------------------


def test_example_tasks_are_valid_and_name_real_queues() -> None:
    """manifests/examples/*.json are TES tasks whose queues and priorities the samples define."""
    kueue = tuple(kueue_objects())
    queues = {o["metadata"]["name"] for o in of_kind(kueue, "LocalQueue")}
    priorities = {o["metadata"]["name"] for o in of_kind(kueue, "WorkloadPriorityClass")}
    examples = sorted((ROOT / "manifests" / "examples").glob("*.json"))
    assert len(examples) >= 4
    for example in examples:
        task = TaskIn.model_validate(json.loads(example.read_text()))
        params = (task.resources.backend_parameters or {}) if task.resources else {}
        assert set(params) <= set(DEFAULT_BACKEND_PARAMETERS), example.name
        assert params.get("queue", "tes") in queues, example.name
        assert params.get("priority_class", "tes-low") in priorities, example.name


def _stages(dockerfile: str) -> list[list[str]]:
    lines = re.sub(r"\\\n", " ", dockerfile).splitlines()
    stages: list[list[str]] = []
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(stripped)
    return stages


def test_dockerfile_final_stage_is_slim_non_root_and_labelled() -> None:
    """One image, slim base, static busybox at /bin/busybox, numeric non-root user, labels, and no
    build tools in the final stage; the build context holds only what the build copies."""
    text = (ROOT / "Dockerfile").read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "a build stage and a final stage"
    final = stages[-1]
    assert re.match(r"FROM python:\$\{PYTHON_VERSION\}-slim", final[0]), final[0]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric (runAsNonRoot checks it), not 0"
    assert any(line.startswith("COPY --from=") and line.endswith(" /bin/busybox") for line in final)
    assert "busybox-static" in text and "ldd" in text, "busybox must be the static build"
    labels = " ".join(line for line in final if line.upper().startswith("LABEL "))
    for key in ("title", "source", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    final_text = "\n".join(final)
    for tool in ("gcc", "build-essential", "apt-get install", "pip install"):
        assert tool not in final_text, f"{tool} in the final stage"
    assert "PATH=/opt/kueue-tes/bin" in final_text, "python3 and kueue-tes from the venv"

    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, ".dockerignore starts from nothing"
    for stage in stages:
        for line in stage:
            if line.startswith("COPY ") and "--from=" not in line:
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                    assert f"!{source.rstrip('/')}" in ignored, f"{source} is not in the context"


_MY_DOCS = (
    "install-kind.md",
    "install-production.md",
    "queues.md",
    "troubleshooting.md",
    "upgrade.md",
)


@pytest.mark.parametrize("name", _MY_DOCS)
def test_install_docs_name_files_that_exist(name: str) -> None:
    """Paths the install docs name (kustomize/..., manifests/..., tests/..., docs/...) exist."""
    text = (ROOT / "docs" / name).read_text()
    paths = set(re.findall(r"(?<![\w/.-])((?:kustomize|manifests|tests|docs)/[\w./-]*\w)", text))
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert not missing, f"docs/{name} names missing files: {missing}"


def test_kind_guide_covers_the_whole_way() -> None:
    """docs/install-kind.md goes from nothing to a task that completes."""
    text = (ROOT / "docs" / "install-kind.md").read_text()
    for step in (
        "kind create cluster",
        "kueue/releases/download/",
        "docker build",
        "kind load docker-image",
        "kubectl apply -k kustomize/overlays/dev",
        "kubectl apply -k manifests/kueue",
        "port-forward",
        "COMPLETE",
        "tests/e2e/run.sh",
    ):
        assert step in text, step
