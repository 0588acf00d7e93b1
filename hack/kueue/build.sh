#!/usr/bin/env bash
# Builds Kueue's manager (sigs.k8s.io/kueue v0.17.0, cmd/kueue) into $DEST/kueue (default: bin/)
# and copies what the tests apply beside it: its CRDs (kueue-crds/, the module's
# config/components/crd/bases) and its webhook configurations (kueue-webhooks.yaml, the module's
# config/components/webhook/manifests.yaml), so the tests need no Go. Rebuilds nothing when $DEST
# is current.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
dest="${DEST:-$root/bin}"
what=kueue
binaries=(kueue)
# shellcheck source=../gobuild.sh
source "$here/../gobuild.sh"
if gobuild_current && [ -f "$dest/kueue-webhooks.yaml" ] && [ -f "$dest/kueue-crds/kueue.x-k8s.io_workloads.yaml" ]; then
  echo "$what: $dest is current (${binaries[*]})"
  exit 0
fi
if ! command -v go >/dev/null 2>&1 && [ -z "${CI:-}" ]; then
  # The Kueue tests then skip with a one-line reason (in CI, where Go is required, they fail).
  echo "$what: 'go' is not on PATH: not built; the Kueue tests will skip." >&2
  exit 0
fi
gobuild_require_go ""
mkdir -p "$dest"
version=v0.17.0
build_date="$(date -u -d @"${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}" +%Y-%m-%dT%H:%M:%SZ)"
gobuild kueue sigs.k8s.io/kueue/cmd/kueue \
  "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$version -X sigs.k8s.io/kueue/pkg/version.BuildDate=$build_date"
module="$(cd "$here" && GOFLAGS="${GOFLAGS:-} -mod=mod" go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)"
rm -rf "$dest/kueue-crds"
mkdir -p "$dest/kueue-crds"
install -m 0644 "$module"/config/components/crd/bases/*.yaml "$dest/kueue-crds/"
install -m 0644 "$module/config/components/webhook/manifests.yaml" "$dest/kueue-webhooks.yaml"
gobuild_done
