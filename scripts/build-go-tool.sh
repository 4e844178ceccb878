#!/usr/bin/env bash
# Builds a Go command-line tool the tests use (test and release tooling only; product code is Rust)
# from its Go module, like scripts/build-k8s.sh builds the control plane:
#   helm        helm.sh/helm/v4/cmd/helm               (chart lint, render, install)
#   actionlint  github.com/rhysd/actionlint/cmd/actionlint  (GitHub workflow lint)
#
# Output: $WIREKUBE_TOOLS_CACHE/<tool>-<version>/bin/<tool>, outside the checkout, keyed by version.
# Idempotent: a version already built is not rebuilt. Prints the binary's path on its last line
# (the only line on stdout); progress goes to stderr.
#
#   scripts/build-go-tool.sh helm
#   HELM_VERSION=v4.3.2 scripts/build-go-tool.sh helm
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v4.3.2}
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.7}
CACHE=${WIREKUBE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wirekube/tools}

log() { echo ">> build-go-tool: $*" >&2; }
die() { echo "build-go-tool: error: $*" >&2; exit 1; }

tool=${1:-}
case $tool in
  helm)
    version=$HELM_VERSION module=helm.sh/helm/v4 pkg=helm.sh/helm/v4/cmd/helm
    ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"
    ;;
  actionlint)
    version=$ACTIONLINT_VERSION module=github.com/rhysd/actionlint pkg=github.com/rhysd/actionlint/cmd/actionlint
    ldflags="-s -w -X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION"
    ;;
  *) die "usage: $0 helm|actionlint (got '${tool}')" ;;
esac
[[ $version =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "$tool version must look like v1.2.3, got '$version'"
command -v go >/dev/null 2>&1 || die "the Go toolchain is required"

dir="$CACHE/$tool-$version"
out="$dir/bin/$tool"
if [[ -x $out ]]; then
  [[ ${BUILD_TOOL_QUIET:-} == 1 ]] || log "$tool $version already built: $out"
  echo "$out"
  exit 0
fi

mkdir -p "$dir/src" "$dir/bin"
# Tests run in parallel and may all ask at once on a cold cache: one builds, the others wait.
exec 9>"$dir/.lock"
flock 9
if [[ -x $out ]]; then
  echo "$out"
  exit 0
fi
export GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0
printf 'module wirekube.test/%sbin\n\ngo 1.24\n\nrequire %s %s\n' "$tool" "$module" "$version" >"$dir/src/go.mod"
log "building $tool $version from $module (cold: a few minutes on 2 cores)"
t0=$SECONDS
(cd "$dir/src" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg")
mv "$out.tmp" "$out"
log "$tool $version built in $((SECONDS - t0)) s: $out"
echo "$out"
