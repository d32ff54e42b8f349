package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModulePath is the module whose cmd/caddy Build compiles.
const ModulePath = "github.com/caddy-backhand/backhand"

// goTool is the go command: the one of GOROOT when set (go test and go run
// set it for their children), else the one on PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		p := filepath.Join(root, "bin", "go")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

// ModuleRoot returns the directory of the caddy-backhand module, found with
// `go env GOMOD` from the working directory.
func ModuleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("cluster: go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("cluster: not inside a Go module; run from the caddy-backhand checkout")
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("cluster: %w", err)
	}
	if !bytes.Contains(data, []byte("module "+ModulePath)) {
		return "", fmt.Errorf("cluster: %s is not the %s module; run from the caddy-backhand checkout", gomod, ModulePath)
	}
	return filepath.Dir(gomod), nil
}

// Build compiles cmd/caddy of the module into dir and returns the path of
// the binary. Symbols and DWARF are left out (-s -w), which halves the link
// time; panics still print stack traces.
func Build(ctx context.Context, dir string) (string, error) {
	root, err := ModuleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin, err := filepath.Abs(filepath.Join(dir, "caddy"))
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, goTool(), "build", "-ldflags=-s -w", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("cluster: go build ./cmd/caddy: %w\n%s", err, out.Bytes())
	}
	return bin, nil
}
