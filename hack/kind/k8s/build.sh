#!/usr/bin/env bash
# Builds the Kubernetes binaries of kind's node image from Go modules (k8s.io/kubernetes v1.34.4,
# etcd v3.6.4): kubelet, kubeadm, kubectl, kube-proxy and the control plane, statically linked,
# into $DEST (default: build/kind/bin). Rebuilds nothing when $DEST is current (a stamp records
# the hash of this module and script).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
dest="${DEST:-$root/build/kind/bin}"
binaries=(kubelet kubeadm kubectl kube-proxy kube-apiserver kube-controller-manager kube-scheduler etcd)

what=kind-k8s
# shellcheck source=../../gobuild.sh
source "$here/../../gobuild.sh"
if gobuild_current; then
  echo "$what: $dest is current (${binaries[*]})"
  exit 0
fi
gobuild_require_go ""

mkdir -p "$dest"
k8s_version=v1.34.4
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || true)}"
build_date="$(date -u -d @"${epoch:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=34"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

for b in "${binaries[@]}"; do
  case "$b" in
    etcd) pkg=go.etcd.io/etcd/server/v3 ;;
    *) pkg="k8s.io/kubernetes/cmd/$b" ;;
  esac
  gobuild "$b" "$pkg" "$ldflags"
done
# go build -mod=mod may have completed go.sum on the way: stamp the module as it is now.
# shellcheck disable=SC2034 # read by gobuild_done
want="$(cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$here/build.sh" "$here/../../gobuild.sh" | sha256sum | cut -d' ' -f1)"
gobuild_done
"$dest/kubelet" --version
