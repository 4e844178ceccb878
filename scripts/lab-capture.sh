#!/usr/bin/env bash
# Copies a running lab's logs (every pod's container logs, every lab process's log, and the
# API server's audit log) into OUTDIR once a second, until the test output in LOG says
# "test result". The lab deletes its directory at teardown; this keeps what it wrote.
#   scripts/lab-capture.sh LOG OUTDIR
# e.g. beside `cargo test -p wirekube-e2e --test nat_grid -- --nocapture > LOG 2>&1`;
# then `scripts/audit-summary.py OUTDIR/audit.log` (docs/benchmarks.md).
set -euo pipefail
log=$1
out=$2
mkdir -p "$out"
while true; do
  for f in /tmp/wirekube-lab/*/hosts/*/kubelet/pods/*/*.log /tmp/wirekube-lab/*/logs/*.log; do
    [ -f "$f" ] || continue
    name=${f#/tmp/wirekube-lab/}
    cp "$f" "$out/${name//\//__}" 2>/dev/null || true
  done
  while IFS= read -r f; do
    cp "$f" "$out/audit.log" 2>/dev/null || true
  done < <(find /tmp/wirekube-lab -name audit.log 2>/dev/null)
  if grep -q "test result" "$log" 2>/dev/null; then
    break
  fi
  sleep 1
done
