//go:build linux

package backhand_test

// TestIntegrationVIP runs the vip option for real: three nodes and a
// client, each in a network namespace of its own, joined by veth pairs to
// a bridge in a fifth namespace (nothing touches the host's interfaces),
// each node a real Caddy built with the plugin. It checks one address per
// node, kill -9 failover within max_age + one interval (and which client
// requests fail), the balance after a restart with no address on two
// interfaces, a partition and its healing, a kill -9 with an immediate
// restart, a reload that moves nothing,
// sticky, drain, an orderly stop, and the refusal without capabilities.
// About a minute. It needs root and
// ip(8) (capsh for the last step): it skips with the reason otherwise,
// and fails instead when CI=true.
//
// With BACKHAND_VIP_KILLS=<n> it also kills a holder n times and prints
// the distribution of failover times (FAULTS.md, "Virtual addresses"):
//
//	BACKHAND_VIP_KILLS=20 go test -run TestIntegrationVIP -count=1 -v .

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// The lab's addresses: a private range, only inside the namespaces.
const (
	vipPrefix   = "10.213.0."
	vipV6Prefix = "fd0b:213::"
	vipNodes    = 3
	// The defaults: what FAULTS.md's figures are for.
	vipInterval = time.Second
	vipMaxAge   = 3 * time.Second
	vipKey      = "vip-integration-key-0123456789"
)

// vipAddrs are the three virtual addresses: two IPv4 (gratuitous ARP), one
// IPv6 (unsolicited neighbour advertisement).
var vipAddrs = []string{vipPrefix + "10/24", vipPrefix + "11/24", vipV6Prefix + "10/64"}

// vipLab is the namespaces, the nodes' processes and the client.
type vipLab struct {
	t      *testing.T
	bin    string
	tag    string // unique per run: namespace names
	dir    string
	bridge string // the bridge's namespace
	client *cluster.Netns
	nodes  []*vipNode
	sticky bool
}

type vipNode struct {
	name string
	ns   *cluster.Netns
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// ipCmd runs ip(8) with args and fails the test on error.
func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newVIPLab builds the namespaces and links, and removes them all when the
// test ends, passed or not.
func newVIPLab(t *testing.T) *vipLab {
	bin := caddyBin(t)
	if _, err := exec.LookPath("ip"); err != nil || os.Geteuid() != 0 {
		reason := "needs root and the ip command (iproute2)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s, which CI must provide", reason)
		}
		t.Skip(reason)
	}
	lab := &vipLab{t: t, bin: bin, tag: fmt.Sprintf("bhv%d", os.Getpid()%100000), dir: t.TempDir()}
	mk := func(name string) *cluster.Netns {
		ns, err := cluster.NewNetns(lab.tag + "-" + name)
		if err != nil {
			if os.Getenv("CI") != "true" {
				t.Skipf("network namespaces: %v", err)
			}
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = ns.Delete() })
		return ns
	}
	br := mk("br")
	lab.bridge = br.Name
	ipCmd(t, "-n", br.Name, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", br.Name, "link", "set", "br0", "up")
	attach := func(ns *cluster.Netns, port string, v4, v6 string) {
		ipCmd(t, "-n", br.Name, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns.Name)
		ipCmd(t, "-n", br.Name, "link", "set", port, "master", "br0", "up")
		ipCmd(t, "-n", ns.Name, "addr", "add", v4, "dev", "eth0")
		ipCmd(t, "-n", ns.Name, "addr", "add", v6, "dev", "eth0", "nodad")
		ipCmd(t, "-n", ns.Name, "link", "set", "eth0", "up")
	}
	lab.client = mk("c")
	attach(lab.client, "p-c", vipPrefix+"100/24", vipV6Prefix+"100/64")
	for i := range vipNodes {
		name := fmt.Sprintf("n%d", i+1)
		ns := mk(name)
		attach(ns, "p-"+name, fmt.Sprintf("%s%d/24", vipPrefix, i+1), fmt.Sprintf("%s%d/64", vipV6Prefix, i+1))
		lab.nodes = append(lab.nodes, &vipNode{name: name, ns: ns})
	}
	t.Cleanup(func() {
		for _, n := range lab.nodes {
			lab.kill(n)
		}
	})
	return lab
}

