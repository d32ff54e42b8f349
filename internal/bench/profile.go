package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// check reports a contender that Run could not run as described.
func (c Contender) check() error {
	switch c.Nodes {
	case ProfileMinimal, ProfileInformed, ProfilePeers:
	default:
		return fmt.Errorf("contender %s: node profile %q: want minimal, informed or peers", c.Name, c.Nodes)
	}
	if (c.Kind == KindPeers) != (c.Nodes == ProfilePeers) {
		return fmt.Errorf("contender %s: kind %s with node profile %s: the peers profile is the peers contender's and only its", c.Name, c.Kind, c.Nodes)
	}
	return nil
}

func (e *env) currentProfile() Profile {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.profile
}

// nodeCaddyfile is node i's Caddyfile in profile p.
func (e *env) nodeCaddyfile(i int, p Profile) string {
	return nodeCaddyfile(i, e.appConfig(i), e.key, e.sc.Nodes(), maxEntries, p, e.sc.BypassNode == i)
}

// readyFor puts the nodes in contender c's profile and waits until they
// are ready for it.
func (e *env) readyFor(ctx context.Context, c Contender) (settle time.Duration, err error) {
	if e.currentProfile() != c.Nodes {
		e.fresh = false
		return profileSettle, e.useProfile(ctx, c.Nodes)
	}
	if e.fresh {
		// Nodes just started have learnt nothing of each other yet (no
		// response times, no announced latency before 200 requests): the
		// first cell of a scenario, always the first contender's in the
		// first round, would measure their start-up.
		e.fresh = false
		return profileSettle, nil
	}
	if c.Kind != KindPeers {
		return 0, nil
	}
	// The previous contender's entries may still be live in the nodes'
	// tables (they stopped less than max_age ago); the directive would
	// forward to them.
	for i := 1; i <= e.sc.Nodes(); i++ {
		if err := e.waitNodePeers(ctx, i, time.Time{}); err != nil {
			return 0, err
		}
	}
	return 0, nil
}

// profileSettle is the warm-up added to the first cell after the nodes
// switch profile, and to the first cell on nodes just started. A deciding node remembers what its peers served for
// others (the dedicated balancer of the cells before) for a few
// announcements after that traffic stops: polled at 70% load, the first
// node of the peers profile kept 30% of four equal nodes' requests for
// about six seconds after a switch, then 25% (BENCHMARKS.md, method).
// Every cell measures the deployment settled, as a user runs it; the
// switch is the harness's, not the deployment's.
const profileSettle = 6 * time.Second

// useProfile reconfigures the running nodes for profile p through each
// node's admin API, as a user reloads a config: the processes, and with
// them the backhand app's peer table, live on. It then waits until every
// node serves through its app again and has heard every peer since the
// last reload, so that no figure announced under the old profile is left
// in a table. A node started later (after a death) starts in p.
func (e *env) useProfile(ctx context.Context, p Profile) error {
	from, began := e.currentProfile(), time.Now()
	e.mu.Lock()
	e.profile = p
	e.mu.Unlock()
	n := e.sc.Nodes()
	for i := 1; i <= n; i++ {
		if err := e.reloadNode(ctx, i, p); err != nil {
			return err
		}
	}
	reloaded := time.Now()
	for i := 1; i <= n; i++ {
		if err := e.waitNode(ctx, i); err != nil {
			return err
		}
	}
	for i := 1; i <= n; i++ {
		if err := e.waitNodePeers(ctx, i, reloaded); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.log, "   nodes: %s -> %s profile, ready in %s\n", from, p, time.Since(began).Round(10*time.Millisecond))
	return nil
}

// reloadNode loads node i's Caddyfile for profile p through its admin API
// (POST /load), and keeps a copy beside the process's log.
func (e *env) reloadNode(ctx context.Context, i int, p Profile) error {
	node := e.node(i)
	if node == nil || node.exited() {
		return fmt.Errorf("%s is not running", nodeName(i))
	}
	cf := e.nodeCaddyfile(i, p)
	_ = os.WriteFile(filepath.Join(filepath.Dir(node.log), "Caddyfile."+string(p)), []byte(cf), 0o644)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := "http://127.0.0.1:" + strconv.Itoa(adminBase+i) + "/load"
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, url, strings.NewReader(cf))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s: loading the %s profile: %w", nodeName(i), p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: loading the %s profile: %s: %s", nodeName(i), p, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitNodePeers waits until node i sees every other serving app node live,
// heard since since (if not zero), and, in the peers profile, no entry
// point: the directive must choose among the nodes only, as it would in a
// cluster without dedicated balancers.
func (e *env) waitNodePeers(ctx context.Context, i int, since time.Time) error {
	peers := e.currentProfile() == ProfilePeers
	return waitView(ctx, e.node(i), adminBase+i, func(v *cluster.PeersView) error {
		if live, want := liveTagged(v, "app"), e.aliveApps()-1; live < want {
			return fmt.Errorf("sees %d of the %d other app nodes: %s", live, want, v.Summary())
		}
		if !since.IsZero() {
			for _, pv := range v.Peers {
				if pv.State == "live" && slices.Contains(pv.Tags, "app") && time.Duration(pv.AgeMS)*time.Millisecond >= time.Since(since) {
					return fmt.Errorf("has not heard %s since the reload: %s", pv.Name, v.Summary())
				}
			}
		}
		if n := liveTagged(v, "entry"); peers && n > 0 {
			return fmt.Errorf("still sees %d entry points live: %s", n, v.Summary())
		}
		return nil
	})
}

// waitView polls the peer table of Caddy process p (GET /backhand/peers on
// its admin API, port admin) until check accepts it.
func waitView(ctx context.Context, p *proc, admin int, check func(*cluster.PeersView) error) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	err := cluster.Poll(ctx, 20*time.Second, 50*time.Millisecond, func() error {
		if p.exited() {
			return cluster.Permanent(fmt.Errorf("%s exited: %v", p.name, p.err))
		}
		v, err := getView(client, admin)
		if err != nil {
			return err
		}
		return check(v)
	})
	if err != nil {
		return fmt.Errorf("%s: %w\n--- %s ---\n%s", p.name, err, p.log, p.tail(15))
	}
	return nil
}

func getView(client *http.Client, admin int) (*cluster.PeersView, error) {
	resp, err := client.Get("http://127.0.0.1:" + strconv.Itoa(admin) + "/backhand/peers")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /backhand/peers: %s", resp.Status)
	}
	var v cluster.PeersView
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return nil, err
	}
	return &v, nil
}

// liveTagged counts the live peers (this node excluded) that carry tag.
func liveTagged(v *cluster.PeersView, tag string) int {
	n := 0
	for _, pv := range v.Peers {
		if pv.State == "live" && slices.Contains(pv.Tags, tag) {
			n++
		}
	}
	return n
}

// logRatings logs what the nodes announce about themselves after start-up,
// as node1 sees it: on identical nodes, different speeds are noise that
// the minimal profile's balancing inherits.
func (e *env) logRatings(ctx context.Context) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	v, err := getView(client, adminBase+1)
	if err != nil || ctx.Err() != nil {
		return
	}
	var parts []string
	for _, pv := range v.Peers {
		if slices.Contains(pv.Tags, "app") {
			parts = append(parts, fmt.Sprintf("%s speed %d capacity %d", pv.Name, pv.Speed, pv.Capacity))
		}
	}
	fmt.Fprintf(e.log, "   announced (node1's view): %s\n", strings.Join(parts, ", "))
}
