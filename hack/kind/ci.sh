#!/usr/bin/env bash
# ci.sh: the kind tier as CI runs it (make e2e-kind), on a machine of its own.
#
# Starts the project's dockerd (hack/kind/docker.sh: forwarding off, no NAT), builds the images
# (cached by content under build/kind and dockerd's data root), runs `make e2e-kind` on a fresh
# two-node cluster, and at the end, also on failure or interrupt, deletes the cluster and stops
# dockerd. Where Docker's engine or debootstrap is missing and cannot be installed, it skips with
# one line that says why (exit 0).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=hack/kind
cluster="${ETHA_E2E_KIND_CLUSTER:-etha-e2e}"

skip() { echo "kind tier skipped: $*"; exit 0; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # policy-rc.d exiting 101: the package must not start Debian's dockerd, with Docker's
    # defaults (forwarding and NAT). Ours replaces any other for the install, then it is put back.
    policy=/usr/sbin/policy-rc.d saved=""
    if [ -e "$policy" ]; then saved="$(mktemp)"; cp -a "$policy" "$saved"; fi
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy"
    ok=1
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || ok=0
    if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
    [ "$ok" = 1 ] || skip "could not install ${missing[*]} (apt-get failed)"
  else
    skip "${missing[*]} not installed (needs root and apt-get to install)"
  fi
fi
[ "$(id -u)" = 0 ] || skip "needs root (dockerd, debootstrap)"
command -v go >/dev/null 2>&1 || skip "Go is not installed (the node image's binaries build from Go modules)"

export DOCKER_HOST=unix:///run/etha-docker/docker.sock
started_dockerd=0
cleanup() {
  local code=$?
  if [ -x bin/kind ] && bin/kind get clusters 2>/dev/null | grep -qx "$cluster"; then
    bash "$here/cluster.sh" delete "$cluster" || true
  fi
  [ "$started_dockerd" = 0 ] || bash "$here/docker.sh" stop || true
  exit "$code"
}
trap cleanup EXIT INT TERM
if ! bash "$here/docker.sh" status >/dev/null 2>&1; then started_dockerd=1; fi
if ! why="$(bash "$here/docker.sh" start 2>&1)"; then
  started_dockerd=0
  # A refusal of the network lock (forwarding or NAT on) is a failure, not a skip.
  if grep -q "refusing\|changed the host's network" <<<"$why"; then echo "$why" >&2; exit 1; fi
  skip "dockerd cannot run here: $(tail -1 <<<"$why")"
fi
echo "$why"
start=$SECONDS
make e2e-kind
echo "kind tier: $((SECONDS - start)) s"
