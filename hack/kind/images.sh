#!/usr/bin/env bash
# images.sh (make kind-images): every image the kind tier runs, built offline and cached by content.
#
#   kind node image      etha.local/kind-node:v1.34.4: a debootstrap'd Debian rootfs, kind's own base
#                        files (the kind v0.30.0 module's images/base/files), kubelet, kubeadm and
#                        kubectl built from hack/kind/k8s, and in its containerd the images kubeadm
#                        runs: kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy,
#                        etcd, CoreDNS and pause, each made from a binary built here.
#   the project's images ghcr.io/etha-io/etha-operator:0.1.0, ghcr.io/etha-io/etha-runtime:0.1.0:
#                        images/*/Dockerfile built with BASE_IMAGE = a Debian rootfs that already
#                        holds /opt/etha (python3.11 from Debian; torch and etha's dependencies
#                        installed from PyPI on the host into the rootfs), ETHA_STAGE=prebuilt, so
#                        `docker build` adds only metadata and the examples.
#
# No image is pulled and no RUN step runs: root file systems are made on the host (debootstrap, pip
# in a chroot with --no-index from a wheelhouse downloaded by the host's pip), then `docker import`.
# Each image carries a stamp of its inputs (build/kind/stamps/); a current one is not rebuilt.
# Needs: root, go, gcc, debootstrap, a running dockerd (hack/kind/docker.sh start), DOCKER_HOST.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$root/build/kind"
bin="$out/bin"
stamps="$out/stamps"
mkdir -p "$bin" "$stamps"

K8S_VERSION=v1.34.4
ETCD_TAG=3.6.4-0 # the etcd hack/kind/k8s builds (the kind config points kubeadm at this tag)
COREDNS_VERSION=v1.12.1
PAUSE_TAG=3.10.1
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
ETHA_TAG="${ETHA_TAG:-0.1.0}"
NODE_IMAGE="${KIND_NODE_IMAGE:-etha.local/kind-node:$K8S_VERSION}"
KIND_VERSION=v0.30.0
HOST_PYTHON="${HOST_PYTHON:-python3}"
# The project's venv (make venv): its torch is the source of the runtime image's torch (below).
VENV_PYTHON="${VENV_PYTHON:-$root/.venv/bin/python}"

log() { echo "kind-images: $*"; }
die() { echo "kind-images: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"; }

# The machine may be shared: with $ETHA_QUIET_FILE present, wait before starting a heavy step.
wait_quiet() {
  [ -n "${ETHA_QUIET_FILE:-}" ] || return 0
  while [ -e "$ETHA_QUIET_FILE" ]; do log "waiting: $ETHA_QUIET_FILE exists"; sleep 30; done
}

# hash_of PATH|STRING...: one hash of files' contents (directories walked in order) and strings.
hash_of() {
  local x
  for x in "$@"; do
    if [ -d "$x" ]; then
      (cd "$x" && find . \( -type f -o -type l \) -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    elif [ -f "$x" ]; then
      sha256sum < "$x"
    else
      echo "$x"
    fi
  done | sha256sum | cut -d' ' -f1
}

# current NAME HASH [IMAGE]: 0 if the stamp says NAME was built from HASH (and IMAGE exists).
current() {
  [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ] || return 1
  [ -z "${3:-}" ] || docker image inspect "$3" >/dev/null 2>&1
}
stamp() { echo "$2" > "$stamps/$1"; }

# import_dir DIR TAG CHANGE...: DIR's tree as a one-layer image with the given Dockerfile metadata.
import_dir() {
  local dir="$1" tag="$2"; shift 2
  local changes=() c
  for c in "$@"; do changes+=(--change "$c"); done
  tar -C "$dir" --numeric-owner --xattrs -cf - . | docker import "${changes[@]}" - "$tag" >/dev/null
}

# in_root DIR CMD...: CMD in a chroot, with a clean environment (nothing of the host's pip settings).
in_root() { local dir="$1"; shift; env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$dir" "$@"; }

timed() { # timed LABEL CMD...: runs CMD, logs how long it took
  local start=$SECONDS label="$1"; shift
  "$@"
  log "$label: $((SECONDS - start)) s"
}

need go "install Go >= 1.24 (apt-get install golang-go, or https://go.dev/dl)."
need gcc "apt-get install gcc libc6-dev (pause is a static C program)."
need debootstrap "apt-get install debootstrap."
need docker "apt-get install docker.io (the client), then start the daemon: bash hack/kind/docker.sh start."
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, dockerd)."
docker info >/dev/null 2>&1 || die "no Docker daemon at ${DOCKER_HOST:-the default socket}: bash hack/kind/docker.sh start, then export DOCKER_HOST=unix:///run/etha-docker/docker.sock."
total_start=$SECONDS
what="${1:-all}" # all | node (the node image and what it holds) | etha (the project's two images)
case "$what" in all|node|etha) ;; *) die "usage: $0 [all|node|etha]" ;; esac
rootfs="$out/rootfs"
base_packages=(python3 python3-venv iptables conntrack ca-certificates)
# docker build runs BuildKit (it skips the stages a build does not use); a client without buildx
# (Docker >= 23 needs the plugin) falls back to Debian's docker.io client, which has it built in.
build_cli=docker
if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then build_cli=/usr/bin/docker; fi

