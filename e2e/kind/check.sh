#!/usr/bin/env bash
# Installs WireKube on a RUNNING cluster with the Helm chart (charts/wirekube, default images:
# the release's own) and checks the mesh the way a user does. It needs only a kubeconfig and a
# way to run a command on a node, so the same assertions run on kind (e2e/kind/run.sh, through
# `docker exec`) and on the lab's real control plane (e2e/tests/cli.rs, through `ip netns exec`).
#
#   check.sh --kubeconfig FILE [--phase install|check|all] [--node-exec 'CMD {node}']
#            [--expect-all ACTUAL/REASON | --expect FILE | --expect-planned] [--timeout SECONDS]
#            [-- HELM ARGS...]
#
# install: the server must be Kubernetes >= 1.31 (CEL in the CRDs, the agent's admission policy);
#          `helm upgrade --install wirekube charts/wirekube -n wirekube-system --create-namespace
#          HELM ARGS`; waits until the CRDs are established.
# check:   waits (deadlines) for the operator and agent rollouts and one WireKubePeer per Node;
#          then until `kubectl wirekube status -o json` shows every direction with the expected
#          path and reason, no fallback (--expect-all direct/same-site: every direction the same,
#          as on kind's one Docker bridge; --expect FILE: a JSON array of {from,to,actual,reason},
#          one per direction, e.g. the lab topology's planner expectation; --expect-planned: each
#          direction on the path the operator planned for it, Direct or Relay, for a cluster
#          whose sites you do not want to spell out); prints
#          `kubectl wirekube status`; `kubectl wirekube doctor` must pass; and every node must
#          reach every other node's agent over the mesh: an HTTP GET of /healthz on the peer's
#          mesh IP, port 9473 (the chart's agent metrics port, host network), with bash's
#          /dev/tcp run by --node-exec ({node} is replaced by the node name; the command must
#          pass its arguments through unchanged, as docker exec and ip netns exec do, not ssh;
#          kind node images have bash but no ping or curl).
# Needs kubectl, jq, helm (or HELM=path) and kubectl-wirekube on PATH. Exit 0 only when every
# check passed. Linted by shellcheck (make lint-scripts).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MIN_MINOR=31
NS=wirekube-system
AGENT_PORT=9473
PHASE=all KUBECONFIG_FILE='' NODE_EXEC='' EXPECT_ALL='' EXPECT_FILE='' EXPECT_PLANNED='' TIMEOUT=180
HELM_ARGS=()

die() { echo "check.sh: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --kubeconfig) KUBECONFIG_FILE=${2:-}; shift 2 ;;
    --phase) PHASE=${2:-}; shift 2 ;;
    --node-exec) NODE_EXEC=${2:-}; shift 2 ;;
    --expect-all) EXPECT_ALL=${2:-}; shift 2 ;;
    --expect) EXPECT_FILE=${2:-}; shift 2 ;;
    --expect-planned) EXPECT_PLANNED=1; shift ;;
    --timeout) TIMEOUT=${2:-}; shift 2 ;;
    --) shift; HELM_ARGS=("$@"); break ;;
    *) die "unknown argument '$1' (see the header of $0)" ;;
  esac
