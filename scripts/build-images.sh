#!/usr/bin/env bash
# Builds the WireKube container images without Docker or a registry: a Debian root filesystem from
# debootstrap (cached outside the checkout), two small bases assembled from it with buildah (the C
# runtime for operator and relay; the same plus wireguard-go and nft for the agent), then one image
# per binary from images/<name>.Containerfile. The release workflow runs this same script.
#
#   scripts/build-images.sh                 # build (cached rootfs; images rebuilt from the binaries)
#   scripts/build-images.sh tags            # print the image references, one a line
#   scripts/build-images.sh buildah ARGS... # buildah on the images' storage (tests mount images so)
#
# Environment:
#   PROFILE=debug|release   which cargo build to package (default debug: `make build` made it, and
#                           CI pays no second compile; the release workflow uses release). Binaries
#                           are stripped either way.
#   TARGET_DIR              cargo target directory (default: <repo>/target)
#   REGISTRY                image name prefix (default ghcr.io/wirekube)
#   DEBIAN_SUITE / DEBIAN_MIRROR / DEBIAN_ARCH   the base (default bookworm, the configured apt
#                           mirror, the host architecture)
#   WIREKUBE_IMAGES_CACHE   cache directory (default ~/.cache/wirekube/images): the rootfs keyed
#                           by suite, architecture and the mirror's Release date, and the buildah
#                           storage (vfs driver: works without overlay or fuse here)
# The image version is the workspace version in Cargo.toml (the one place; config/, the chart and
# every binary's --version agree with it, checked by e2e/tests/install_artifacts.rs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${WIREKUBE_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wirekube/images}
PROFILE=${PROFILE:-debug}
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
REGISTRY=${REGISTRY:-ghcr.io/wirekube}
SUITE=${DEBIAN_SUITE:-bookworm}
ARCH=${DEBIAN_ARCH:-$(dpkg --print-architecture)}
BINARIES=(operator relay agent)

log() { echo ">> build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

bah() { buildah --root "$CACHE/storage" --runroot "$CACHE/run" --storage-driver vfs "$@"; }

version() {
  sed -n '/^\[workspace\.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1
}

VERSION=$(version)
[[ $VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || die "no workspace version in $ROOT/Cargo.toml"
tag_of() { echo "$REGISTRY/wirekube-$1:v$VERSION"; }

case ${1:-build} in
  tags) for b in "${BINARIES[@]}"; do tag_of "$b"; done; exit 0 ;;
  buildah) shift; bah "$@"; exit ;;
  build) ;;
  *) die "usage: $0 [build|tags|buildah ARGS...]" ;;
esac

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, buildah with the vfs driver)"
for t in debootstrap buildah chroot; do command -v "$t" >/dev/null || die "$t is missing: scripts/install-deps.sh installs it"; done

mirror() {
  [[ -n ${DEBIAN_MIRROR:-} ]] && { echo "$DEBIAN_MIRROR"; return; }
  local m
  m=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
  [[ -z $m ]] && m=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
  echo "${m:-http://deb.debian.org/debian}"
}

# The rootfs is keyed by the Date of the suite's Release file apt last fetched (the mirror's
# snapshot), so a refreshed mirror gives a new rootfs and an unchanged one is reused.
release_date() {
  local f
  f=$(find /var/lib/apt/lists -maxdepth 1 -name "*_dists_${SUITE}_InRelease" 2>/dev/null | head -n1)
  if [[ -n $f ]]; then date -u -d "$(sed -n 's/^Date: //p' "$f" | head -n1)" +%Y%m%d; else date -u +%Y%m%d; fi
}

rootfs=$CACHE/rootfs-$SUITE-$ARCH-$(release_date)
if [[ ! -f $rootfs/.complete ]]; then
  log "debootstrap $SUITE ($ARCH, minbase + wireguard-go nftables) from $(mirror) into $rootfs"
  t0=$SECONDS
  rm -rf "$rootfs.tmp"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase --arch="$ARCH" --include=wireguard-go,nftables \
    "$SUITE" "$rootfs.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $CACHE/debootstrap.log"
  touch "$rootfs.tmp/.complete"
  rm -rf "$rootfs" && mv "$rootfs.tmp" "$rootfs"
  log "rootfs ready in $((SECONDS - t0)) s"
