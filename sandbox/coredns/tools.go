//go:build tools

// Package tools pins the CoreDNS command the sandbox builds, so `go mod tidy` keeps it.
package tools

import _ "github.com/coredns/coredns"
