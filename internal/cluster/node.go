package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Node is one running Caddy process.
type Node struct {
	Config NodeConfig

	// Dir holds the node's Caddyfile, log and XDG directories.
	Dir string

	// LogPath is the file that gets the process's stdout and stderr.
	LogPath string

	netns  *Netns
	cmd    *exec.Cmd
	done   chan struct{}
	err    error // cmd.Wait's result, set before done is closed
	admin  *http.Client
	client *http.Client
}

// Start writes cfg's Caddyfile into a new directory under dir and starts
// `bin run` on it as a child process in its own process group, with its own
// XDG_CONFIG_HOME and XDG_DATA_HOME, and its output going to a log file.
// With ns non-nil the process runs in that network namespace. On Linux the
// child is killed if the thread that started it exits (Pdeathsig), so a
// killed runner leaves no orphans. Start does not wait for readiness; see
// WaitReady. Outside a namespace, it first checks that the node's ports
// are free (NodeConfig.CheckFree).
func Start(bin, dir string, cfg NodeConfig, ns *Netns) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if ns == nil {
		if err := cfg.CheckFree(); err != nil {
			return nil, err
		}
	}
	nodeDir, err := os.MkdirTemp(dir, cfg.NodeName()+"-")
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	n := &Node{
		Config:  cfg,
		Dir:     nodeDir,
		LogPath: filepath.Join(nodeDir, "caddy.log"),
		netns:   ns,
		done:    make(chan struct{}),
	}
	caddyfile := filepath.Join(nodeDir, "Caddyfile")
	if err := os.WriteFile(caddyfile, []byte(cfg.Caddyfile()), 0o600); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "XDG_CONFIG_HOME=") && !strings.HasPrefix(kv, "XDG_DATA_HOME=") {
			env = append(env, kv)
		}
	}
	for _, sub := range []string{"config", "data"} {
		if err := os.Mkdir(filepath.Join(nodeDir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("cluster: %w", err)
		}
	}
	env = append(env,
		"XDG_CONFIG_HOME="+filepath.Join(nodeDir, "config"),
		"XDG_DATA_HOME="+filepath.Join(nodeDir, "data"))

	args := []string{bin, "run", "--config", caddyfile, "--adapter", "caddyfile"}
	if len(cfg.Wrap) > 0 {
		args = append(append([]string{}, cfg.Wrap...), args...)
	}
	if ns != nil {
		args = append([]string{"ip", "netns", "exec", ns.Name}, args...)
	}
	log, err := os.Create(n.LogPath)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = nodeDir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("cluster: starting %s: %w", cfg.NodeName(), err)
	}
	n.cmd = cmd
	go func() {
		n.err = cmd.Wait()
		log.Close()
		close(n.done)
	}()

	dial := (&net.Dialer{Timeout: 2 * time.Second}).DialContext
	if ns != nil {
		dial = ns.DialContext
	}
	// The admin server is replaced on every config load: no keep-alives.
	n.admin = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true},
	}
	n.client = &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 16},
	}
	return n, nil
}

// Name is the node's backhand name.
func (n *Node) Name() string { return n.Config.NodeName() }

// Pid is the process id (of `ip netns exec`, which execs Caddy in place).
func (n *Node) Pid() int { return n.cmd.Process.Pid }

// Done is closed when the process has exited.
func (n *Node) Done() <-chan struct{} { return n.done }

// Exited reports whether the process has exited.
func (n *Node) Exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// ExitErr is the process's exit status as returned by exec.Cmd.Wait, once
// Done is closed.
func (n *Node) ExitErr() error {
	<-n.done
	return n.err
}

// Client is an HTTP client for requests to this node's sites (it dials into
// the node's network namespace if it has one).
func (n *Node) Client() *http.Client { return n.client }

