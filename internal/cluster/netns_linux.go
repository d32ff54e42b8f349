package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Netns is a network namespace made with `ip netns add`, with only a
// loopback interface that is up, multicast-capable, and routes
// 224.0.0.0/4, so nodes inside can announce by multicast without touching
// any real network.
type Netns struct {
	Name string
	Path string // /run/netns/<Name>
}

// NewNetns creates the namespace name. It needs root and the `ip` command;
// ErrNetnsUnsupported wraps the reason when either is missing or the kernel
// refuses.
func NewNetns(name string) (*Netns, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: needs root", ErrNetnsUnsupported)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("%w: the ip command (iproute2) is missing", ErrNetnsUnsupported)
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%w: ip netns add %s: %v: %s", ErrNetnsUnsupported, name, err, strings.TrimSpace(string(out)))
	}
	ns := &Netns{Name: name, Path: filepath.Join("/run/netns", name)}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", "lo", "multicast", "on"},
		{"route", "add", "224.0.0.0/4", "dev", "lo"},
	} {
		cmd := append([]string{"netns", "exec", name, "ip"}, args...)
		if out, err := exec.Command("ip", cmd...).CombinedOutput(); err != nil {
			_ = ns.Delete()
			return nil, fmt.Errorf("%w: ip %s: %v: %s", ErrNetnsUnsupported, strings.Join(cmd, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return ns, nil
}

// Delete removes the namespace. Processes still inside keep it alive until
// they exit.
func (ns *Netns) Delete() error {
	if out, err := exec.Command("ip", "netns", "delete", ns.Name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %v: %s", ns.Name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// DialContext dials from inside the namespace: a goroutine locked to its OS
// thread switches the thread into the namespace, creates and connects the
// socket (a socket stays in the namespace it was made in), and switches
// back. If switching back fails, the goroutine exits still locked, so the
// runtime throws the thread away.
func (ns *Netns) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open(ns.Path)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns.Path, err)}
			return
		}
		d := net.Dialer{Timeout: 2 * time.Second}
		c, err := d.DialContext(ctx, network, addr)
		if rerr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			ch <- result{c, err}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// ErrNetnsUnsupported is returned by NewNetns when network namespaces
// cannot be used here.
var ErrNetnsUnsupported = errors.New("network namespaces unavailable")
