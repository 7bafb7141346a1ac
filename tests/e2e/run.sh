#!/usr/bin/env bash
# End to end on kind, from nothing: a kind cluster, Kueue, the kueue-tes image built and loaded,
# then the e2e suite, which applies the dev overlay and the Kueue samples and runs real tasks.
#
#   tests/e2e/run.sh                 # everything
#   tests/e2e/run.sh -k cancel       # extra arguments go to pytest
#
# Needs docker, kind (v0.32 or newer for the default node image) and kubectl
# (docs/install-kind.md). Settings, from the environment:
#   KIND_CLUSTER     kind cluster name                               (kueue-tes)
#   KIND_NODE_IMAGE  kind node image                    (kindest/node:v1.36.1)
#   KUEUE_VERSION    Kueue release: v0.15.0 or later                 (v0.19.2)
#   SKIP_BUILD=1     use the kueue-tes:dev image already loaded
#   PYTHON           the interpreter with pytest                      (.venv/bin/python)
# The defaults are the Kueue release whose behaviour the code and docs describe (docs/kueue.md,
# "Versions") and the node image Kueue's own e2e tests use with it (its hack/make/test.mk,
# E2E_KIND_VERSION). Other supported releases differ where docs/kueue.md says; the unit and
# integration tests cover both sides of each difference.
# Everything goes through a kubeconfig of its own, created before the cluster: kind writes the
# new cluster's context there, never into ~/.kube/config or the user's current context.
# The cluster is left running for a look around; `kind delete cluster --name kueue-tes` ends it.
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${KIND_CLUSTER:-kueue-tes}
kueue_version=${KUEUE_VERSION:-v0.19.2}
node_image=${KIND_NODE_IMAGE:-kindest/node:v1.36.1}
python=${PYTHON:-.venv/bin/python}
executor_image=busybox:1.36

for tool in docker kind kubectl; do
  if ! command -v "$tool" >/dev/null; then
    echo "run.sh: $tool is not installed; see docs/install-kind.md" >&2
    exit 2
  fi
done
if ! "$python" -c 'import pytest' 2>/dev/null; then
  echo "run.sh: $python has no pytest; run: python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2
  exit 2
fi

step() { printf '\n== %s\n' "$*"; }

# A kubeconfig of its own, set before kind runs: `kind create cluster` writes the new context to
# $KUBECONFIG, and the suite cannot touch any other cluster.
KUBECONFIG="$(mktemp -t kueue-tes-e2e-kubeconfig.XXXXXX)"
export KUBECONFIG
trap 'rm -f "$KUBECONFIG"' EXIT

step "kind cluster $cluster ($node_image)"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --image "$node_image" --wait 180s
fi
kind get kubeconfig --name "$cluster" >"$KUBECONFIG"

step "Kueue $kueue_version"
if ! kubectl get crd clusterqueues.kueue.x-k8s.io >/dev/null 2>&1; then
  kubectl apply --server-side \
    -f "https://github.com/kubernetes-sigs/kueue/releases/download/$kueue_version/manifests.yaml"
fi
kubectl -n kueue-system wait deployment/kueue-controller-manager \
  --for=condition=Available --timeout=300s

if [ "${SKIP_BUILD:-}" != 1 ]; then
  step "image kueue-tes:dev"
  docker build -t kueue-tes:dev .
  kind load docker-image kueue-tes:dev --name "$cluster"
  export KUEUE_TES_E2E_RESTART=1
fi
step "executor image $executor_image (best effort; the node pulls it otherwise)"
{ docker pull -q "$executor_image" && kind load docker-image "$executor_image" --name "$cluster"; } \
  || echo "could not preload $executor_image; task pods will pull it"

step "e2e suite"
status=0
"$python" -m pytest tests/e2e -p no:cacheprovider -v -rs "$@" || status=$?
if [ "$status" != 0 ]; then
  step "diagnostics"
  kubectl -n kueue-tes get pods -o wide || true
  kubectl -n kueue-tes-tasks get jobs,pods,workloads -o wide || true
  kubectl get clusterqueues,localqueues -A || true
  for component in api worker watcher; do
    echo "-- kueue-tes-$component"
    kubectl -n kueue-tes logs "deployment/kueue-tes-$component" --tail=60 || true
  done
fi
exit "$status"
