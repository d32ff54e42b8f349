package bench

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// Machine describes where a run ran.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	Caddy     string `json:"caddy"`
	HAProxy   string `json:"haproxy,omitempty"`
	Nginx     string `json:"nginx,omitempty"`
	Commit    string `json:"commit"`
	Dirty     bool   `json:"dirty"`
	GoMaxProc int    `json:"gomaxprocs"`
}

// DescribeMachine gathers the Machine of this run; caddy is the Caddy binary.
func DescribeMachine(ctx context.Context, caddy string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), GoMaxProc: runtime.GOMAXPROCS(0)}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	root, _ := cluster.ModuleRoot(ctx)
	out := func(name string, args ...string) string {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = root
		b, err := cmd.CombinedOutput()
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
		return strings.TrimSpace(line)
	}
	m.Kernel = out("uname", "-r")
	if v := out(caddy, "version"); v != "" {
		m.Caddy, _, _ = strings.Cut(v, " ")
	}
	if p, err := lookTool("haproxy"); err == nil {
		m.HAProxy = out(p, "-v")
		if f := strings.Fields(m.HAProxy); len(f) >= 3 {
			m.HAProxy = f[2]
		}
	}
	if p, err := lookTool("nginx"); err == nil {
		m.Nginx = strings.TrimPrefix(out(p, "-v"), "nginx version: nginx/")
	}
	m.Commit = out("git", "rev-parse", "--short=12", "HEAD")
	m.Dirty = out("git", "status", "--porcelain", "--untracked-files=no") != ""
	return m
}
