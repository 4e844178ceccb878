#!/usr/bin/env bash
# Deploys WireKube to a kind cluster with the release's own images and Helm chart, then checks
# the mesh the way a user does: `kubectl wirekube status -o json` must show every pair direct
# for the reason `same-site` (kind nodes share one Docker network), `kubectl wirekube doctor`
# must pass, and every node must reach every other node's mesh IP over TCP.
# See e2e/kind/README.md. Needs docker, kind >= 0.24 (a node image with Kubernetes >= 1.31),
# kubectl, jq, cargo and what scripts/build-images.sh needs (root, buildah, debootstrap).
# Not run in CI (no Docker there); shellcheck-clean (checked by `make lint-scripts`).
set -euo pipefail

CLUSTER=${KIND_CLUSTER:-wirekube}
WORKERS=${WORKERS:-2}
# The CRDs' CEL (isCIDR, cidr()) and the agent's admission policy need Kubernetes >= 1.31.
NODE_IMAGE=${KIND_NODE_IMAGE:-}
MIN_MINOR=31
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

deadline() { # deadline SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      echo "timed out after ${secs}s: $what" >&2
      return 1
    fi
    sleep 2
  done
  echo "ok: $what"
}

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
CTX="kind-$CLUSTER"
k() { kubectl --context "$CTX" "$@"; }

minor=$(k version -o json | jq -r '.serverVersion.minor' | tr -dc '0-9')
if ((minor < MIN_MINOR)); then
  echo "Kubernetes 1.$minor is too old: WireKube needs >= 1.$MIN_MINOR (CEL in its CRDs);" \
    "use a newer kind or KIND_NODE_IMAGE=kindest/node:v1.34.0" >&2
  exit 1
fi

echo ">> loading ${IMAGES[*]}"
for img in "${IMAGES[@]}"; do
  tar="$WORK/$(basename "${img%%:*}").tar"
  "$ROOT/scripts/build-images.sh" buildah push -q "$img" "docker-archive:$tar:$img"
  kind load image-archive --name "$CLUSTER" "$tar"
done

echo ">> helm install (charts/wirekube, mesh with a NodePort relay)"
"$HELM" upgrade --install wirekube "$ROOT/charts/wirekube" --kube-context "$CTX" \
  -n wirekube-system --create-namespace --set mesh.create=true

NODES=$(k get nodes -o jsonpath='{.items[*].metadata.name}')
N=$(wc -w <<<"$NODES")
deadline 180 "operator rolled out" k -n wirekube-system rollout status deploy/wirekube-operator --timeout=5s
deadline 180 "agents rolled out" k -n wirekube-system rollout status ds/wirekube-agent --timeout=5s
deadline 120 "one WireKubePeer per node" bash -c "[[ \$(kubectl --context $CTX get wkpeer -o name | wc -l) == $N ]]"

# Every direction reports direct, for the reason the planner gives nodes on one network.
# shellcheck disable=SC2317  # called through deadline
all_same_site_direct() {
  kubectl wirekube --context "$CTX" status -o json >"$WORK/status.json" || return 1
  jq -e --argjson n "$N" '
    (.pairs | length) == ($n * ($n - 1))
    and all(.pairs[]; .actual == "direct" and .reason == "same-site")' "$WORK/status.json"
}
if ! deadline 180 "every pair direct, reason same-site" all_same_site_direct; then
  jq '.pairs[] | select(.actual != "direct" or .reason != "same-site")' "$WORK/status.json" >&2 || true
  exit 1
fi
kubectl wirekube --context "$CTX" status
kubectl wirekube --context "$CTX" doctor

echo ">> TCP over the mesh between every pair of nodes (the kubelet port of the other node)"
fail=0
for a in $NODES; do
  for b in $NODES; do
    [[ $a == "$b" ]] && continue
    ip=$(k get wkpeer "$b" -o jsonpath='{.spec.meshIP}')
    ip=${ip%/*}
    # kind node images have bash but no ping: open a TCP connection with bash's /dev/tcp.
    if docker exec "$a" timeout 5 bash -c "exec 3<>/dev/tcp/$ip/10250" 2>/dev/null; then
      echo "ok   $a -> $b ($ip)"
    else
      echo "FAIL $a -> $b ($ip)"
      fail=1
    fi
  done
done
exit $fail