if [ "$what" != etha ]; then
# --- binaries ---------------------------------------------------------------------------------
wait_quiet
timed "kubernetes binaries" bash "$here/k8s/build.sh"

coredns_hash() { hash_of "$here/coredns/go.mod" "$here/coredns/go.sum" "coredns-$COREDNS_VERSION"; }
if ! { current coredns-bin "$(coredns_hash)" && [ -x "$bin/coredns" ]; }; then
  wait_quiet
  log "building coredns $COREDNS_VERSION"
  start=$SECONDS
  (cd "$here/coredns" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" go build -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
    -o "$bin/coredns.tmp" github.com/coredns/coredns) || die "building CoreDNS failed (see above); Go's module proxy must be reachable."
  mv "$bin/coredns.tmp" "$bin/coredns"
  # go build -mod=mod may have completed go.sum: stamp the module as it is now.
  stamp coredns-bin "$(coredns_hash)"
  log "coredns built in $((SECONDS - start)) s ($(du -m "$bin/coredns" | cut -f1) MB)"
fi

pause_src="$(cd "$here/k8s" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
[ -f "$pause_src" ] || die "pause.c not found at $pause_src (go mod download in hack/kind/k8s)."
if ! { current pause-bin "$(hash_of "$pause_src")" && [ -x "$bin/pause" ]; }; then
  gcc -Os -static -DVERSION="$PAUSE_TAG" -o "$bin/pause" "$pause_src" && strip "$bin/pause"
  stamp pause-bin "$(hash_of "$pause_src")"
fi

kind_dir="$(cd / && GOFLAGS="" go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
[ -d "$kind_dir/images/base/files" ] || die "kind $KIND_VERSION's module has no images/base/files (at '$kind_dir')."

# --- root file systems ------------------------------------------------------------------------
wait_quiet
timed "rootfs node" bash "$here/rootfs.sh" node systemd conntrack iptables nftables iproute2 ethtool \
  util-linux mount kmod libseccomp2 pigz bash ca-certificates procps containerd runc containernetworking-plugins
timed "rootfs base" bash "$here/rootfs.sh" base "${base_packages[@]}"

# --- images from static binaries --------------------------------------------------------------
declare -A static_images=(
  [kube-apiserver]="registry.k8s.io/kube-apiserver:$K8S_VERSION"
  [kube-controller-manager]="registry.k8s.io/kube-controller-manager:$K8S_VERSION"
  [kube-scheduler]="registry.k8s.io/kube-scheduler:$K8S_VERSION"
  [etcd]="registry.k8s.io/etcd:$ETCD_TAG"
  [coredns]="registry.k8s.io/coredns/coredns:$COREDNS_VERSION"
  [pause]="registry.k8s.io/pause:$PAUSE_TAG"
)
for b in "${!static_images[@]}"; do
  tag="${static_images[$b]}"
  h="$(hash_of "$bin/$b" "static-image-1")"
  current "image-$b" "$h" "$tag" && continue
  tree="$(mktemp -d)"
  mkdir -p "$tree/usr/local/bin" "$tree/tmp" "$tree/etc" && chmod 1777 "$tree/tmp"
  install -m 0755 "$bin/$b" "$tree/usr/local/bin/$b"
  echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' > "$tree/etc/passwd"
  entry="/usr/local/bin/$b"
  if [ "$b" = coredns ]; then ln -s usr/local/bin/coredns "$tree/coredns"; entry=/coredns; fi
  if [ "$b" = pause ]; then ln -s usr/local/bin/pause "$tree/pause"; entry=/pause; fi
  import_dir "$tree" "$tag" "ENV PATH=/usr/local/bin:/usr/bin:/bin" "ENTRYPOINT [\"$entry\"]"
  rm -rf "$tree"
  stamp "image-$b" "$h"
  log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