done
[[ -n $KUBECONFIG_FILE && -r $KUBECONFIG_FILE ]] || die "--kubeconfig FILE: a readable kubeconfig is required"
[[ $PHASE =~ ^(install|check|all)$ ]] || die "--phase must be install, check or all, got '$PHASE'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || die "--timeout must be whole seconds, got '$TIMEOUT'"
if [[ $PHASE != install ]]; then
  [[ $NODE_EXEC == *'{node}'* ]] || die "--node-exec must contain {node}, e.g. 'docker exec {node}'"
  [[ -n $EXPECT_ALL || -n $EXPECT_FILE || -n $EXPECT_PLANNED ]] ||
    die "give --expect-all ACTUAL/REASON, --expect FILE or --expect-planned"
  [[ -z $EXPECT_ALL || $EXPECT_ALL == */* ]] || die "--expect-all is ACTUAL/REASON, e.g. direct/same-site"
  [[ -z $EXPECT_FILE || -r $EXPECT_FILE ]] || die "--expect $EXPECT_FILE is not readable"
fi
export KUBECONFIG=$KUBECONFIG_FILE
HELM=${HELM:-helm}
for t in kubectl jq; do command -v "$t" >/dev/null || die "missing: $t"; done
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

install() {
  command -v "$HELM" >/dev/null || die "missing: helm (scripts/build-go-tool.sh helm; or HELM=path)"
  local minor
  minor=$(kubectl version -o json | jq -r '.serverVersion.minor' | tr -dc '0-9')
  if ((minor < MIN_MINOR)); then
    echo "Kubernetes 1.$minor is too old: WireKube needs >= 1.$MIN_MINOR (CEL in its CRDs);" \
      "on kind use KIND_NODE_IMAGE=kindest/node:v1.34.0" >&2
    exit 1
  fi
  echo "ok: Kubernetes 1.$minor >= 1.$MIN_MINOR"
  echo ">> helm upgrade --install wirekube charts/wirekube ${HELM_ARGS[*]}"
  "$HELM" upgrade --install wirekube "$ROOT/charts/wirekube" -n "$NS" --create-namespace \
    "${HELM_ARGS[@]}"
  kubectl wait --for=condition=Established --timeout=60s \
    crd/wirekubemeshes.wirekube.io crd/wirekubepeers.wirekube.io
}

# Every direction in status.json against expect.json (with --expect-planned: made from the
# status's own plan, which must cover all N * (N - 1) directions with Direct or Relay).
pairs_as_expected() {
  kubectl wirekube status -o json >"$WORK/status.json" || return 1
  if [[ -n $EXPECT_PLANNED ]]; then
    jq --argjson n "$1" '[.pairs[] | select(.planned == "Direct" or .planned == "Relay")
        | {from, to, actual: (.planned | ascii_downcase), reason}]
      | if length == $n * ($n - 1) then . else [] end' "$WORK/status.json" >"$WORK/expect.json" ||
      return 1
  fi
  jq -e --slurpfile want "$WORK/expect.json" '
    . as $s | ($want[0] | length) > 0 and (.pairs | length) == ($want[0] | length)
    and all($want[0][]; . as $w | any($s.pairs[];
      .from == $w.from and .to == $w.to and .actual == $w.actual and .reason == $w.reason
      and .actualReason == $w.reason and .fallback == false))' "$WORK/status.json" >/dev/null
}

show_unexpected() {
  if ! jq -e .pairs "$WORK/status.json" >/dev/null 2>&1; then
    echo "kubectl wirekube status -o json gave no pairs:" >&2
    cat "$WORK/status.json" >&2 || true
    return
  fi
  echo "directions: $(jq '.pairs | length' "$WORK/status.json") reported," \
    "$(jq length "$WORK/expect.json") expected; those that differ:" >&2
  jq --slurpfile want "$WORK/expect.json" '.pairs[] as $p
    | ($want[0][] | select(.from == $p.from and .to == $p.to)) as $w
    | select($p.actual != $w.actual or $p.reason != $w.reason or $p.actualReason != $w.reason
             or $p.fallback)
    | {from: $p.from, to: $p.to, want: "\($w.actual)/\($w.reason)",
       got: "\($p.actual)/\($p.reason) (agent: \($p.actualReason), fallback \($p.fallback))"}' \
    "$WORK/status.json" >&2 || true
}

check() {
  command -v kubectl-wirekube >/dev/null || die "missing: kubectl-wirekube on PATH (cargo build --bin kubectl-wirekube)"
  local nodes n
  nodes=$(kubectl get nodes -o jsonpath='{.items[*].metadata.name}')
  n=$(wc -w <<<"$nodes")
  ((n >= 2)) || die "the cluster has $n node(s); a mesh needs at least 2"
  deadline "$TIMEOUT" "operator rolled out" kubectl -n "$NS" rollout status deploy/wirekube-operator --timeout=5s
  deadline "$TIMEOUT" "agents rolled out" kubectl -n "$NS" rollout status ds/wirekube-agent --timeout=5s
  deadline "$TIMEOUT" "one WireKubePeer per node ($n)" \
    bash -c "[[ \$(kubectl get wkpeer -o name | wc -l) == $n ]]"
  if [[ -n $EXPECT_ALL ]]; then # every direction between the nodes, all alike
    jq -n --arg nodes "$nodes" --arg actual "${EXPECT_ALL%%/*}" --arg reason "${EXPECT_ALL#*/}" \
      '($nodes | split(" ")) as $ns | [$ns[] as $a | $ns[] as $b | select($a != $b)
        | {from: $a, to: $b, actual: $actual, reason: $reason}]' >"$WORK/expect.json"
  elif [[ -n $EXPECT_FILE ]]; then
    cp "$EXPECT_FILE" "$WORK/expect.json"
  fi
  if ! deadline "$TIMEOUT" "every direction's path and reason as expected" pairs_as_expected "$n"; then
    show_unexpected
    exit 1
  fi
  kubectl wirekube status
  kubectl wirekube doctor

  echo ">> HTTP over the mesh between every pair of nodes (GET /healthz, agent port $AGENT_PORT)"
  local fail=0 a b ip
  for a in $nodes; do
    for b in $nodes; do
      [[ $a == "$b" ]] && continue
      ip=$(kubectl get wkpeer "$b" -o jsonpath='{.spec.meshIP}')
      ip=${ip%/*}
      local -a run
      read -r -a run <<<"${NODE_EXEC//\{node\}/$a}"
      # shellcheck disable=SC2016  # expanded by the node's bash
      if "${run[@]}" timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -c 12 <&3' \
        "$ip" "$AGENT_PORT" 2>/dev/null | grep -q '^HTTP/1\.[01] 200'; then
        echo "ok   $a -> $b ($ip:$AGENT_PORT)"
      else
        echo "FAIL $a -> $b ($ip:$AGENT_PORT)"
        fail=1
      fi
    done
  done
  return $fail
}

case $PHASE in
  install) install ;;
  check) check ;;
  all) install && check ;;
esac
