//go:build tools

// The main package this module builds (see build.sh).
package tools

import _ "sigs.k8s.io/kueue/cmd/kueue"