// config is node n's Caddy config: the backhand app with the vip option,
// an HTTP server on :80 answering with the node's name, admin on the
// namespace's own loopback.
func (lab *vipLab) config(n *vipNode) []byte {
	var peers []string
	for i := range vipNodes {
		peers = append(peers, fmt.Sprintf("%s%d:4445", vipPrefix, i+1))
	}
	idx := slices.Index(lab.nodes, n) + 1
	cfg := map[string]any{
		"admin": map[string]any{"listen": "127.0.0.1:2019"},
		"apps": map[string]any{
			"backhand": map[string]any{
				"name": n.name, "cluster": "vip", "key": vipKey,
				"advertise": fmt.Sprintf("%s%d:80", vipPrefix, idx),
				"listen":    []string{"udp/:4445"}, "peers": peers,
				"interval": vipInterval.String(), "max_age": vipMaxAge.String(),
				"vip": map[string]any{"addresses": vipAddrs, "interface": "eth0", "sticky": lab.sticky},
			},
			"http": map[string]any{"servers": map[string]any{"web": map[string]any{
				"listen": []string{":80"},
				"routes": []any{map[string]any{"handle": []any{map[string]any{"handler": "static_response", "body": n.name}}}},
			}}},
		},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		lab.t.Fatal(err)
	}
	return b
}

// start runs node n's Caddy in its namespace and waits for its admin API.
func (lab *vipLab) start(n *vipNode) { lab.startWith(n) }

