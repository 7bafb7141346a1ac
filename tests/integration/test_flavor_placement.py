"""Which ResourceFlavor Kueue gives a task, under both of Kueue's flavor-matching rules (issue 9,
item 1), for the shipped samples (``manifests/kueue``) and what ``kueue-tes manifest`` prints.

Kueue checks a pod's nodeSelector and required node affinity against a flavor's ``nodeLabels``
after dropping the selector's terms whose keys are not "relevant". Which keys are relevant
changed (kubernetes-sigs/kueue#12449, ``pkg/scheduler/flavorassigner/flavorassigner.go``):

* **union** (v0.15.x, v0.16.x, v0.17.0-v0.17.5, v0.18.0-v0.18.1): the keys that any flavor of
  the resource group labels (``ResourceGroup.LabelKeys``, ``pkg/cache/scheduler/
  clusterqueue.go``, ``updateLabelKeys``);
* **own** (v0.17.6+, v0.18.2+, v0.19.0+, main): only the keys of the flavor being tried
  (``flavorLabelKeys := sets.KeySet(flavor.Spec.NodeLabels)``), so a flavor without
  ``nodeLabels`` matches every selector.

Both also refuse a flavor whose ``nodeTaints`` the pod's tolerations plus the flavor's own do
not tolerate (NoSchedule, NoExecute). A term left with no expressions makes the whole affinity
irrelevant. With quota available, the first flavor in the resource group's order that fits is
assigned, and on admission Kueue adds its ``nodeLabels`` to the pod's nodeSelector and its
``tolerations`` to the pod's. The models below are written from that reading; the scheduler
model is kube-scheduler's NodeAffinity and TaintToleration filters.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import cli
from tests.conftest import ROOT

Json = dict[str, Any]
ZONE = "topology.kubernetes.io/zone"
LIFECYCLE = "node.kubernetes.io/lifecycle"
SAMPLES = ROOT / "manifests" / "kueue"

#: The settings docs/kueue.md gives for the samples (checked against the page below).
SAMPLE_SETTINGS = """\
KUEUE_TES_PREEMPTIBLE_QUEUE=tes-spot
KUEUE_TES_PREEMPTIBLE_PRIORITY_CLASS=tes-low
KUEUE_TES_PREEMPTIBLE_NODE_SELECTOR=node.kubernetes.io/lifecycle=spot
"""


# -- the cluster the samples describe: three node pools over two zones --------------------------


def node(pool: str, zone: str, labels: Json, taints: list[Json]) -> Json:
    """A node as the scheduler sees it: its labels (the kubelet's and the pool's) and taints."""
    base = {"kubernetes.io/os": "linux", ZONE: zone, "pool": pool}
    return {"name": f"{pool}-{zone}", "labels": {**base, **labels}, "taints": taints}


SPOT_TAINT = {"key": LIFECYCLE, "value": "spot", "effect": "NoSchedule"}
NODES = [
    *[node("on-demand", z, {}, []) for z in ("eu-a", "eu-b")],
    *[node("spot", z, {LIFECYCLE: "spot"}, [SPOT_TAINT]) for z in ("eu-a", "eu-b")],
    *[
        node("gpu", z, {"nvidia.com/gpu.present": "true"},
             [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}])
        for z in ("eu-a", "eu-b")
    ],
]  # fmt: skip


# -- kube-scheduler: node selection and taints -------------------------------------------------


def tolerates(tolerations: Iterable[Json], taint: Json) -> bool:
    """Tell whether a toleration matches a taint (core/v1 Toleration.ToleratesTaint)."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint["effect"]:
            continue
        if tol.get("key") and tol["key"] != taint["key"]:
            continue
        if tol.get("operator", "Equal") == "Exists" or tol.get("value") == taint.get("value"):
            return True
    return False


def untolerated(taints: Iterable[Json], tolerations: list[Json]) -> list[Json]:
    """The NoSchedule and NoExecute taints the tolerations leave."""
    return [
        t for t in taints
        if t["effect"] in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)
    ]  # fmt: skip


def expression_matches(expr: Json, labels: Json) -> bool:
    """One NodeSelectorRequirement against a node's labels."""
    key, op, values = expr["key"], expr["operator"], expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise AssertionError(f"operator {op} not modelled")


