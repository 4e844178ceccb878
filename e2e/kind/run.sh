#!/usr/bin/env bash
# Creates a kind cluster, loads the release's own images into it and runs e2e/kind/check.sh on
# it: helm install of charts/wirekube, then `kubectl wirekube status -o json` must show every
# pair direct for the reason `same-site` (kind nodes share one Docker network), `kubectl
# wirekube doctor` must pass, and every node must reach every other node's agent over the mesh.
# See e2e/kind/README.md. check.sh's part runs in the lab (e2e/tests/cli.rs); this part
# (cluster creation, image loading) has never run: the build machine has no Docker.
# Needs docker, kind >= 0.24 (a node image with Kubernetes >= 1.31), kubectl, jq, cargo and
# what scripts/build-images.sh needs (root, buildah, debootstrap).
# Linted by shellcheck (`make lint-scripts`, e2e/tests/install_artifacts.rs).
set -euo pipefail

CLUSTER=${KIND_CLUSTER:-wirekube}
WORKERS=${WORKERS:-2}
# The CRDs' CEL (isCIDR, cidr()) and the agent's admission policy need Kubernetes >= 1.31
# (check.sh stops on an older server).
NODE_IMAGE=${KIND_NODE_IMAGE:-}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [[ ${1:-} == --delete ]]; then
  kind delete cluster --name "$CLUSTER"
  exit 0
fi
for t in docker kind kubectl jq cargo; do
  command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done

echo ">> building binaries (release) and images (scripts/build-images.sh)"
(cd "$ROOT" && cargo build --release --bin wirekube-operator --bin wirekube-agent \
  --bin wirekube-relay --bin kubectl-wirekube)
PROFILE=release "$ROOT/scripts/build-images.sh"
mapfile -t IMAGES < <("$ROOT/scripts/build-images.sh" tags)
HELM=$("$ROOT/scripts/build-go-tool.sh" helm)
PLUGIN_DIR=$WORK/bin
mkdir -p "$PLUGIN_DIR"
cp "$ROOT/target/release/kubectl-wirekube" "$PLUGIN_DIR/"
export PATH="$PLUGIN_DIR:$PATH"

echo ">> cluster $CLUSTER (1 control-plane, $WORKERS workers)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  {
    echo "kind: Cluster"
    echo "apiVersion: kind.x-k8s.io/v1alpha4"
    echo "nodes:"
    echo "- role: control-plane"
    for _ in $(seq "$WORKERS"); do echo "- role: worker"; done
  } >"$WORK/kind.yaml"
  create=(kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 120s)
  [[ -n $NODE_IMAGE ]] && create+=(--image "$NODE_IMAGE")
  "${create[@]}"
fi
KUBECONFIG_FILE=$WORK/kubeconfig
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"

echo ">> loading ${IMAGES[*]}"
for img in "${IMAGES[@]}"; do
  tar="$WORK/$(basename "${img%%:*}").tar"
  "$ROOT/scripts/build-images.sh" buildah push -q "$img" "docker-archive:$tar:$img"
  kind load image-archive --name "$CLUSTER" "$tar"
done

# The rest is e2e/kind/check.sh, which the lab runs too (e2e/tests/cli.rs): install with the
# chart (version check, helm upgrade --install; kind has no LoadBalancer, so the chart's mesh
# with its NodePort relay), then the rollouts, every direction direct for the reason the planner
# gives nodes on one network, doctor, and HTTP over the mesh between every pair of nodes.
HELM=$HELM "$ROOT/e2e/kind/check.sh" --kubeconfig "$KUBECONFIG_FILE" \
  --node-exec 'docker exec {node}' --expect-all direct/same-site -- --set mesh.create=true
