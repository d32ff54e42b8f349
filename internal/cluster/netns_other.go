//go:build !linux

package cluster

import (
	"context"
	"errors"
	"net"
)

// Netns is a Linux network namespace; elsewhere NewNetns always fails.
type Netns struct {
	Name string
	Path string
}

// NewNetns fails: network namespaces are Linux-only.
func NewNetns(string) (*Netns, error) {
	return nil, errors.Join(ErrNetnsUnsupported, errors.New("not Linux"))
}

// Delete does nothing.
func (*Netns) Delete() error { return nil }

// DialContext fails.
func (*Netns) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, ErrNetnsUnsupported
}

// ErrNetnsUnsupported is returned by NewNetns when network namespaces
// cannot be used here.
var ErrNetnsUnsupported = errors.New("network namespaces unavailable")
