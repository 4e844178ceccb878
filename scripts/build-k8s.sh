#!/usr/bin/env bash
# Builds the real Kubernetes control plane the lab runs (test infrastructure only; product code is
# Rust): kube-apiserver, kube-controller-manager, kube-scheduler and kube-proxy from the
# k8s.io/kubernetes Go module, and etcd from go.etcd.io/etcd/server/v3.
#
# Output: $WIREKUBE_K8S_CACHE/<k8s version>/bin and .../etcd-<etcd version>/bin, outside the
# checkout, keyed by version. Idempotent: a version whose binaries exist is not rebuilt.
# Prints the bin directory on its last line (the only line on stdout); progress goes to stderr.
#
#   scripts/build-k8s.sh                    # the default (oldest supported) release
#   K8S_VERSION=v1.37.2 scripts/build-k8s.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.13}
CACHE=${WIREKUBE_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wirekube/k8s}
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy)

log() { echo ">> build-k8s: $*" >&2; }
die() { echo "build-k8s: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "the Go toolchain is required (go 1.24 or newer)"
[[ $K8S_VERSION =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S_VERSION must look like v1.34.4, got '$K8S_VERSION'"
STAGING_VERSION="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"

k8s_dir="$CACHE/$K8S_VERSION"
etcd_dir="$CACHE/etcd-$ETCD_VERSION"
bin="$k8s_dir/bin"
mkdir -p "$bin"
export GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0

have_all() {
  for c in "${COMPONENTS[@]}"; do [[ -x $bin/$c ]] || return 1; done
  [[ -x $bin/etcd ]]
}

if have_all; then
  # Tests ask on every start; they set BUILD_K8S_QUIET=1 so a cache hit prints nothing.
  [[ ${BUILD_K8S_QUIET:-} == 1 ]] || log "Kubernetes $K8S_VERSION and etcd $ETCD_VERSION already built in $bin"
  echo "$bin"
  exit 0
fi

build_k8s() {
  local mod="$k8s_dir/src"
  mkdir -p "$mod"
  log "resolving k8s.io/kubernetes@$K8S_VERSION (staging modules at $STAGING_VERSION)"
  local gomod
  gomod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [[ -f $gomod ]] || die "the module proxy did not serve k8s.io/kubernetes@$K8S_VERSION"
  # k8s.io/kubernetes points its staging modules at ./staging with local replaces that a
  # dependent module does not inherit: replace each by its published release.
  {
    echo "module wirekube.test/k8sbin"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#replace \1 => \1 '"$STAGING_VERSION"'#p' "$gomod"
  } >"$mod/go.mod.new"
  grep -q '^replace k8s.io/api ' "$mod/go.mod.new" || die "found no staging replaces in $gomod"
  mv "$mod/go.mod.new" "$mod/go.mod"
  for c in "${COMPONENTS[@]}"; do
    [[ -x $bin/$c ]] && { log "$c already built"; continue; }
    log "building $c $K8S_VERSION (cold: several minutes per binary on 2 cores)"
    local t0=$SECONDS
    (cd "$mod" && go build -trimpath -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${BASH_REMATCH[1]}" -o "$bin/$c.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$bin/$c.tmp" "$bin/$c"
    log "$c built in $((SECONDS - t0)) s"
  done
}

build_etcd() {
  if [[ -x $etcd_dir/bin/etcd ]]; then
    log "etcd $ETCD_VERSION already built"
  else
    local mod="$etcd_dir/src"
    mkdir -p "$mod" "$etcd_dir/bin"
    printf 'module wirekube.test/etcdbin\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$mod/go.mod"
    log "building etcd $ETCD_VERSION"
    local t0=$SECONDS
    (cd "$mod" && go build -trimpath -ldflags "-s -w" -o "$etcd_dir/bin/etcd.tmp" go.etcd.io/etcd/server/v3)
    mv "$etcd_dir/bin/etcd.tmp" "$etcd_dir/bin/etcd"
    log "etcd built in $((SECONDS - t0)) s"
  fi
  ln -sf "$etcd_dir/bin/etcd" "$bin/etcd"
}

t_start=$SECONDS
build_etcd
build_k8s
have_all || die "some binaries are missing from $bin after the build"
log "done in $((SECONDS - t_start)) s: $bin"
echo "$bin"