def selects(spec: Json, labels: Json) -> bool:
    """A pod's nodeSelector and required node affinity against labels (the NodeAffinity filter)."""
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    return any(
        all(expression_matches(e, labels) for e in term.get("matchExpressions") or ())
        for term in required["nodeSelectorTerms"]
    )


def schedulable(spec: Json) -> list[Json]:
    """The nodes the scheduler may place the pod on."""
    tolerations = spec.get("tolerations") or []
    return [
        n for n in NODES
        if selects(spec, n["labels"]) and not untolerated(n["taints"], tolerations)
    ]  # fmt: skip


def where(nodes: list[Json]) -> tuple[set[str], set[str]]:
    """The pools and the zones of ``nodes``."""
    return {n["labels"]["pool"] for n in nodes}, {n["labels"][ZONE] for n in nodes}


# -- Kueue's flavor assigner, both rules ---------------------------------------------------------

Rule = Callable[[list[Json], Json], set[str]]


def union_keys(group: list[Json], flavor: Json) -> set[str]:
    """v0.15-v0.17.5, v0.18.0-v0.18.1: the label keys of every flavor of the resource group."""
    return {k for f in group for k in (f.get("spec") or {}).get("nodeLabels") or {}}


def own_keys(group: list[Json], flavor: Json) -> set[str]:
    """v0.17.6+, v0.18.2+, v0.19+: the label keys of the flavor being tried."""
    return set((flavor.get("spec") or {}).get("nodeLabels") or {})


RULES: dict[str, Rule] = {"union (v0.18.1)": union_keys, "own (v0.19)": own_keys}


def relevant(spec: Json, keys: set[str]) -> Json:
    """The pod's node selection with only the ``keys`` Kueue considers for a flavor."""
    out: Json = {
        "nodeSelector": {k: v for k, v in (spec.get("nodeSelector") or {}).items() if k in keys}
    }
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    terms = []
    for term in (required or {}).get("nodeSelectorTerms") or ():
        kept = [e for e in term.get("matchExpressions") or () if e["key"] in keys]
        if not kept:  # terms are ORed: an empty one matches every flavor
            terms = []
            break
        terms.append({"matchExpressions": kept})
    if terms:
        required = {"nodeSelectorTerms": terms}
        out["affinity"] = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}
        }
    return out


def fits(spec: Json, flavor: Json, group: list[Json], rule: Rule) -> bool:
    """Kueue's checkFlavorForPodSets for one pod set, quota left aside."""
    fspec = flavor.get("spec") or {}
    tolerations = [*(spec.get("tolerations") or ()), *(fspec.get("tolerations") or ())]
    if untolerated(fspec.get("nodeTaints") or (), tolerations):
        return False
    return selects(relevant(spec, rule(group, flavor)), fspec.get("nodeLabels") or {})


def requested(spec: Json) -> set[str]:
    """The resources the pod requests (every container's requests and limits)."""
    containers = [*(spec.get("initContainers") or ()), *spec["containers"]]
    return {
        name for c in containers for part in ("requests", "limits")
        for name in ((c.get("resources") or {}).get(part) or {})
    }  # fmt: skip


def admit(spec: Json, cq: Json, flavors: dict[str, Json], rule: Rule) -> tuple[list[str], Json]:
    """Return the flavors Kueue assigns (one per resource group used) and the admitted pod."""
    wanted = requested(spec)
    covered = {r for g in cq["spec"]["resourceGroups"] for r in g["coveredResources"]}
    assert wanted <= covered, f"{cq['metadata']['name']} does not cover {wanted - covered}"
    chosen: list[str] = []
    for group in cq["spec"]["resourceGroups"]:
        if not wanted & set(group["coveredResources"]):
            continue
        members = [flavors[f["name"]] for f in group["flavors"]]
        fit = next((f for f in members if fits(spec, f, members, rule)), None)
        assert fit is not None, f"no flavor of {cq['metadata']['name']} fits"
        chosen.append(fit["metadata"]["name"])
    pod = copy.deepcopy(spec)
    for name in chosen:
        fspec = flavors[name].get("spec") or {}
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **(fspec.get("nodeLabels") or {})}
        pod["tolerations"] = [*(pod.get("tolerations") or ()), *(fspec.get("tolerations") or ())]
    return chosen, pod


