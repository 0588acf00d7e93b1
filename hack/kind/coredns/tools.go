//go:build tools

// Package tools pins the main package that hack/kind/images.sh builds, so `go mod tidy` keeps its
// dependencies in go.mod and go.sum.
package tools

import (
	_ "github.com/coredns/coredns"
)