// signal sends sig to the node's process group.
func (n *Node) signal(sig syscall.Signal) error {
	if n.Exited() {
		return nil
	}
	err := signalGroup(n.cmd.Process.Pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// Signal sends sig to the node's process group (e.g. SIGSTOP and SIGCONT
// to freeze and resume it); it does nothing once the process has exited.
func (n *Node) Signal(sig syscall.Signal) error {
	if err := n.signal(sig); err != nil {
		return fmt.Errorf("cluster: signalling %s: %w", n.Name(), err)
	}
	return nil
}

// AdminGet makes a GET request to the admin API (path from the root,
// e.g. "/debug/vars") and returns the status and body.
func (n *Node) AdminGet(ctx context.Context, path string) (int, []byte, error) {
	return n.adminDo(ctx, http.MethodGet, path, "", nil)
}

// AdminPost makes a POST request without a body to the admin API (e.g.
// "/backhand/drain") and returns the status and body.
func (n *Node) AdminPost(ctx context.Context, path string) (int, []byte, error) {
	return n.adminDo(ctx, http.MethodPost, path, "", nil)
}

// Stop asks Caddy to shut down (SIGTERM) and, if it has not exited after
// grace, kills it (SIGKILL). It returns once the process has exited.
func (n *Node) Stop(grace time.Duration) error {
	// Idle keep-alive connections of ours would only delay the shutdown.
	n.client.CloseIdleConnections()
	if err := n.signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("cluster: stopping %s: %w", n.Name(), err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-n.done:
		return nil
	case <-t.C:
	}
	if err := n.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("cluster: %s did not stop within %v after SIGTERM; killed it", n.Name(), grace)
}

// Kill kills the node's process group (SIGKILL) and waits until the process
// has exited.
func (n *Node) Kill() error {
	if err := n.signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("cluster: killing %s: %w", n.Name(), err)
	}
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-n.done:
		return nil
	case <-t.C:
		return fmt.Errorf("cluster: %s (pid %d) still running 10s after SIGKILL", n.Name(), n.Pid())
	}
}

// LogTail returns the last lines of the node's log.
func (n *Node) LogTail(lines int) string {
	data, err := os.ReadFile(n.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", n.LogPath, err)
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// LogErrors returns up to max lines of the node's log at level error or
// above, the first ones.
func (n *Node) LogErrors(max int) string {
	data, err := os.ReadFile(n.LogPath)
	if err != nil {
		return fmt.Sprintf("(reading %s: %v)", n.LogPath, err)
	}
	var out []string
	for line := range strings.Lines(string(data)) {
		if len(out) < max && (strings.Contains(line, `"level":"error"`) || strings.Contains(line, `"level":"panic"`) || strings.Contains(line, `"level":"fatal"`)) {
			out = append(out, strings.TrimRight(line, "\n"))
		}
	}
	return strings.Join(out, "\n")
}

// adminDo makes one admin API request and returns the status and body.
func (n *Node) adminDo(ctx context.Context, method, path, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, n.Config.AdminURL()+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := n.admin.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// WaitReady polls the admin API until GET /config/ answers with a config
// and GET /backhand/peers answers (the backhand app has started), the
// process exits, or timeout passes.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	err := Poll(ctx, timeout, 25*time.Millisecond, func() error {
		if n.Exited() {
			return Permanent(fmt.Errorf("exited: %v", n.err))
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		for _, path := range []string{"/config/", "/backhand/peers"} {
			status, body, err := n.adminDo(rctx, http.MethodGet, path, "", nil)
			if err != nil {
				return err
			}
			if status != http.StatusOK || bytes.Equal(bytes.TrimSpace(body), []byte("null")) {
				return fmt.Errorf("GET %s: %d %s", path, status, bytes.TrimSpace(body))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: %s not ready: %w\n--- log tail %s ---\n%s", n.Name(), err, n.LogPath, n.LogTail(20))
	}
	return nil
}

// Peers fetches and decodes GET /backhand/peers.
func (n *Node) Peers(ctx context.Context) (*PeersView, error) {
	status, body, err := n.adminDo(ctx, http.MethodGet, "/backhand/peers", "", nil)
	if err != nil {
		return nil, fmt.Errorf("cluster: %s: GET /backhand/peers: %w", n.Name(), err)
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("cluster: %s: GET /backhand/peers: %d %s", n.Name(), status, bytes.TrimSpace(body))
	}
	v := new(PeersView)
	if err := json.Unmarshal(body, v); err != nil {
		return nil, fmt.Errorf("cluster: %s: decoding /backhand/peers: %w", n.Name(), err)
	}
	return v, nil
}

// Load posts a Caddyfile to the admin API's /load, which replaces the
// running config; it returns once Caddy has switched to it. The node's
// Config is not changed.
func (n *Node) Load(ctx context.Context, caddyfile string) error {
	status, body, err := n.adminDo(ctx, http.MethodPost, "/load", "text/caddyfile", []byte(caddyfile))
	if err != nil {
		return fmt.Errorf("cluster: %s: POST /load: %w", n.Name(), err)
	}
	if status != http.StatusOK {
		return fmt.Errorf("cluster: %s: POST /load: %d %s", n.Name(), status, bytes.TrimSpace(body))
	}
	return nil
}

// Get fetches url with the node's client and returns the status and body.
func (n *Node) Get(ctx context.Context, url string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := n.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// StopAll stops the nodes in parallel (see Node.Stop) and joins the errors.
func StopAll(nodes []*Node, grace time.Duration) error {
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		if n == nil {
			continue
		}
		wg.Go(func() { errs[i] = n.Stop(grace) })
	}
	wg.Wait()
	return errors.Join(errs...)
}