# -- the shipped samples and what kueue-tes prints ---------------------------------------------


def samples() -> list[Json]:
    """Every object of manifests/kueue, in kustomization order."""
    kustomization = yaml.safe_load((SAMPLES / "kustomization.yaml").read_text())
    return [
        doc for name in kustomization["resources"]
        for doc in yaml.safe_load_all((SAMPLES / name).read_text()) if doc
    ]  # fmt: skip


def by_kind(objects: list[Json], kind: str) -> dict[str, Json]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def printed_job(
    task: Json, capsys: pytest.CaptureFixture[str], tmp_path: Path, settings: str
) -> tuple[Json, str]:
    """The Job `kueue-tes manifest` prints for ``task`` and what it says on stderr."""
    (tmp_path / "settings.env").write_text(settings)
    (tmp_path / "task.json").write_text(json.dumps(task))
    code = cli.main(
        ["manifest", str(tmp_path / "task.json"), "--settings", str(tmp_path / "settings.env")]
    )
    out = capsys.readouterr()
    assert code in (0, None), out.err
    job = next(doc for doc in yaml.safe_load_all(out.out) if doc and doc["kind"] == "Job")
    return job, out.err


EXECUTOR = {"image": "alpine", "command": ["true"]}
#: task, the flavors Kueue must assign (per resource group used), the pool and zones it runs in.
CASES: dict[str, tuple[Json, list[str], str, set[str]]] = {
    "plain": ({}, ["default-flavor"], "on-demand", {"eu-a", "eu-b"}),
    "zones": ({"zones": ["eu-b"]}, ["default-flavor"], "on-demand", {"eu-b"}),
    "disk": ({"disk_gb": 10}, ["default-flavor"], "on-demand", {"eu-a", "eu-b"}),
    "preemptible": ({"preemptible": True}, ["spot"], "spot", {"eu-a", "eu-b"}),
    "preemptible in a zone": ({"preemptible": True, "zones": ["eu-a"]}, ["spot"], "spot", {"eu-a"}),
    "preemptible naming a queue": (
        {"preemptible": True, "backend_parameters": {"queue": "team-a"}}, ["spot"], "spot",
        {"eu-a", "eu-b"},
    ),
    "gpu": (
        {"backend_parameters": {"gpus": "1"}}, ["default-flavor", "gpu"], "gpu", {"eu-a", "eu-b"},
    ),
}  # fmt: skip


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_samples_and_policy_place_every_task_on_nodes_it_can_run_on(
    case: str, rule: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Under both rules each task gets the flavor of the nodes it can run on, and only those."""
    resources, flavors_wanted, pool, zones = CASES[case]
    task = {"executors": [EXECUTOR], "resources": {"cpu_cores": 2, **resources}}
    job, _ = printed_job(task, capsys, tmp_path, SAMPLE_SETTINGS)
    objects = samples()
    local = by_kind(objects, "LocalQueue")[job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]]
    cq = by_kind(objects, "ClusterQueue")[local["spec"]["clusterQueue"]]
    chosen, pod = admit(
        job["spec"]["template"]["spec"], cq, by_kind(objects, "ResourceFlavor"), RULES[rule]
    )
    assert chosen == flavors_wanted
    placed = schedulable(pod)
    assert placed, f"{case}: the admitted pod fits no node (it would wait for ever)"
    assert where(placed) == ({pool}, zones)


def test_every_sample_resource_group_gives_both_rules_the_same_keys() -> None:
    """The invariant that makes the rules agree: within a group, every flavor has the same keys."""
    objects = samples()
    flavors = by_kind(objects, "ResourceFlavor")
    for cq in by_kind(objects, "ClusterQueue").values():
        for group in cq["spec"]["resourceGroups"]:
            members = [flavors[f["name"]] for f in group["flavors"]]
            for flavor in members:
                assert union_keys(members, flavor) == own_keys(members, flavor), (
                    f"ClusterQueue {cq['metadata']['name']}: flavor {flavor['metadata']['name']} "
                    "lacks label keys its resource group's other flavors have"
                )


# -- the models tell the two rules apart, as the issue says ---------------------------------------

#: The sample ClusterQueue as shipped before issue 9: on-demand first, spot second, one group.
OLD_CQ = {
    "metadata": {"name": "tes"},
    "spec": {"resourceGroups": [{
        "coveredResources": ["cpu", "memory", "ephemeral-storage"],
        "flavors": [{"name": "default-flavor"}, {"name": "spot"}],
    }]},
}  # fmt: skip
OLD_SETTINGS = "\n".join(SAMPLE_SETTINGS.splitlines()[1:]) + "\n"  # no preemptible queue


def test_before_the_fix_a_preemptible_task_was_stranded_on_v0_19(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The old shape: spot on v0.18.1; on v0.19 default-flavor, and no node takes the pod."""
    task = {"executors": [EXECUTOR], "resources": {"preemptible": True}}
    job, _ = printed_job(task, capsys, tmp_path, OLD_SETTINGS)
    spec, flavors = job["spec"]["template"]["spec"], by_kind(samples(), "ResourceFlavor")
    chosen, pod = admit(spec, OLD_CQ, flavors, union_keys)
    assert chosen == ["spot"] and schedulable(pod)
    chosen, pod = admit(spec, OLD_CQ, flavors, own_keys)
    assert chosen == ["default-flavor"] and schedulable(pod) == []


# -- zonal flavors: the docs' example -------------------------------------------------------------


def docs_zonal_example() -> list[Json]:
    """The YAML of docs/kueue.md's zonal-flavor example (between its markers)."""
    text = (ROOT / "docs" / "kueue.md").read_text()
    block = re.search(r"<!-- zonal flavors -->\n```yaml\n(.*?)```", text, re.S)
    assert block, "docs/kueue.md lost its zonal-flavor example"
    return [doc for doc in yaml.safe_load_all(block.group(1)) if doc]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_zonal_flavors_of_the_docs_place_zoned_tasks_by_zone(
    rule: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Every flavor of the group labels its zone: a zoned task gets its zone's flavor and nodes."""
    objects = docs_zonal_example()
    cq = next(iter(by_kind(objects, "ClusterQueue").values()))
    flavors = by_kind(objects, "ResourceFlavor")
    for zones, wanted in ((["eu-b"], ["on-demand-eu-b"]), ([], ["on-demand-eu-a"])):
        task = {"executors": [EXECUTOR], "resources": {"zones": zones}}
        job, _ = printed_job(task, capsys, tmp_path, SAMPLE_SETTINGS)
        chosen, pod = admit(job["spec"]["template"]["spec"], cq, flavors, RULES[rule])
        assert chosen == wanted
        assert where(schedulable(pod)) == ({"on-demand"}, {wanted[0].removeprefix("on-demand-")})


def test_a_zonal_flavor_next_to_an_unlabelled_one_is_where_the_rules_differ(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """docs/kueue.md warns of this mix: the unlabelled flavor takes zoned tasks only on v0.19."""
    objects = docs_zonal_example()
    flavors = {
        **by_kind(objects, "ResourceFlavor"),
        "default-flavor": {"metadata": {"name": "default-flavor"}},
    }
    cq = {"metadata": {"name": "mixed"}, "spec": {"resourceGroups": [{
        "coveredResources": ["cpu", "memory"],
        "flavors": [{"name": "default-flavor"}, {"name": "on-demand-eu-b"}]}]}}  # fmt: skip
    job, _ = printed_job(
        {"executors": [EXECUTOR], "resources": {"zones": ["eu-b"]}},
        capsys,
        tmp_path,
        SAMPLE_SETTINGS,
    )
    spec = job["spec"]["template"]["spec"]
    assert admit(spec, cq, flavors, union_keys)[0] == ["on-demand-eu-b"]
    assert admit(spec, cq, flavors, own_keys)[0] == ["default-flavor"]


def test_the_docs_give_the_settings_these_tests_use() -> None:
    text = (ROOT / "docs" / "kueue.md").read_text()
    for line in SAMPLE_SETTINGS.splitlines():
        assert line in text, f"docs/kueue.md does not give {line}"
