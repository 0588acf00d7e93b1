#!/usr/bin/env bash
# docker.sh start|stop|status|check : the project's own dockerd, started so that no packet from a
# container can leave this machine.
#
# Docker's defaults turn on IP forwarding and masquerade every bridge to the outside. Here dockerd
# runs with its own config file, data root and socket, and with "ip-forward": false,
# "ip-masq": false, "iptables": false, "ip6tables": false; host forwarding is switched off before
# it starts. A container then reaches only the host and the other containers on its bridge; a
# stray packet has nowhere to go but the host, which drops it. `start` refuses to go on if
# forwarding is on or a NAT rule masquerades, before dockerd starts and again once it runs
# (`check` repeats the test: it reads the sysctls and the NAT tables, it never sends traffic).
#
# Use it with:  export DOCKER_HOST=unix:///run/etha-docker/docker.sock   (`docker.sh env` prints it)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
run="${ETHA_DOCKER_RUN:-/run/etha-docker}"          # socket, pid file, config, exec root
data="${ETHA_DOCKER_DATA:-/var/lib/etha-docker}"    # images and containers (kept: the cache)
sock="$run/docker.sock"
pidfile="$run/dockerd.pid"
log="${ETHA_DOCKER_LOG:-$run/dockerd.log}"
export DOCKER_HOST="unix://$sock"

die() { echo "docker.sh: $*" >&2; exit 1; }

# 0 (and nothing printed) when the host forwards nothing and no NAT rule masquerades.
unsafe() {
  local bad=0 v
  for key in net.ipv4.ip_forward net.ipv6.conf.all.forwarding; do
    v="$(sysctl -n "$key" 2>/dev/null || echo "?")"
    if [ "$v" != 0 ]; then echo "$key is $v (must be 0)"; bad=1; fi
  done
  local tool rules
  for tool in iptables-nft iptables-legacy ip6tables-nft ip6tables-legacy; do
    command -v "$tool" >/dev/null 2>&1 || continue
    rules="$("$tool" -t nat -S 2>/dev/null || true)"
    if grep -qiE 'MASQUERADE|SNAT' <<<"$rules"; then
      echo "$tool's nat table masquerades:"; grep -iE 'MASQUERADE|SNAT' <<<"$rules" | sed 's/^/  /'; bad=1
    fi
  done
  if command -v nft >/dev/null 2>&1; then
    rules="$(nft list ruleset 2>/dev/null || true)"
    if grep -qiE 'masquerade|snat' <<<"$rules"; then echo "nft ruleset masquerades"; bad=1; fi
  fi
  return $bad
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

start() {
  [ "$(id -u)" = 0 ] || die "dockerd needs root."
  command -v dockerd >/dev/null || die "dockerd is missing: apt-get install docker.io (Debian's dockerd, containerd and runc)."
  if running; then echo "docker.sh: dockerd is running (pid $(cat "$pidfile")), $DOCKER_HOST"; check; return; fi
  sysctl -qw net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0 || die "cannot switch host forwarding off."
  local why
  if ! why="$(unsafe)"; then die "refusing to start dockerd: $why"; fi
  mkdir -p "$run" "$data"
  local runtime=""
  # Bit 24 of the capability bounding set is CAP_SYS_RESOURCE (linux/capability.h).
  if (( (0x$(awk '/^CapBnd:/ {print $2}' /proc/self/status) >> 24 & 1) == 0 )); then
    runtime="\"default-runtime\": \"etha-runc\", \"runtimes\": {\"etha-runc\": {\"path\": \"$here/etha-runc\"}},"
    echo "docker.sh: this machine's capability bounding set lacks CAP_SYS_RESOURCE: privileged containers run through hack/kind/etha-runc, which drops it"
  fi
  cat > "$run/daemon.json" <<JSON
{
  "data-root": "$data",
  "exec-root": "$run/exec",
  "pidfile": "$pidfile",
  "hosts": ["unix://$sock"],
  "ip-forward": false,
  "ip-masq": false,
  "iptables": false,
  "ip6tables": false,
  "userland-proxy": true,
  $runtime
  "features": {"buildkit": true},
  "log-level": "warn"
}
JSON
  # --config-file: nothing from /etc/docker/daemon.json; setsid: dockerd outlives this script.
  setsid dockerd --config-file "$run/daemon.json" > "$log" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -20 "$log" >&2; stop; die "dockerd did not answer on $DOCKER_HOST (log: $log)."; }
  if ! why="$(unsafe)"; then stop; die "dockerd changed the host's network settings; stopped it: $why"; fi
  echo "docker.sh: dockerd running (pid $(cat "$pidfile")), $DOCKER_HOST; forwarding off, no NAT"
}

stop() {
  if ! running; then echo "docker.sh: dockerd is not running"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then echo "docker.sh: dockerd (pid $pid) ignored SIGTERM for 30 s; SIGKILL" >&2; kill -KILL "$pid"; fi
  echo "docker.sh: dockerd stopped"
}

check() {
  local why
  if ! why="$(unsafe)"; then die "unsafe network settings: $why"; fi
  echo "docker.sh: host forwarding off, no NAT rule masquerades"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$pidfile")), $DOCKER_HOST"; else echo "not running"; exit 1; fi ;;
  check) check ;;
  env) echo "export DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|status|check|env" >&2; exit 2 ;;
esac
