#!/usr/bin/env bash
# Builds a real Kubernetes control plane from Go modules: kube-apiserver, kube-controller-manager,
# kube-scheduler (k8s.io/kubernetes v1.34.4) and etcd (go.etcd.io/etcd/server/v3 v3.6.4) into
# $DEST (default: bin/ at the repository root). Rebuilds nothing when $DEST is current (a stamp
# records the hash of this module and script). With KUBEBUILDER_ASSETS naming a folder that holds
# the four binaries (envtest's convention), builds nothing at all.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${DEST:-$root/bin}"
binaries=(kube-apiserver kube-controller-manager kube-scheduler etcd)

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  missing=()
  for b in "${binaries[@]}"; do [ -x "$KUBEBUILDER_ASSETS/$b" ] || missing+=("$b"); done
  if [ ${#missing[@]} -eq 0 ]; then
    echo "control plane: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS (nothing to build)"
    exit 0
  fi
  echo "control plane: KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks ${missing[*]}; building into $dest" >&2
fi

what=control-plane
# shellcheck source=../gobuild.sh
source "$here/../gobuild.sh"
if gobuild_current; then
  echo "control plane: $dest is current (${binaries[*]})"
  exit 0
fi
gobuild_require_go ", or point KUBEBUILDER_ASSETS at a folder with ${binaries[*]} (setup-envtest use 1.34.x -p path)"

mkdir -p "$dest"
k8s_version=v1.34.4
build_date="$(date -u -d @"${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%dT%H:%M:%SZ)"
ver="k8s.io/component-base/version"
cver="k8s.io/client-go/pkg/version"
ldflags="-s -w"
for pkg in "$ver" "$cver"; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

gobuild etcd go.etcd.io/etcd/server/v3 "$ldflags"
gobuild kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$ldflags"
gobuild kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$ldflags"
gobuild kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$ldflags"
gobuild_done
"$dest/kube-apiserver" --version
# sed, not head: head leaves as soon as it has its line, and etcd, still writing, dies of
# SIGPIPE, which pipefail turns into a failed build (seen in CI: make's Error 141).
"$dest/etcd" --version | sed -n 1p