fi

# Copies FILEs and the shared libraries they link (as resolved inside the rootfs) from the rootfs
# into DEST, keeping paths. Symlinked libraries are copied with their targets.
copy_with_libs() {
  local dest=$1; shift
  local f lib
  for f in "$@"; do
    mkdir -p "$dest$(dirname "$f")"
    cp -a "$rootfs$f" "$dest$f"
    while read -r lib; do
      [[ -n $lib ]] || continue
      mkdir -p "$dest$(dirname "$lib")"
      cp -aL "$rootfs$lib" "$dest$lib"
    done < <(chroot "$rootfs" ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | sort -u)
  done
}

# A staged rootfs for a base image: passwd/group with root and nonroot (65532), /tmp, the C runtime
# every Rust binary here links (ld.so, libc, libm, libgcc_s) plus EXTRA files and their libraries.
stage_base() {
  local dest=$1; shift
  rm -rf "$dest" && mkdir -p "$dest"/{etc,tmp,var/lib,var/run,run,usr/local/bin}
  chmod 1777 "$dest/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$dest/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$dest/etc/group"
  printf 'hosts: files dns\n' >"$dest/etc/nsswitch.conf"
  local rt
  rt=$(cd "$rootfs" && find lib64/ lib/ -maxdepth 1 -name 'ld-linux-*.so.*' 2>/dev/null | head -n1)
  [[ -n $rt ]] || die "no dynamic loader in $rootfs"
  local libdir
  libdir=$(dirname "$(chroot "$rootfs" ldd /usr/bin/true | grep -o '/[^ ]*libc\.so\.6' | head -n1)")
  mkdir -p "$dest/$(dirname "$rt")" "$dest$libdir"
  cp -aL "$rootfs/$rt" "$dest/$rt"
  for l in libc.so.6 libm.so.6 libgcc_s.so.1; do cp -aL "$rootfs$libdir/$l" "$dest$libdir/$l"; done
  [[ $# -gt 0 ]] && copy_with_libs "$dest" "$@"
  cp -a "$rootfs/usr/share/doc/libc6/copyright" "$dest/etc/libc6.copyright" 2>/dev/null || true
}

commit_base() {
  local name=$1 dir=$2 ctr
  bah rm "$name-work" >/dev/null 2>&1 || true
  ctr=$(bah from --name "$name-work" scratch)
  bah copy "$ctr" "$dir" / >/dev/null
  bah config --os linux --arch "$ARCH" --label "org.opencontainers.image.base.name=debian:$SUITE" "$ctr"
  bah commit --rm -q "$ctr" "localhost/$name:latest" >/dev/null
}

work=$CACHE/work
mkdir -p "$work"
t0=$SECONDS
log "assembling the bases from $rootfs"
stage_base "$work/base-runtime"
stage_base "$work/base-agent" /usr/bin/wireguard-go /usr/sbin/nft
commit_base wirekube-base-runtime "$work/base-runtime"
commit_base wirekube-base-agent "$work/base-agent"

ctx=$work/context
rm -rf "$ctx" && mkdir -p "$ctx"
for b in "${BINARIES[@]}"; do
  src=$TARGET_DIR/$PROFILE/wirekube-$b
  [[ -x $src ]] || die "$src is missing: build it first (cargo build ${PROFILE/debug/} -p wirekube-$b)"
  strip -o "$ctx/wirekube-$b" "$src"
done

for b in "${BINARIES[@]}"; do
  base=localhost/wirekube-base-runtime:latest
  [[ $b == agent ]] && base=localhost/wirekube-base-agent:latest
  bah bud -q --pull-never --layers=false --build-arg "BASE=$base" --build-arg "VERSION=$VERSION" \
    --platform "linux/$ARCH" -t "$(tag_of "$b")" -f "$ROOT/images/$b.Containerfile" "$ctx" >/dev/null
  log "built $(tag_of "$b") ($PROFILE)"
done
# Dangling intermediate images from earlier runs take space in the vfs store.
bah rmi --prune >/dev/null 2>&1 || true
log "images built in $((SECONDS - t0)) s"
bah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep "wirekube-" >&2 || true
