#!/usr/bin/env bash
# rootfs.sh NAME PACKAGE... : a Debian bookworm root file system made with debootstrap
# (--variant=minbase) into build/kind/rootfs/NAME, with PACKAGE... installed. Nothing is pulled
# from a container registry: debootstrap fetches .debs from the Debian mirror apt uses here. Kept
# while its stamp (this script, the package list, the mirror) matches; the .debs are cached in
# build/kind/debs, so a rebuild after a package change downloads only what is new.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
name="$1"; shift
packages="$(printf '%s\n' "$@" | sort -u | paste -sd, -)"
out="$root/build/kind/rootfs/$name"
suite=bookworm
mirror="${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
mirror="${mirror:-http://deb.debian.org/debian}"
want="$( (cat "$0"; echo "$suite $mirror $packages") | sha256sum | cut -d' ' -f1)"
if [ -f "$out.stamp" ] && [ "$(cat "$out.stamp")" = "$want" ] && [ -d "$out" ]; then
  echo "rootfs $name: current"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "rootfs: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "rootfs: debootstrap needs root" >&2; exit 1; }
start=$SECONDS
rm -rf "$out" "$out.stamp" "$out.tmp"
mkdir -p "$root/build/kind/debs" "$out.tmp"
echo "rootfs $name: debootstrap $suite from $mirror with $packages"
if ! debootstrap --variant=minbase --cache-dir="$root/build/kind/debs" --include="$packages" \
    "$suite" "$out.tmp" "$mirror" > "$out.log" 2>&1; then
  tail -20 "$out.log" >&2
  echo "rootfs $name: debootstrap failed (full log: $out.log)" >&2
  exit 1
fi
# Slim it: apt lists and caches, docs, man pages; nothing at run time reads them.
rm -rf "$out.tmp"/var/lib/apt/lists/* "$out.tmp"/var/cache/apt/* "$out.tmp"/usr/share/doc/* \
  "$out.tmp"/usr/share/man/* "$out.tmp"/usr/share/info/* "$out.tmp"/var/log/*.log
mv "$out.tmp" "$out"
echo "$want" > "$out.stamp"
echo "rootfs $name: made in $((SECONDS - start)) s ($(du -sm "$out" | cut -f1) MB)"
