//go:build unix && !linux

package cluster

import "syscall"

// sysProcAttr puts the child in its own process group, so that a terminal's
// Ctrl-C reaches only the runner, which then stops the nodes in order.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func signalGroup(pid int, sig syscall.Signal) error { return syscall.Kill(-pid, sig) }
