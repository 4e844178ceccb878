#!/usr/bin/env bash
# Deploy WireKube to a kind cluster and check the mesh. See e2e/kind/README.md.
# Needs docker, kind, kubectl, cargo. Not run in CI (no Docker there).
set -euo pipefail

CLUSTER=${KIND_CLUSTER:-wirekube}
WORKERS=${WORKERS:-2}
TAG=kind
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

deadline() { # deadline SECONDS DESCRIPTION COMMAND...: retry COMMAND until it succeeds
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= end)); then echo "timed out after ${secs}s: $what" >&2; return 1; fi
    sleep 2
  done
  echo "ok: $what"
}

if [[ ${1:-} == --delete ]]; then kind delete cluster --name "$CLUSTER"; exit 0; fi
for t in docker kind kubectl cargo; do command -v $t >/dev/null || { echo "missing: $t" >&2; exit 1; }; done

echo ">> building binaries"
(cd "$ROOT" && cargo build --release --bin wirekube-operator --bin wirekube-agent --bin wirekube-relay)

echo ">> building images"
for b in operator agent relay; do
  mkdir -p "$WORK/$b"
  cp "$ROOT/target/release/wirekube-$b" "$WORK/$b/"
  extra=""
  [[ $b == agent ]] && extra="RUN apt-get update && apt-get install -y --no-install-recommends wireguard-go wireguard-tools iproute2 && rm -rf /var/lib/apt/lists/*"
  cat >"$WORK/$b/Dockerfile" <<DOCKER
FROM debian:bookworm-slim
$extra
COPY wirekube-$b /usr/local/bin/wirekube-$b
ENTRYPOINT ["/usr/local/bin/wirekube-$b"]
DOCKER
  docker build -q -t "ghcr.io/wirekube/wirekube-$b:$TAG" "$WORK/$b"
done

echo ">> cluster $CLUSTER (1 control-plane, $WORKERS workers)"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  { echo "kind: Cluster"; echo "apiVersion: kind.x-k8s.io/v1alpha4"; echo "nodes:"; echo "- role: control-plane"
    for _ in $(seq "$WORKERS"); do echo "- role: worker"; done; } >"$WORK/kind.yaml"
  kind create cluster --name "$CLUSTER" --config "$WORK/kind.yaml" --wait 120s
fi
for b in operator agent relay; do kind load docker-image --name "$CLUSTER" "ghcr.io/wirekube/wirekube-$b:$TAG"; done
CTX="kind-$CLUSTER"
k() { kubectl --context "$CTX" "$@"; }

echo ">> deploying config/default with :$TAG images"
mkdir -p "$WORK/overlay"
cp -r "$ROOT/config" "$WORK/overlay/config"
cat >"$WORK/overlay/kustomization.yaml" <<KUST
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [config/default]
images:
  - {name: ghcr.io/wirekube/wirekube-operator, newTag: $TAG}
  - {name: ghcr.io/wirekube/wirekube-agent, newTag: $TAG}
patches:
  - target: {kind: Deployment, name: wirekube-operator}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: WIREKUBE_RELAY_IMAGE_OVERRIDE, value: "ghcr.io/wirekube/wirekube-relay:$TAG"}
KUST
k apply -k "$WORK/overlay"
k apply -f "$ROOT/config/samples/mesh-managed-nodeport.yaml"

NODES=$(k get nodes -o jsonpath='{.items[*].metadata.name}')
N=$(wc -w <<<"$NODES")
deadline 180 "operator and agents ready" k -n wirekube-system rollout status deploy/wirekube-operator --timeout=5s
deadline 180 "agents ready" k -n wirekube-system rollout status ds/wirekube-agent --timeout=5s
deadline 120 "one WireKubePeer per node" bash -c "[[ \$(kubectl --context $CTX get wkpeer -o name | wc -l) == $N ]]"
all_reported() {
  local want=$((N - 1)) got
  for n in $NODES; do
    got=$(k get wkpeer "$n" -o json | jq '[.status.connections[]? | select(.path=="direct" or .path=="relay")] | length')
    [[ $got == "$want" ]] || return 1
  done
}
command -v jq >/dev/null || { echo "missing: jq" >&2; exit 1; }
deadline 180 "every agent reports every peer" all_reported

echo ">> pinging every pair over the mesh"
fail=0
for a in $NODES; do
  for b in $NODES; do
    [[ $a == "$b" ]] && continue
    ip=$(k get wkpeer "$b" -o jsonpath='{.spec.meshIP}'); ip=${ip%/*}
    if docker exec "$a" ping -c1 -W2 "$ip" >/dev/null; then echo "ok   $a -> $b ($ip)"; else echo "FAIL $a -> $b ($ip)"; fail=1; fi
  done
done
k get wkmesh,wkpeer -o wide
exit $fail
