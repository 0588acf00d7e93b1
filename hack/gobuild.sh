# Shared by the Go wrapper modules' build scripts (sourced, not run): the stamp that says $dest
# is current, and one `go build` that names what failed and how to get it.
# The caller sets: here (its module), dest (the folder), what (a label), binaries (an array).

gobuild_current() {  # 0 if every binary exists and the stamp matches this module and script
  stamp="$dest/.$what.stamp"
  want="$(cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$here/build.sh" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
  for b in "${binaries[@]}"; do [ -x "$dest/$b" ] || return 1; done
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]
}

gobuild_require_go() {
  command -v go >/dev/null 2>&1 && return 0
  echo "$what: 'go' is not on PATH. Install Go >= 1.24 (https://go.dev/dl, or apt-get install golang-go)$1." >&2
  exit 1
}

gobuild() {  # gobuild NAME PACKAGE LDFLAGS
  local start=$SECONDS
  echo "$what: building $1 ($2)"
  if ! (cd "$here" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" go build -trimpath -ldflags "$3" -o "$dest/$1.tmp" "$2"); then
    echo "$what: building $1 from $2 failed (see above). Go's module proxy must be reachable." >&2
    rm -f "$dest/$1.tmp"
    exit 1
  fi
  mv "$dest/$1.tmp" "$dest/$1"
  echo "$what: $1 built in $((SECONDS - start)) s ($(du -m "$dest/$1" | cut -f1) MB)"
}

gobuild_done() { echo "$want" > "$stamp"; }
