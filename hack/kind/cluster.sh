#!/usr/bin/env bash
# cluster.sh create|delete|load|logs [NAME] : a two-node kind cluster (control plane + worker) on the
# node image that hack/kind/images.sh builds, with a pod network that routes between the nodes.
#
#   create  kind create cluster, then the pod network (below), then waits for both nodes Ready and
#           CoreDNS available. A cluster that does not come up prints each failing node's kubelet
#           and containerd log tails, and is deleted.
#   delete  kind delete cluster.
#   load    IMAGE...: kind load docker-image into every node.
#   logs    the kubelet and containerd log tails of every node.
#
# The pod network: kind's own CNI (kindnetd) is not built here, so the cluster is created with
# networking.disableDefaultCNI, and each node gets the reference bridge plugin on its podCIDR plus
# a route to every other node's podCIDR through that node's address on kind's docker network.
# No masquerading: pods reach each other, the nodes and the Services, and nothing else.
#
# The kubeconfig is written to build/kind/NAME.kubeconfig (never ~/.kube/config).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cmd="${1:-}"; name="${2:-${KIND_CLUSTER_NAME:-etha}}"
kind="${KIND:-$root/bin/kind}"
image="${KIND_NODE_IMAGE:-etha.local/kind-node:v1.34.4}"
kubeconfig="$root/build/kind/$name.kubeconfig"
PATH="$root/bin:$PATH"  # make tools puts kubectl there
kubectl() { command kubectl --kubeconfig "$kubeconfig" "$@"; }

die() { echo "cluster.sh: $*" >&2; exit 1; }
[ -x "$kind" ] || die "kind is missing at $kind: make kind (go install sigs.k8s.io/kind@v0.30.0 into bin/)."
command -v docker >/dev/null || die "docker (the client) is missing: apt-get install docker.io."
docker info >/dev/null 2>&1 || die "no Docker daemon at ${DOCKER_HOST:-the default socket}: bash hack/kind/docker.sh start."

nodes() { "$kind" get nodes --name "$name" 2>/dev/null; }

logs() {
  local node
  for node in $(nodes); do
    echo "=== $node: systemctl --failed"
    docker exec "$node" systemctl --failed --no-legend --no-pager 2>&1 | tail -5 || true
    for unit in kubelet containerd; do
      echo "=== $node: journalctl -u $unit (last 40 lines)"
      docker exec "$node" journalctl -u "$unit" --no-pager -n 40 2>&1 || true
    done
  done
}

network() {
  # node name, InternalIP and podCIDR of every node, as the API server has them
  local rows node ip cidr other oip ocidr
  rows="$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.addresses[?(@.type=="InternalIP")].address} {.spec.podCIDR}{"\n"}{end}')"
  while read -r node ip cidr; do
    [ -n "$cidr" ] || die "node $node has no podCIDR (kube-controller-manager allocates them)."
    docker exec -i "$node" sh -c 'mkdir -p /etc/cni/net.d && cat > /etc/cni/net.d/10-etha-bridge.conflist' <<EOF
{
  "cniVersion": "1.0.0",
  "name": "etha-pods",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    while read -r other oip ocidr; do
      [ "$other" = "$node" ] && continue
      docker exec "$node" ip route replace "$ocidr" via "$oip"
    done <<<"$rows"
    echo "cluster.sh: $node ($ip): pods on $cidr, bridge cni0, routes to the other nodes' pods"
  done <<<"$rows"
}

create() {
  if nodes | grep -q .; then echo "cluster.sh: cluster $name exists"; return 0; fi
  bash "$here/docker.sh" check >/dev/null
  docker image inspect "$image" >/dev/null 2>&1 || die "node image $image is missing: make kind-images."
  mkdir -p "$(dirname "$kubeconfig")"
  local config start=$SECONDS
  config="$(mktemp)"
  cat > "$config" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
nodes:
- role: control-plane
- role: worker
kubeadmConfigPatches:
- |
  kind: ClusterConfiguration
  etcd:
    local:
      imageTag: 3.6.4-0
EOF
  if ! "$kind" create cluster --name "$name" --image "$image" --config "$config" \
      --kubeconfig "$kubeconfig" --retain; then
    rm -f "$config"
    echo "cluster.sh: kind create cluster failed; the nodes' logs:" >&2
    logs >&2
    "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
    exit 1
  fi
  rm -f "$config"
  local created=$((SECONDS - start))
  if ! { network && kubectl wait --for=condition=Ready nodes --all --timeout=120s \
      && kubectl -n kube-system rollout status deployment/coredns --timeout=120s; }; then
    echo "cluster.sh: cluster $name did not come up:" >&2
    kubectl get nodes,pods -A -o wide >&2 || true
    logs >&2
    "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
    exit 1
  fi
  # Both nodes run workloads: the e2e tests place a job's master and its workers apart.
  kubectl taint nodes --all node-role.kubernetes.io/control-plane:NoSchedule- >/dev/null 2>&1 || true
  bash "$here/docker.sh" check >/dev/null
  echo "cluster.sh: cluster $name up: kind create cluster $created s, Ready with CoreDNS $((SECONDS - start)) s; KUBECONFIG=$kubeconfig"
}

case "$cmd" in
  create) create ;;
  delete) "$kind" delete cluster --name "$name"; rm -f "$kubeconfig" ;;
  load) shift 2; for i in "$@"; do "$kind" load docker-image "$i" --name "$name"; done ;;
  logs) logs ;;
  kubeconfig) echo "$kubeconfig" ;;
  *) echo "usage: $0 create|delete|load|logs|kubeconfig [NAME] [IMAGE...]" >&2; exit 2 ;;
esac
