//go:build !linux

package vip

import (
	"errors"
	"net/netip"
)

// errUnsupported: addresses are managed through Linux netlink only.
var errUnsupported = errors.New("virtual addresses are supported on Linux only")

// Link is the interface that the virtual addresses go on (Linux only).
type Link struct{}

// OpenLink fails: Linux only.
func OpenLink(string) (*Link, error) { return nil, errUnsupported }

// Name is the interface's name.
func (*Link) Name() string { return "" }

// Add fails: Linux only.
func (*Link) Add(netip.Prefix) error { return errUnsupported }

// Remove fails: Linux only.
func (*Link) Remove(netip.Prefix) error { return errUnsupported }

// Present fails: Linux only.
func (*Link) Present(Set) (Holding, error) { return 0, errUnsupported }

// Announce fails: Linux only.
func (*Link) Announce(netip.Prefix) error { return errUnsupported }

// MissingCapabilities fails: Linux only.
func MissingCapabilities() ([]string, error) { return nil, errUnsupported }
