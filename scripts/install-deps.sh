#!/usr/bin/env bash
# Installs the system packages and Python tools the tests and the demo need.
# Idempotent and quiet when everything is present; needs root to install.
set -euo pipefail

APT_PACKAGES=(wireguard-go wireguard-tools nftables iproute2 iputils-ping iperf3 conntrack
  coturn stun-client netcat-openbsd containernetworking-plugins iptables
  qemu-system-x86 busybox-static linux-image-amd64 debootstrap buildah prometheus shellcheck jq)
# binary -> package, to decide cheaply whether apt is needed at all
declare -A PROBE=([wireguard-go]=wireguard-go [wg]=wireguard-tools [nft]=nftables [ip]=iproute2
  [ping]=iputils-ping [iperf3]=iperf3 [conntrack]=conntrack [turnutils_natdiscovery]=coturn
  [stun]=stun-client [nc]=netcat-openbsd [/usr/lib/cni/bridge]=containernetworking-plugins
  [iptables]=iptables [qemu-system-x86_64]=qemu-system-x86 [busybox]=busybox-static
  [debootstrap]=debootstrap [buildah]=buildah [promtool]=prometheus [shellcheck]=shellcheck [jq]=jq)

missing=()
for bin in "${!PROBE[@]}"; do
  if [[ $bin == /* ]]; then [[ -x $bin ]] && continue; else command -v "$bin" >/dev/null 2>&1 && continue; fi
  missing+=("${PROBE[$bin]}")
done
# make test-kernel boots Debian's kernel (it has the WireGuard module) in QEMU; this machine's
# own kernel is not touched (the package only adds /boot and /lib/modules files).
compgen -G '/boot/vmlinuz-*' >/dev/null || missing+=(linux-image-amd64)

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]}; run as root or: sudo apt-get install --no-install-recommends ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
  echo ">> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: wireguard-tools recommends a kernel image and systemd.
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo ">> installing kubernetes-validate (PyPI)"
  python3 -m pip install -q --root-user-action=ignore kubernetes-validate
fi

if ! command -v vng >/dev/null 2>&1; then
  echo ">> installing virtme-ng (PyPI), for make test-kernel"
  python3 -m pip install -q --root-user-action=ignore virtme-ng
fi

command -v kubectl >/dev/null 2>&1 || { echo "kubectl (client) is required: https://kubernetes.io/docs/tasks/tools/" >&2; exit 1; }