// startWith starts n's Caddy through wrapper, a command that runs the
// rest of its arguments (capsh, to drop capabilities).
func (lab *vipLab) startWith(n *vipNode, wrapper ...string) {
	t := lab.t
	t.Helper()
	cfgPath := filepath.Join(lab.dir, n.name+".json")
	if err := os.WriteFile(cfgPath, lab.config(n), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.OpenFile(filepath.Join(lab.dir, n.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the command: the process is Caddy itself.
	args := append([]string{"netns", "exec", n.ns.Name}, wrapper...)
	cmd := exec.Command("ip", append(args, lab.bin, "run", "--config", cfgPath)...)
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(lab.dir, n.name, "config"),
		"XDG_DATA_HOME="+filepath.Join(lab.dir, n.name, "data"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd, n.log, n.done = cmd, log, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(n.done)
	if !poll(10*time.Second, func() bool { _, err := lab.admin(n, "GET", "/backhand/peers"); return err == nil }) {
		t.Fatalf("%s: admin API not up within 10s; log:\n%s", n.name, lab.logTail(n))
	}
}

// kill sends SIGKILL (a crash: no release) and waits for the exit.
func (lab *vipLab) kill(n *vipNode) { lab.signal(n, syscall.SIGKILL) }

// signal sends sig to n's Caddy and waits up to 5 s for its exit.
func (lab *vipLab) signal(n *vipNode, sig syscall.Signal) {
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(5 * time.Second):
	}
	n.cmd = nil
	_ = n.log.Close()
}

func (lab *vipLab) logTail(n *vipNode) string {
	b, _ := os.ReadFile(filepath.Join(lab.dir, n.name+".log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// admin calls node n's admin API from inside its namespace.
func (lab *vipLab) admin(n *vipNode, method, path string, body ...byte) ([]byte, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: n.ns.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequest(method, "http://127.0.0.1:2019"+path, strings.NewReader(string(body)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return b, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, b)
	}
	return b, err
}

// holders reads, from each node's interface, which nodes have each
// virtual address: the ground truth, whatever the nodes announce. A
// killed node's interface keeps its addresses (the kernel does not know
// the process died) and is left out.
func (lab *vipLab) holders() map[string][]string {
	out := map[string][]string{}
	for _, n := range lab.nodes {
		if n.cmd == nil {
			continue
		}
		addrs, err := exec.Command("ip", "-n", n.ns.Name, "-o", "addr", "show", "dev", "eth0").Output()
		if err != nil {
			continue
		}
		for _, a := range vipAddrs {
			if strings.Contains(string(addrs), " "+a+" ") {
				out[a] = append(out[a], n.name)
			}
		}
	}
	return out
}

// balanced reports whether every address has exactly one holder and no
// running node holds two.
func balanced(h map[string][]string, running int) bool {
	per := map[string]int{}
	for _, a := range vipAddrs {
		if len(h[a]) != 1 {
			return false
		}
		per[h[a][0]]++
	}
	for _, c := range per {
		if c > (len(vipAddrs)+running-1)/running {
			return false
		}
	}
	return true
}

func (lab *vipLab) running() int {
	n := 0
	for _, x := range lab.nodes {
		if x.cmd != nil {
			n++
		}
	}
	return n
}

// vipURL is the URL of virtual address a (with prefix length).
func vipURL(a string) string {
	host := strings.Split(a, "/")[0]
	return "http://" + net.JoinHostPort(host, "80") + "/"
}

// sample is one client request: when, to which address, and who answered
// ("" for a failure).
type sample struct {
	at   time.Time
	addr string
	node string
	err  string // why it failed
}

// vipClient sends a request to each virtual address every 50 ms from the
// client namespace, each on a new connection, until stop is closed.
type vipClient struct {
	mu      sync.Mutex
	samples []sample
	stop    chan struct{}
	wg      sync.WaitGroup
}

func (lab *vipLab) startClient() *vipClient {
	cl := &vipClient{stop: make(chan struct{})}
	for _, a := range vipAddrs {
		cl.wg.Go(func() {
			c := &http.Client{Timeout: 400 * time.Millisecond, Transport: &http.Transport{DialContext: lab.client.DialContext, DisableKeepAlives: true}}
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-cl.stop:
					return
				case <-tick.C:
				}
				s := sample{at: time.Now(), addr: a}
				resp, err := c.Get(vipURL(a))
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode == http.StatusOK {
						s.node = string(b)
					} else {
						s.err = resp.Status
					}
				} else {
					s.err = err.Error()
				}
				cl.mu.Lock()
				cl.samples = append(cl.samples, s)
				cl.mu.Unlock()
			}
		})
	}
	return cl
}

func (cl *vipClient) close() {
	close(cl.stop)
	cl.wg.Wait()
}

// since returns the samples of the requests started at or after t. They
// are stored as they end, which is not quite the order they started in.
func (cl *vipClient) since(t time.Time) []sample {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []sample
	for _, s := range cl.samples {
		if !s.at.Before(t) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b sample) int { return a.at.Compare(b.at) })
	return out
}

// poll calls ok every 20 ms until it returns true or d has passed.
func poll(d time.Duration, ok func() bool) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return ok()
}

// waitBalanced waits until every address has one holder, spread within
// one over the running nodes.
func (lab *vipLab) waitBalanced(d time.Duration, what string) map[string][]string {
	lab.t.Helper()
	var h map[string][]string
	if !poll(d, func() bool { h = lab.holders(); return balanced(h, lab.running()) }) {
		lab.dumpLogs()
		lab.t.Fatalf("%s: addresses not balanced within %v: %v", what, d, h)
	}
	return h
}

func (lab *vipLab) dumpLogs() {
	for _, n := range lab.nodes {
		lab.t.Logf("--- %s log tail:\n%s", n.name, lab.logTail(n))
	}
}

// holderOf returns the node holding address a in h.
func (lab *vipLab) holderOf(h map[string][]string, a string) *vipNode {
	for _, n := range lab.nodes {
		if len(h[a]) == 1 && h[a][0] == n.name {
			return n
		}
	}
	return nil
}

// failover kills the holder of a and returns how long after the kill the
// client first got an answer for a from another node, and the client's
// failures per address in the meantime.
func (lab *vipLab) failover(cl *vipClient, a string) (time.Duration, map[string]int) {
	t := lab.t
	h := lab.holders()
	victim := lab.holderOf(h, a)
	if victim == nil {
		t.Fatalf("%s has no single holder: %v", a, h)
	}
	killed := time.Now()
	lab.kill(victim)
	var took time.Duration
	bound := vipMaxAge + vipInterval + 3*time.Second // generous: the assertion is below
	ok := poll(bound, func() bool {
		for _, s := range cl.since(killed) {
			if s.addr == a && s.node != "" && s.node != victim.name {
				took = s.at.Sub(killed)
				return true
			}
		}
		return false
	})
	if !ok {
		lab.dumpLogs()
		t.Fatalf("%s: no answer from another node within %v of killing %s", a, bound, victim.name)
	}
	fails := map[string]int{}
	for _, s := range cl.since(killed) {
		if s.node == "" && s.at.Before(killed.Add(took)) {
			fails[s.addr]++
		}
	}
	return took, fails
}

// restart starts n again and waits for the addresses to settle; it
// returns the longest time an address was seen on two interfaces.
func (lab *vipLab) restart(n *vipNode, settle time.Duration) time.Duration {
	lab.start(n)
	var longest time.Duration
	doubleSince := map[string]time.Time{}
	deadline := time.Now().Add(settle)
	for time.Now().Before(deadline) {
		now := time.Now()
		for _, a := range vipAddrs {
			if len(lab.holders()[a]) > 1 {
				if doubleSince[a].IsZero() {
					doubleSince[a] = now
				}
				longest = max(longest, now.Sub(doubleSince[a]))
			} else {
				delete(doubleSince, a)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return longest
}

type vipStatus struct {
	VIP struct {
		Acquired  uint64 `json:"acquired"`
		Released  uint64 `json:"released"`
		Error     string `json:"error"`
		Addresses []struct {
			Address string   `json:"address"`
			Holders []string `json:"holders"`
			Owner   string   `json:"owner"`
		} `json:"addresses"`
	} `json:"vip"`
}

func (lab *vipLab) status(n *vipNode) vipStatus {
	b, err := lab.admin(n, "GET", "/backhand/peers")
	if err != nil {
		lab.t.Fatal(err)
	}
	var st vipStatus
	if err := json.Unmarshal(b, &st); err != nil {
		lab.t.Fatal(err)
	}
	return st
}

func TestIntegrationVIP(t *testing.T) {
	lab := newVIPLab(t)
	for _, n := range lab.nodes {
		lab.start(n)
	}
	// Nothing is acquired for max_age + interval after a start (the table
	// fills first), then one evaluation.
	h := lab.waitBalanced(vipMaxAge+vipInterval+5*time.Second, "start")
	t.Logf("start: %v", h)
	seen := map[string]bool{}
	for _, a := range vipAddrs {
		seen[h[a][0]] = true
	}
	if len(seen) != vipNodes {
		t.Fatalf("not one address per node: %v", h)
	}
	// The status JSON agrees with the interfaces once the last
	// announcements are in: within an interval.
	var st vipStatus
	agree := func() bool {
		st = lab.status(lab.nodes[0])
		for _, a := range st.VIP.Addresses {
			if !slices.Equal(a.Holders, h[a.Address]) || a.Owner != h[a.Address][0] {
				return false
			}
		}
		return len(st.VIP.Addresses) == len(vipAddrs)
	}
	if !poll(2*vipInterval, agree) {
		t.Errorf("/backhand/peers says %+v, the interfaces say %v", st.VIP.Addresses, h)
	}

	cl := lab.startClient()
	defer cl.close()
	// Every address answers, from its holder only.
	time.Sleep(500 * time.Millisecond)
	for _, s := range cl.since(time.Now().Add(-400 * time.Millisecond)) {
		if s.node == "" || s.node != lab.holders()[s.addr][0] {
			t.Fatalf("%s answered by %q, held by %v", s.addr, s.node, lab.holders()[s.addr])
		}
	}

	// kill -9: the address answers from another node within max_age plus
	// one interval, failing only for that address and only until then.
	took, fails := lab.failover(cl, vipAddrs[0])
	t.Logf("kill -9: %s answered from another node after %v; client failures meanwhile: %v", vipAddrs[0], took.Round(time.Millisecond), fails)
	if limit := vipMaxAge + vipInterval; took > limit {
		t.Errorf("failover took %v, more than max_age + interval (%v)", took, limit)
	}
	for _, a := range vipAddrs[1:] {
		if fails[a] > 0 {
			t.Errorf("%s failed %d times while another address moved", a, fails[a])
		}
	}

	// Restart: the balance returns, no address on two interfaces for more
	// than one interval.
	var victim *vipNode
	for _, n := range lab.nodes {
		if n.cmd == nil {
			victim = n
		}
	}
	restartAt := time.Now()
	double := lab.restart(victim, vipMaxAge+vipInterval+3*time.Second)
	h = lab.waitBalanced(5*time.Second, "restart")
	moveFails := map[string]int{}
	for _, s := range cl.since(restartAt) {
		if s.node == "" {
			moveFails[s.addr]++
		}
	}
	t.Logf("restart of %s: balanced again %v; longest double holding %v; failed requests while it took an address back: %v",
		victim.name, h, double, moveFails)
	if double > vipInterval {
		t.Errorf("an address was on two interfaces for %v, more than one interval", double)
	}
	// A partition: one node's bridge port down. Each side sees the other
	// stale and holds every address it cannot see held (as with
	// Wackamole and VRRP); once healed, each address is left on one node.
	cut := lab.nodes[2]
	ipCmd(t, "-n", lab.bridge, "link", "set", "p-"+cut.name, "down")
	bothSides := func() bool {
		h = lab.holders()
		for _, a := range vipAddrs {
			if !slices.Contains(h[a], cut.name) || len(h[a]) != 2 {
				return false
			}
		}
		return true
	}
	if !poll(vipMaxAge+3*vipInterval, bothSides) {
		ipCmd(t, "-n", lab.bridge, "link", "set", "p-"+cut.name, "up")
		lab.dumpLogs()
		t.Fatalf("partition of %s: want every address on both sides, got %v", cut.name, h)
	}
	t.Logf("partition of %s: both sides hold every address: %v", cut.name, h)
	healed := time.Now()
	ipCmd(t, "-n", lab.bridge, "link", "set", "p-"+cut.name, "up")
	h = lab.waitBalanced(vipMaxAge+vipInterval, "after the partition healed")
	t.Logf("partition healed: one holder each after %v: %v", time.Since(healed).Round(time.Millisecond), h)

	// An address removed from under the node comes back.
	owner := lab.holderOf(h, vipAddrs[0])
	removed := time.Now()
	ipCmd(t, "-n", owner.ns.Name, "addr", "del", vipAddrs[0], "dev", "eth0")
	if !poll(2*vipInterval, func() bool { h = lab.holders(); return slices.Equal(h[vipAddrs[0]], []string{owner.name}) }) {
		t.Errorf("%s removed from %s by hand: not back within two intervals: %v", vipAddrs[0], owner.name, h)
	}
	t.Logf("%s removed from %s by hand: back after %v", vipAddrs[0], owner.name, time.Since(removed).Round(time.Millisecond))

	// kill -9 and an immediate restart (a supervisor's): the restarted
	// process announces no holdings while it listens, so the others take
	// its address over as soon as they hear its new incarnation, well
	// before max_age.
	h = lab.holders()
	quick := lab.holderOf(h, vipAddrs[1])
	quickAt := time.Now()
	lab.kill(quick)
	lab.start(quick)
	if !poll(vipMaxAge+vipInterval, func() bool {
		for _, s := range cl.since(quickAt) {
			if s.addr == vipAddrs[1] && s.node != "" && s.at.After(quickAt) {
				return true
			}
		}
		return false
	}) {
		lab.dumpLogs()
		t.Fatalf("kill -9 and restart of %s: %s unanswered for max_age + interval", quick.name, vipAddrs[1])
	}
	var back time.Duration
	for _, s := range cl.since(quickAt) {
		if s.addr == vipAddrs[1] && s.node != "" {
			back = s.at.Sub(quickAt)
			break
		}
	}
	t.Logf("kill -9 and immediate restart of %s: %s answered again after %v", quick.name, vipAddrs[1], back.Round(time.Millisecond))
	if back >= vipMaxAge {
		t.Errorf("a quick restart left %s unanswered for %v, not less than max_age", vipAddrs[1], back)
	}
	lab.waitBalanced(vipMaxAge+vipInterval+3*time.Second, "after the quick restart")

	if extra := lab.measureKills(cl); extra != "" {
		t.Log(extra)
	}

	// A reload to sticky keeps every address where it is.
	before := map[string]vipStatus{}
	for _, n := range lab.nodes {
		before[n.name] = lab.status(n)
	}
	h = lab.holders()
	lab.sticky = true
	for _, n := range lab.nodes {
		if _, err := lab.admin(n, "POST", "/load", lab.config(n)...); err != nil {
			t.Fatalf("reload %s: %v", n.name, err)
		}
	}
	time.Sleep(2 * vipInterval)
	for _, n := range lab.nodes {
		after := lab.status(n)
		if after.VIP.Acquired != before[n.name].VIP.Acquired || after.VIP.Released != before[n.name].VIP.Released {
			t.Errorf("reload moved addresses on %s: acquired %d->%d, released %d->%d", n.name,
				before[n.name].VIP.Acquired, after.VIP.Acquired, before[n.name].VIP.Released, after.VIP.Released)
		}
	}
	if got := lab.holders(); fmt.Sprint(got) != fmt.Sprint(h) {
		t.Errorf("reload moved addresses: %v -> %v", h, got)
	}

	// Sticky: a restarted node takes nothing back.
	took, _ = lab.failover(cl, vipAddrs[1])
	for _, n := range lab.nodes {
		if n.cmd == nil {
			victim = n
		}
	}
	double = lab.restart(victim, vipMaxAge+2*vipInterval)
	h = lab.holders()
	t.Logf("sticky: failover %v; after %s's restart: %v (double holding %v)", took.Round(time.Millisecond), victim.name, h, double)
	for _, a := range vipAddrs {
		if len(h[a]) != 1 || h[a][0] == victim.name {
			t.Errorf("sticky: %s held by %v after %s restarted; want one holder, not %s", a, h[a], victim.name, victim.name)
		}
	}

	// Drain: the drained node's addresses move to the others while it
	// still serves on its own address.
	var drained *vipNode
	for _, n := range lab.nodes {
		if n != victim {
			drained = n
			break
		}
	}
	drainHeld := map[string]bool{}
	for a, hs := range lab.holders() {
		drainHeld[a] = slices.Contains(hs, drained.name)
	}
	drainAt := time.Now()
	if _, err := lab.admin(drained, "POST", "/backhand/drain"); err != nil {
		t.Fatal(err)
	}
	if !poll(2*vipInterval, func() bool {
		h = lab.holders()
		for _, a := range vipAddrs {
			if len(h[a]) != 1 || h[a][0] == drained.name {
				return false
			}
		}
		return true
	}) {
		lab.dumpLogs()
		t.Fatalf("drain: %s's addresses did not move within two intervals: %v", drained.name, h)
	}
	moved := time.Since(drainAt)
	drainFails := 0
	for _, s := range cl.since(drainAt) {
		if s.node == "" {
			if drainHeld[s.addr] {
				drainFails++
			}
			t.Logf("drain: request to %s (moved: %v) at +%v failed: %s", s.addr, drainHeld[s.addr], s.at.Sub(drainAt).Round(time.Millisecond), s.err)
		}
	}
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: lab.client.DialContext, DisableKeepAlives: true}}
	idx := slices.Index(lab.nodes, drained) + 1
	resp, err := c.Get("http://" + vipPrefix + strconv.Itoa(idx) + "/")
	if err != nil {
		t.Fatalf("drained %s stopped serving on its own address: %v", drained.name, err)
	}
	resp.Body.Close()
	t.Logf("drain of %s: addresses moved after %v (%v); failed requests to the moved addresses meanwhile: %d; it still serves on its own address",
		drained.name, moved.Round(time.Millisecond), h, drainFails)

	// An orderly stop (SIGTERM) releases the addresses and tells the peers
	// at once: they take over well within max_age.
	var stopped *vipNode
	var addr string
	for _, a := range vipAddrs {
		if len(h[a]) == 1 && h[a][0] != drained.name {
			addr, stopped = a, lab.nodes[slices.IndexFunc(lab.nodes, func(n *vipNode) bool { return n.name == h[a][0] })]
			break
		}
	}
	stopAt := time.Now()
	lab.signal(stopped, syscall.SIGTERM)
	if !poll(vipMaxAge, func() bool { h = lab.holders(); return len(h[addr]) == 1 && h[addr][0] != stopped.name }) {
		lab.dumpLogs()
		t.Fatalf("orderly stop of %s: %s not taken over within max_age: %v", stopped.name, addr, h)
	}
	t.Logf("orderly stop of %s: %s taken over after %v", stopped.name, addr, time.Since(stopAt).Round(time.Millisecond))

	// Without CAP_NET_ADMIN and CAP_NET_RAW the option is refused, with
	// the capability named, and the node serves as ever, holding nothing.
	if _, err := exec.LookPath("capsh"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("capsh (libcap2-bin) is missing, which CI must provide")
		}
		t.Log("capsh (libcap2-bin) missing: the capability check is not run")
		lab.logMoves()
		return
	}
	lab.startWith(stopped, "capsh", "--drop=cap_net_admin,cap_net_raw", "--", "-c", `exec "$0" "$@"`)
	if st := lab.status(stopped); !strings.Contains(st.VIP.Error, "CAP_NET_ADMIN") || !strings.Contains(st.VIP.Error, "CAP_NET_RAW") {
		t.Errorf("without capabilities: vip.error = %q, want it to name CAP_NET_ADMIN and CAP_NET_RAW", st.VIP.Error)
	}
	idx = slices.Index(lab.nodes, stopped) + 1
	resp, err = c.Get("http://" + vipPrefix + strconv.Itoa(idx) + "/")
	if err != nil {
		t.Fatalf("%s without capabilities does not serve: %v", stopped.name, err)
	}
	resp.Body.Close()
	time.Sleep(vipMaxAge + 2*vipInterval)
	for a, hs := range lab.holders() {
		if slices.Contains(hs, stopped.name) || len(hs) != 1 {
			t.Errorf("%s held by %v; %s has no capabilities", a, hs, stopped.name)
		}
	}
	lab.logMoves()
}

// logMoves logs every node's acquire and release lines, with their
// reasons.
func (lab *vipLab) logMoves() {
	for _, n := range lab.nodes {
		b, _ := os.ReadFile(filepath.Join(lab.dir, n.name+".log"))
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, `"vip: acquired"`) || strings.Contains(line, `"vip: released"`) || strings.Contains(line, "vip option refused") {
				var e struct{ Msg, Address, Reason, Error string }
				_ = json.Unmarshal([]byte(line), &e)
				lab.t.Logf("%s: %s %s: %s%s", n.name, e.Msg, e.Address, e.Reason, e.Error)
			}
		}
	}
}

