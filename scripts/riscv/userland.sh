#!/usr/bin/env bash
# Build (or reuse) a Debian trixie riscv64 userland with the fedcore client's packages, runnable
# under qemu-riscv64-static without binfmt_misc (reference riscv.md §3), and print its path.
#
#   bash scripts/riscv/userland.sh          build if missing; print the root folder
#
# The root lives outside the source tree, in
#   ${FEDCORE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/fedcore}/riscv64-trixie-<key>
# where <key> hashes packages.txt and this script, so a change of either builds a fresh root
# (older roots are removed). A root is built in a temporary folder and renamed into place
# when complete, so an interrupted build never leaves a half root that looks usable.
# Installs qemu-user-static and mmdebstrap with apt-get when absent (as root, or with sudo).
# The Debian mirror is the host's (first `URIs:` of debian.sources, else the first `deb` line
# of sources.list); FEDCORE_DEBIAN_MIRROR overrides it. About 610 MB; ~30 s on a 2-core host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

cache=${FEDCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedcore}
key=$(cat "$here/packages.txt" "$here/userland.sh" | sha256sum | cut -c1-12)
root="$cache/riscv64-trixie-$key"
[ $# -eq 0 ] || { echo "usage: userland.sh (no arguments)" >&2; exit 2; }

if [ -f "$root/.fedcore-complete" ]; then
    echo "$root"
    exit 0
fi

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
if ! command -v qemu-riscv64-static >/dev/null || ! command -v mmdebstrap >/dev/null; then
    echo "userland.sh: installing qemu-user-static and mmdebstrap" >&2
    $sudo_cmd apt-get update -qq >&2
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static mmdebstrap >&2
fi

mirror=${FEDCORE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $2 !~ /^\[/ { print $2; exit }' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || { echo "userland.sh: no Debian mirror found; set FEDCORE_DEBIAN_MIRROR" >&2; exit 1; }

mkdir -p "$cache"
work=$(mktemp -d "$cache/riscv64-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cat > "$work/trixie.sources" <<SRC
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
packages=$(grep -v '^\s*\(#\|$\)' "$here/packages.txt" | paste -sd, -)
echo "userland.sh: building riscv64 trixie root ($packages) from $mirror" >&2
# Extract mode unpacks the packages and runs no maintainer scripts (they would need riscv64
# binaries to run), so the links those scripts make are added by hand below.
mmdebstrap --quiet --variant=extract --arch=riscv64 --include="$packages" \
    trixie "$work/root" "$work/trixie.sources" >&2

new="$work/root"
for d in bin sbin lib; do [ -e "$new/$d" ] || ln -s "usr/$d" "$new/$d"; done          # usr-merge
ln -sf riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1 "$new/usr/lib/ld-linux-riscv64-lp64d.so.1"  # PT_INTERP
ln -sf blas/libblas.so.3 "$new/usr/lib/riscv64-linux-gnu/libblas.so.3"                    # alternatives
ln -sf lapack/liblapack.so.3 "$new/usr/lib/riscv64-linux-gnu/liblapack.so.3"
python=$(cd "$new/usr/bin" && ls python3.[0-9]* | grep -E '^python3\.[0-9]+$' | sort -V | tail -n 1)
ln -sf "$python" "$new/usr/bin/python3"
qemu-riscv64-static -L "$new" "$new/usr/bin/python3" -c 'import platform, sys; assert platform.machine() == "riscv64", platform.machine()' \
    || { echo "userland.sh: the new root's python does not run under qemu-riscv64-static" >&2; exit 1; }
touch "$new/.fedcore-complete"

for old in "$cache"/riscv64-trixie-*; do
    [ "$old" = "$root" ] || [ ! -d "$old" ] || rm -rf "$old"
done
[ -e "$root" ] || mv "$new" "$root"   # a concurrent build may have finished first
echo "userland.sh: riscv64 root ready at $root ($(du -sh "$root" | cut -f1))" >&2
echo "$root"
