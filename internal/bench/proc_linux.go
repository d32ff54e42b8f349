package bench

import "syscall"

// sysProcAttr puts the child in its own process group and kills it when the
// harness dies.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
