#!/usr/bin/env bash
# Takes a CPU profile of a running lab's kube-apiserver once the lab has WireKubePeers (the
# start-up's busiest seconds), into OUTDIR/cpu.pprof. The lab must run with
# WIREKUBE_LAB_PROFILING=1 (docs/lab.md). Read it with the Go toolchain and the same binary:
#   scripts/lab-profile.sh OUTDIR [SECONDS] &   # beside the scenario test
#   go tool pprof -top -cum ~/.cache/wirekube/k8s/<version>/bin/kube-apiserver OUTDIR/cpu.pprof
set -euo pipefail
out=$1
seconds=${2:-25}
mkdir -p "$out"
for _ in $(seq 1 600); do
  kc=$(find /tmp/wirekube-lab -maxdepth 3 -name admin.kubeconfig 2>/dev/null | head -1)
  ns=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -m1 -- "-dmz$" || true)
  if [ -n "$kc" ] && [ -n "$ns" ]; then
    peers=$(ip netns exec "$ns" kubectl --kubeconfig "$kc" get wirekubepeers --no-headers 2>/dev/null | wc -l)
    if [ "$peers" -gt 0 ]; then
      date -u +%FT%T.%N > "$out/started"
      ip netns exec "$ns" kubectl --kubeconfig "$kc" get --raw "/debug/pprof/profile?seconds=$seconds" > "$out/cpu.pprof"
      echo "profile of ${seconds} s from $(cat "$out/started") in $out/cpu.pprof"
      exit 0
    fi
  fi
  sleep 1
done
echo "no lab with WireKubePeers within 10 min" >&2
exit 1