done

# kube-proxy: the binary on the Debian base (it runs iptables and conntrack).
tag="registry.k8s.io/kube-proxy:$K8S_VERSION"
h="$(hash_of "$bin/kube-proxy" "$rootfs/base.stamp" "kube-proxy-image-1")"
if ! current image-kube-proxy "$h" "$tag"; then
  tree="$(mktemp -d)"
  cp -a "$rootfs/base/." "$tree/"
  install -m 0755 "$bin/kube-proxy" "$tree/usr/local/bin/kube-proxy"
  import_dir "$tree" "$tag" "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" 'ENTRYPOINT ["/usr/local/bin/kube-proxy"]'
  rm -rf "$tree"
  stamp image-kube-proxy "$h"
  log "$tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
fi

# --- the node image ---------------------------------------------------------------------------
node_images=("${static_images[@]}" "registry.k8s.io/kube-proxy:$K8S_VERSION")
image_ids=()
for tag in "${node_images[@]}"; do image_ids+=("$tag=$(docker image inspect -f '{{.Id}}' "$tag")"); done
node_hash="$(hash_of "$rootfs/node.stamp" "$kind_dir/images/base/files" "$here/node" "$bin/kubelet" "$bin/kubeadm" "$bin/kubectl" "$0" "${image_ids[@]}")"
if ! current node-image "$node_hash" "$NODE_IMAGE"; then
  wait_quiet
  start=$SECONDS
  log "assembling $NODE_IMAGE"
  tree="$out/node-tree"
  rm -rf "$tree"
  cp -a "$rootfs/node" "$tree"
  files="$kind_dir/images/base/files"
  # As kind's images/base/Dockerfile: scripts 0755, the rest 0644.
  install -d -m 0755 "$tree/kind/bin" "$tree/LICENSES" "$tree/etc/kubernetes/manifests"
  install -m 0755 "$files"/usr/local/bin/* "$tree/usr/local/bin/"
  install -m 0644 "$files"/kind/README.txt "$tree/kind/"
  install -m 0755 "$files"/kind/bin/* "$tree/kind/bin/"
  install -m 0644 "$files"/LICENSES/* "$tree/LICENSES/"
  install -m 0644 "$files"/etc/crictl.yaml "$tree/etc/"
  install -d -m 0755 "$tree/etc/containerd" "$tree/etc/default" "$tree/etc/sysctl.d" "$tree/etc/systemd/system/kubelet.service.d"
  install -m 0644 "$files"/etc/containerd/* "$tree/etc/containerd/"
  install -m 0644 "$files"/etc/default/* "$tree/etc/default/"
  install -m 0644 "$files"/etc/sysctl.d/* "$tree/etc/sysctl.d/"
  install -m 0644 "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice "$tree/etc/systemd/system/"
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$tree/etc/systemd/system/kubelet.service.d/"
  # kind's units run its own containerd build from /usr/local/bin; this one is Debian's.
  ln -sf /usr/bin/containerd /usr/bin/ctr /usr/bin/containerd-shim-runc-v2 "$tree/usr/local/bin/"
  # Debian's CNI plugins (bridge, host-local, loopback, ...) where containerd looks for them.
  install -d "$tree/opt/cni" && ln -sfn /usr/lib/cni "$tree/opt/cni/bin"
  # Two changes to kind's containerd config. restrict_oom_score_adj: where the bounding set lacks
  # CAP_SYS_RESOURCE (see hack/kind/etha-runc) a static pod's negative oom_score_adj fails with
  # "can't get final child's PID from pipe"; with it, containerd clamps the value to its own.
  # The sandbox image: the pause tag kubeadm v1.34 names, built here.
  sed -i -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
    -e "s#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$PAUSE_TAG\"#" "$tree/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$tree/etc/containerd/config.toml" || die "kind's containerd config changed: restrict_oom_score_adj not set."
  # The base OCI spec, as kind makes it (ctr oci spec, no rlimits), without kind's createContainer
  # hook (mount-product-files.sh needs jq; it only gives each container its own product_uuid).
  ctr oci spec | "$HOST_PYTHON" -c 'import json, sys; s = json.load(sys.stdin); s["process"].pop("rlimits", None); json.dump(s, sys.stdout, indent=2)' > "$tree/etc/containerd/cri-base.json"
  # The units, as kind's Dockerfile enables them.
  find "$tree/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
  rm -f "$tree"/lib/systemd/system/multi-user.target.wants/* "$tree"/etc/systemd/system/*.wants/* \
    "$tree"/lib/systemd/system/local-fs.target.wants/* "$tree"/lib/systemd/system/sockets.target.wants/*udev* \
    "$tree"/lib/systemd/system/sockets.target.wants/*initctl* "$tree"/lib/systemd/system/basic.target.wants/*
  echo "ReadKMsg=no" >> "$tree/etc/systemd/journald.conf"
  ln -sf /lib/systemd/systemd "$tree/sbin/init"
  systemctl --root="$tree" enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
  systemctl --root="$tree" mask systemd-binfmt.service >/dev/null 2>&1
  for b in kubelet kubeadm kubectl; do install -m 0755 "$bin/$b" "$tree/usr/bin/$b"; done
  echo "$K8S_VERSION" > "$tree/kind/version"
  # Every image kubeadm and the cluster's add-ons name, in the node's containerd (k8s.io
  # namespace), unpacked at first use, as `kind build node-image` leaves them.
  ctrd="$(mktemp -d)"
  cat > "$ctrd/config.toml" <<EOF
version = 2
root = "$tree/var/lib/containerd"
state = "$ctrd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$ctrd/containerd.sock"
EOF
  containerd --config "$ctrd/config.toml" > "$ctrd/log" 2>&1 &
  ctrd_pid=$!
  for _ in $(seq 1 50); do [ -S "$ctrd/containerd.sock" ] && break; sleep 0.2; done
  for tag in "${node_images[@]}"; do
    docker save "$tag" | ctr --address "$ctrd/containerd.sock" -n k8s.io images import --no-unpack --all-platforms - >/dev/null \
      || { kill "$ctrd_pid"; cat "$ctrd/log" >&2; die "importing $tag into the node's containerd failed."; }
  done
  ctr --address "$ctrd/containerd.sock" -n k8s.io images ls -q
  kill "$ctrd_pid"; wait "$ctrd_pid" 2>/dev/null || true
  rm -rf "$ctrd"
  import_dir "$tree" "$NODE_IMAGE-rootfs" "ENV container=docker" \
    'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]'
  rm -rf "$tree"
  # docker import takes no STOPSIGNAL: a metadata-only build adds it (systemd stops on SIGRTMIN+3).
  printf 'FROM %s\nSTOPSIGNAL SIGRTMIN+3\n' "$NODE_IMAGE-rootfs" | DOCKER_BUILDKIT=0 docker build -q -t "$NODE_IMAGE" - >/dev/null \
    || die "docker build of $NODE_IMAGE (metadata only) failed."
  docker rmi "$NODE_IMAGE-rootfs" >/dev/null
  stamp node-image "$node_hash"
  log "$NODE_IMAGE built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
fi

fi

if [ "$what" != node ]; then
# --- the project's images ---------------------------------------------------------------------
# The wheels, downloaded by the host's pip once (build/kind/wheels), then installed with --no-index.
wheels="$out/wheels"
etha_src_hash="$(hash_of "$root/pyproject.toml" "$root/README.md" "$root/etha")"
if ! current etha-wheel "$etha_src_hash" || ! ls "$wheels"/etha-*.whl >/dev/null 2>&1; then
  mkdir -p "$wheels"
  rm -f "$wheels"/etha-*.whl
  build_dir="$(mktemp -d)"
  cp -a "$root/pyproject.toml" "$root/README.md" "$root/etha" "$build_dir/"
  "$HOST_PYTHON" -m pip wheel -q --no-deps -w "$wheels" "$build_dir" || die "building etha's wheel failed."
  rm -rf "$build_dir"
  stamp etha-wheel "$etha_src_hash"
fi
etha_wheel="$(ls "$wheels"/etha-*.whl)"

# torch for the runtime image: PyPI's Linux torch is the CUDA build (2.7 GB of NVIDIA libraries and
# triton beside its own 1.1 GB) and PyTorch's CPU index is out of reach here, so the wheel is made
# from the venv's torch with the NVIDIA libraries as stubs (hack/kind/torch_nocuda.py says why
# that is safe); no second download of torch.
torch_wheels="$out/torch-wheel"
torch_hash() { hash_of "$here/torch_nocuda.py" "$("$VENV_PYTHON" -c 'import torch; print(torch.__file__, torch.__version__)')"; }
[ -x "$VENV_PYTHON" ] || die "$VENV_PYTHON is missing: make venv (its torch becomes the runtime image's)."
if ! current torch-wheel "$(torch_hash)" || ! ls "$torch_wheels"/torch-*.whl >/dev/null 2>&1; then
  wait_quiet
  rm -rf "$torch_wheels"
  timed "torch+nocuda wheel" "$VENV_PYTHON" "$here/torch_nocuda.py" "$torch_wheels" >/dev/null || die "making the torch+nocuda wheel failed."
  stamp torch-wheel "$(torch_hash)"
fi
torch_req="torch==$(basename "$torch_wheels"/torch-*.whl | cut -d- -f2)"

# etha_image NAME EXTRA REQUIREMENTS...: rootfs base + /opt/etha (a venv made in the chroot, pip
# there with --no-index), imported; then the Dockerfile for metadata.
etha_image() {
  local name="$1" extra="$2"; shift 2
  local tag="ghcr.io/etha-io/etha-$name:$ETHA_TAG" rootfs_tag="etha.local/etha-$name-rootfs:$ETHA_TAG"
  local h; h="$(hash_of "$rootfs/base.stamp" "$etha_wheel" "$root/images/$name/Dockerfile" "$root/examples" "$extra" "$@" "$0" "etha-image-2")"
  current "image-etha-$name" "$h" "$tag" && return 0
  wait_quiet
  local start=$SECONDS
  log "building $tag"
  "$HOST_PYTHON" -m pip download -q --only-binary=:all: --find-links "$torch_wheels" -d "$wheels" "$@" "${etha_wheel}[$extra]" \
    || die "downloading the wheels for $name failed (PyPI must be reachable)."
  rm -f "$wheels"/torch-*+nocuda-*.whl # pip download copies it from $torch_wheels: keep one
  local tree="$out/etha-$name-tree"
  rm -rf "$tree" && cp -a "$rootfs/base" "$tree"
  mkdir -p "$tree/wheels" "$tree/torch-wheel"
  mount --bind "$wheels" "$tree/wheels"
  mount --bind "$torch_wheels" "$tree/torch-wheel"
  local ok=0
  in_root "$tree" /usr/bin/python3 -m venv /opt/etha \
    && in_root "$tree" /opt/etha/bin/pip install -q --no-index --find-links /wheels --find-links /torch-wheel --no-compile "$@" "/wheels/$(basename "$etha_wheel")[$extra]" \
    && ok=1
  # Byte-code ahead of time (the images run with PYTHONDONTWRITEBYTECODE and may have a read-only
  # root); a few of torch's and triton's template files are not Python, so failures are expected.
  [ $ok = 1 ] && { in_root "$tree" /opt/etha/bin/python -m compileall -q -j 0 /opt/etha >/dev/null 2>&1 || true; }
  umount "$tree/wheels" "$tree/torch-wheel"; rmdir "$tree/wheels" "$tree/torch-wheel"
  [ $ok = 1 ] || die "installing etha[$extra] into the $name rootfs failed."
  in_root "$tree" /opt/etha/bin/pip uninstall -q -y pip >/dev/null 2>&1 || true
  rm -rf "$tree/root/.cache"
  import_dir "$tree" "$rootfs_tag"
  rm -rf "$tree"
  DOCKER_BUILDKIT=1 "$build_cli" build -q -f "$root/images/$name/Dockerfile" -t "$tag" \
    --build-arg "BASE_IMAGE=$rootfs_tag" --build-arg ETHA_STAGE=prebuilt "$root" >/dev/null \
    || die "docker build of $tag failed."
  stamp "image-etha-$name" "$h"
  log "$tag built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}
bash "$here/rootfs.sh" base "${base_packages[@]}"
etha_image operator operator
etha_image runtime master "$torch_req"
# Each image starts, offline: the operator imports, torch imports and serves a TCPStore.
docker run --rm --network none --entrypoint python "ghcr.io/etha-io/etha-operator:$ETHA_TAG" -c 'import etha.operator' \
  || die "the operator image does not import etha.operator."
docker run --rm --network none --entrypoint python "ghcr.io/etha-io/etha-runtime:$ETHA_TAG" -c '
import datetime, torch, etha.master.__main__, etha.kvstore.server
s = torch.distributed.TCPStore("127.0.0.1", 0, 1, True, timeout=datetime.timedelta(seconds=10))
s.set("k", "v"); assert s.get("k") == b"v"
assert not torch.cuda.is_available()
print("kind-images: runtime image: torch", torch.__version__, "imports, a TCPStore serves, no CUDA")' \
  || die "the runtime image's torch does not work."
fi

log "all images current in $((SECONDS - total_start)) s"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "etha|registry.k8s.io" | sort