// measureKills is the failover measurement of FAULTS.md: with
// BACKHAND_VIP_KILLS=n, n kill -9s of a holder, each followed by a restart
// and the return of the balance. It returns the distribution, or "".
func (lab *vipLab) measureKills(cl *vipClient) string {
	n, _ := strconv.Atoi(os.Getenv("BACKHAND_VIP_KILLS"))
	if n <= 0 {
		return ""
	}
	var took []time.Duration
	failures := 0
	for i := range n {
		a := vipAddrs[i%len(vipAddrs)]
		d, fails := lab.failover(cl, a)
		took = append(took, d)
		failures += fails[a]
		lab.t.Logf("kill %d: %s after %v (%d failed requests)", i+1, a, d.Round(time.Millisecond), fails[a])
		for _, x := range lab.nodes {
			if x.cmd == nil {
				lab.restart(x, vipMaxAge+vipInterval+time.Second)
			}
		}
		lab.waitBalanced(5*time.Second, "after kill "+strconv.Itoa(i+1))
	}
	slices.Sort(took)
	r := func(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }
	median := (took[(n-1)/2] + took[n/2]) / 2
	p90 := took[int(math.Ceil(0.9*float64(n)))-1] // nearest rank
	return fmt.Sprintf("failover over %d kills (interval %v, max_age %v): min %v, median %v, p90 %v, max %v (all: %v); failed requests to the moved address: %d (%.1f per kill, one request per 50 ms)",
		n, vipInterval, vipMaxAge, r(took[0]), r(median), r(p90), r(took[n-1]), took, failures, float64(failures)/float64(n))
}
