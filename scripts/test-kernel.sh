#!/usr/bin/env bash
# `make test-kernel`: the tests of the kernel WireGuard engine, in a QEMU VM.
#
# The test machines have no WireGuard kernel module. Debian's kernel (linux-image-amd64) has it:
# virtme-ng (`vng`) boots that kernel with QEMU over this machine's root filesystem (9p, read-only
# with writable overlays), so the VM sees the checkout, the binaries built here and the installed
# tools. Everything is built on the host first; the VM only runs the test executables (compiling
# under software emulation is hopeless). KVM is not usable on these machines (QEMU aborts on an
# MSR the host refuses), hence --disable-kvm. docs/dataplane.md describes what runs and why.
#
# Fails (never skips) when the VM cannot boot, when a tool is missing, or when any test fails.
# WIREKUBE_VM_KERNEL selects the kernel image (default: the newest /boot/vmlinuz-*);
# WIREKUBE_VM_TESTS selects groups (default: "dataplane agent_lab seeds").
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
# Hard limit for the whole VM run (boot + tests), against a hung VM: 40 min. A run takes about
# 15 min on a quiet machine, but over 25 min while other builds load the 2 cores (everything in
# the VM is emulated: docs/benchmarks.md).
VM_TIMEOUT=${WIREKUBE_VM_TIMEOUT:-2400}

die() {
  echo "test-kernel: $*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces in the VM run as root over 9p)"
kernel=${WIREKUBE_VM_KERNEL:-$(printf '%s\n' /boot/vmlinuz-* | sort -V | tail -n1)}
[[ -n $kernel && -f $kernel ]] || die "no kernel image in /boot: scripts/install-deps.sh installs linux-image-amd64"
kver=${kernel##*/vmlinuz-}
[[ -d /lib/modules/$kver ]] || die "no /lib/modules/$kver for $kernel"
modinfo -k "$kver" wireguard >/dev/null 2>&1 || die "kernel $kver has no wireguard module"
for tool in vng qemu-system-x86_64 busybox python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: run scripts/install-deps.sh"
done

# Test executables, built here. `cargo test --no-run --message-format=json` names them.
executables() {
  "$CARGO" test "$@" --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])
'
}
echo ">> building the test executables and binaries on the host"
"$CARGO" build -q -p wirekube-agent -p wirekube-relay -p wirekube-operator -p wirekube-kubelab --bins
"$CARGO" test -q -p wirekube-dataplane --test kernel -p wirekube-agent --test agent_lab \
  -p wirekube-e2e --test kernel_topologies --no-run
dataplane=$(executables -p wirekube-dataplane --test kernel)
agent_lab=$(executables -p wirekube-agent --test agent_lab)
seeds=$(executables -p wirekube-e2e --test kernel_topologies)
for exe in "$dataplane" "$agent_lab" "$seeds"; do
  [[ -x $exe ]] || die "test executable not found: '$exe'"
done
groups=${WIREKUBE_VM_TESTS:-dataplane agent_lab seeds}
k8s_bin=$(./scripts/build-k8s.sh | tail -n1)
[[ -x $k8s_bin/kube-apiserver ]] || die "no Kubernetes binaries in $k8s_bin"

work=$(mktemp -d /tmp/wirekube-vm.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The VM runs copies of the binaries and test executables. It reads the host's files over 9p,
# so a `cargo build` on the host during the run (another checkout user, an editor) would replace
# target/debug/* under it: a process started afterwards in the VM (e.g. the agent container the
# lab kubelet restarts) then got a torn executable and died of SIGSEGV (exit 139) in a loop.
bin="$work/bin"
mkdir -p "$bin"
for b in wirekube-agent wirekube-relay wirekube-operator wirekube-lab-kubelet; do
  cp "target/debug/$b" "$bin/" || die "cannot copy target/debug/$b"
done
for exe in "$dataplane" "$agent_lab" "$seeds"; do
  cp "$exe" "$bin/" || die "cannot copy $exe"
done
dataplane="$bin/${dataplane##*/}" agent_lab="$bin/${agent_lab##*/}" seeds="$bin/${seeds##*/}"
# The guest runs each group, records its exit status, and marks the end: a missing mark means
# the VM did not boot or did not finish.
cat >"$work/guest.sh" <<EOF
#!/bin/bash
cd "$PWD"
export WIREKUBE_K8S_BIN="$k8s_bin" WIREKUBE_BIN_DIR="$bin" RUST_BACKTRACE=1
# The control plane runs under emulation here: its start-up deadlines times 4.
export WIREKUBE_LAB_SLOWDOWN=4
echo ">> VM up: kernel \$(uname -r), \$(nproc) CPUs"
modprobe wireguard || { echo "modprobe wireguard failed"; echo 1 >"$work/modprobe"; }
# /dev/net/tun for wireguard-go (devtmpfs has the node once the module is loaded);
# br_netfilter for the lab kubelet's pod bridges (net.bridge.bridge-nf-call-iptables).
for m in tun br_netfilter; do
  modprobe \$m || { echo "modprobe \$m failed"; echo 1 >"$work/modprobe"; }
done
group() {
  local name=\$1; shift
  local t0=\$(date +%s)
  echo ">> [\$name] \$*"
  "\$@"
  local rc=\$?
  echo ">> [\$name] exit \$rc after \$((\$(date +%s) - t0)) s"
  echo \$rc >"$work/rc.\$name"
}
for g in $groups; do
  case \$g in
    dataplane) group dataplane "$dataplane" --ignored --test-threads=1 ;;
    agent_lab) group agent_lab "$agent_lab" --ignored --test-threads=1 --nocapture ;;
    seeds) group seeds "$seeds" --ignored --test-threads=1 --nocapture ;;
    *) echo "unknown test group \$g"; echo 1 >"$work/rc.\$g" ;;
  esac
done
touch "$work/done"
EOF
chmod +x "$work/guest.sh"

echo ">> booting $kernel in QEMU (software emulation; about a minute to boot)"
t0=$(date +%s)
set +e
# Through a pipe: QEMU reopens a console that is a regular file and truncates it.
timeout "$VM_TIMEOUT" vng --run "$kernel" --disable-kvm --cpus 2 --memory 4G \
  --rwdir "$work" --exec "$work/guest.sh" 2>&1 | cat
vng_rc=${PIPESTATUS[0]}
set -e
echo ">> VM run took $(($(date +%s) - t0)) s (vng exit $vng_rc)"
[[ -e $work/done ]] || die "the VM did not finish (vng exit $vng_rc; 124 = timeout after $VM_TIMEOUT s)"
[[ ! -e $work/modprobe ]] || die "the VM kernel could not load the wireguard, tun or br_netfilter module"
compgen -G "$work/rc.*" >/dev/null || die "no test group ran in the VM"
failed=()
for f in "$work"/rc.*; do
  [[ $(cat "$f") == 0 ]] || failed+=("${f##*/rc.}")
done
((${#failed[@]} == 0)) || die "failed in the VM: ${failed[*]}"
echo ">> kernel WireGuard tests passed in the VM"
