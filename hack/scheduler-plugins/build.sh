#!/usr/bin/env bash
# Builds scheduler-plugins v0.34.7 against the control plane's Kubernetes 1.34.4: its scheduler
# (kube-scheduler with the Coscheduling plugin) and its controller (which keeps PodGroups' status)
# into $DEST (default: bin/), and copies the PodGroup CRD beside them. The gang-scheduling tests
# run them beside the default scheduler. Rebuilds nothing when $DEST is current.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${DEST:-$root/bin}"
what=scheduler-plugins
binaries=(scheduler-plugins-scheduler scheduler-plugins-controller)
# shellcheck source=../gobuild.sh
source "$here/../gobuild.sh"
if gobuild_current && [ -f "$dest/scheduler-plugins-crd.yaml" ] && [ -f "$dest/scheduler-plugins-elasticquota-crd.yaml" ]; then
  echo "$what: $dest is current (${binaries[*]})"
  exit 0
fi
if ! command -v go >/dev/null 2>&1 && [ -z "${CI:-}" ]; then
  # The gang tests then skip with a one-line reason (in CI, where Go is required, they fail).
  echo "$what: 'go' is not on PATH: not built; the gang-scheduling tests will skip." >&2
  exit 0
fi
gobuild_require_go ""
mkdir -p "$dest"
# The Kubernetes version it is built against: kube-scheduler checks its own version against the
# API it emulates (with v0.34.7 here it refuses to start: "emulation version 0.34 is not between
# [1.31, 0.34.0]").
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v1.34.4 -X $pkg.gitMajor=1 -X $pkg.gitMinor=34 -X $pkg.gitTreeState=clean"
done
gobuild scheduler-plugins-scheduler sigs.k8s.io/scheduler-plugins/cmd/scheduler "$ldflags"
gobuild scheduler-plugins-controller sigs.k8s.io/scheduler-plugins/cmd/controller "$ldflags"
module="$(cd "$here" && go list -m -f '{{.Dir}}' sigs.k8s.io/scheduler-plugins)"
# The CRDs its controller watches: PodGroup (Coscheduling) and ElasticQuota (CapacityScheduling).
install -m 0644 "$module/manifests/coscheduling/crd.yaml" "$dest/scheduler-plugins-crd.yaml"
install -m 0644 "$module/manifests/capacityscheduling/crd.yaml" "$dest/scheduler-plugins-elasticquota-crd.yaml"
gobuild_done
