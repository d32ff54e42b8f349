package fault

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
)

// Deployments.
const (
	// Directive: the backhand directive on every node's app site; the
	// clients spread over the app sites of every node but the faulty one.
	Directive = "directive"
	// Balancer: a fifth Caddy, reverse_proxy { dynamic backhand { tags
	// app }; lb_policy backhand; lb_retries 2 }, the clients' only entry.
	Balancer = "balancer"
)

// Port layout from a block's first port P (cluster.FreeBlock), on every
// host 127.0.0.1-5: P the app site, P+1 the application, P+2 the TCP relay
// the node advertises, P+3 the node's announcement listener, P+4 the UDP
// relay in front of it, P+5 the balancer's entry (127.0.0.5); admin APIs on
// 127.0.0.1:P+10+i.
const blockSize = 16

// env is one run's cluster: applications, relays, Caddy nodes and, in the
// balancer deployment, the balancer (nodes[n]).
type env struct {
	o      Options
	bin    string
	dir    string
	deploy string
	base   int
	n      int // app nodes
	victim int // 0-based index of the faulty node
	start  time.Time
	key    string
	extra  []string // extra lines of every node's backhand block
	// keys and acceptKeys, when set, are Caddy i's key and accept_keys
	// instead of key (the key rotation); under mu.
	keys       []string
	acceptKeys [][]string
	wrap       []string // command the victim's Caddy runs under

	apps []*App
	udp  []*UDPRelay // per Caddy (balancer last)
	tcp  []*TCPRelay // per app node

	mu    sync.Mutex
	nodes []*cluster.Node
	cfgs  []cluster.NodeConfig
	seq   int
}

func host(i int) string { return "127.0.0." + strconv.Itoa(i+1) } // 0-based
func hp(h string, p int) string {
	return net.JoinHostPort(h, strconv.Itoa(p))
}

// caddies is the number of Caddy processes.
func (e *env) caddies() int {
	if e.deploy == Balancer {
		return e.n + 1
	}
	return e.n
}

// nodeConfig is Caddy i's (0-based; i == n is the balancer) configuration.
func (e *env) nodeConfig(i int) cluster.NodeConfig {
	var peers []string
	for j := range e.caddies() {
		if j != i {
			peers = append(peers, hp(host(j), e.base+4))
		}
	}
	key, extra := e.key, e.extra
	e.mu.Lock()
	if i < len(e.keys) {
		key = e.keys[i]
		if len(e.acceptKeys[i]) > 0 {
			extra = append(slices.Clone(extra), "accept_keys "+strings.Join(e.acceptKeys[i], " "))
		}
	}
	e.mu.Unlock()
	c := cluster.NodeConfig{
		Index:         i + 1,
		HTTPPort:      e.base,
		UDPPort:       e.base + 3,
		AdminPort:     e.base + 10 + i + 1,
		Cluster:       "faults",
		Peers:         peers,
		Key:           key,
		Interval:      e.o.Interval,
		MaxAge:        e.o.MaxAge,
		ExtraBackhand: extra,
		GracePeriod:   e.o.GracePeriod,
	}
	if e.o.Handoff {
		c.ExtraGlobal = append(c.ExtraGlobal, "servers {\n\t\tlistener_wrappers {\n\t\t\tbackhand_handoff\n\t\t}\n\t}")
	}
	if i == e.n { // the balancer
		c.Name = "balancer"
		c.Tags = []string{"balancer"}
		c.ExtraSites = []string{fmt.Sprintf(":%d {\n\tbind %s\n\treverse_proxy {\n\t\tdynamic backhand {\n\t\t\ttags app\n\t\t}\n\t\tlb_policy backhand\n\t\tlb_retries %d\n%s\t}\n}\n",
			e.base+5, host(i), e.o.BalancerRetries, e.transport("\t\t"))}
		return c
	}
	c.Tags = []string{"app"}
	c.Advertise = hp(host(i), e.base+2)
	c.AppUpstream = hp(host(i), e.base+1)
	if e.deploy == Directive {
		c.AppDirectives = []string{"backhand"}
		if t := e.transport("\t\t"); t != "" {
			c.AppDirectives = []string{"backhand {\n" + t + "\t}"}
		}
	}
	if i == e.victim && len(e.wrap) > 0 {
		c.Wrap = e.wrap
	}
	return c
}

// transport is the transport block of the proxy to peers, indented by
// indent, or "" for Caddy's default transport.
func (e *env) transport(indent string) string {
	if e.o.ResponseHeaderTimeout <= 0 {
		return ""
	}
	return fmt.Sprintf("%stransport http {\n%s\tresponse_header_timeout %v\n%s}\n", indent, indent, e.o.ResponseHeaderTimeout, indent)
}

// urls are the clients' entry points.
func (e *env) urls() []string {
	if e.deploy == Balancer {
		return []string{"http://" + hp(host(e.n), e.base+5) + "/"}
	}
	var u []string
	for i := range e.n {
		if i != e.victim {
			u = append(u, "http://"+hp(host(i), e.base)+"/")
		}
	}
	return u
}

// observers are the Caddies whose view of the victim counts: the
// balancer, or every node the clients reach.
func (e *env) observers() []*cluster.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.deploy == Balancer {
		return []*cluster.Node{e.nodes[e.n]}
	}
	var out []*cluster.Node
	for i := range e.n {
		if i != e.victim {
			out = append(out, e.nodes[i])
		}
	}
	return out
}

func (e *env) node(i int) *cluster.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nodes[i]
}

func (e *env) allNodes() []*cluster.Node {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*cluster.Node(nil), e.nodes...)
}

// names are the app nodes' names.
func (e *env) names() []string {
	var out []string
	for i := range e.n {
		out = append(out, "node"+strconv.Itoa(i+1))
	}
	return out
}

// setup starts everything and waits until every Caddy sees every app node
// live.
func (e *env) setup(ctx context.Context, horizon time.Duration) error {
	hosts := []string{}
	for i := range e.n + 1 {
		hosts = append(hosts, host(i))
	}
	base, err := cluster.FreeBlock(blockSize, hosts...)
	if err != nil {
		return err
	}
	e.base = base
	e.start = time.Now() // provisional; run() sets it when the load starts
	for i := range e.n {
		a := NewApp("node"+strconv.Itoa(i+1), hp(host(i), base+1), e.o.Workers, e.o.Mean, e.start, horizon, uint64(i+1))
		if err := a.Start(); err != nil {
			return err
		}
		e.apps = append(e.apps, a)
		t, err := NewTCPRelay(hp(host(i), base+2), hp(host(i), base))
		if err != nil {
			return fmt.Errorf("fault: TCP relay: %w", err)
		}
		e.tcp = append(e.tcp, t)
	}
	for i := range e.caddies() {
		u, err := NewUDPRelay(hp(host(i), base+4), hp(host(i), base+3))
		if err != nil {
			return fmt.Errorf("fault: UDP relay: %w", err)
		}
		e.udp = append(e.udp, u)
	}
	e.nodes = make([]*cluster.Node, e.caddies())
	e.cfgs = make([]cluster.NodeConfig, e.caddies())
	for i := range e.caddies() {
		if err := e.startNode(i); err != nil {
			return err
		}
	}
	for _, n := range e.allNodes() {
		if err := n.WaitReady(ctx, 30*time.Second); err != nil {
			return err
		}
	}
	return e.waitSeen(ctx, 20*time.Second)
}

// waitSeen waits until every Caddy sees every app node live.
func (e *env) waitSeen(ctx context.Context, timeout time.Duration) error {
	names := e.names()
	for _, n := range e.allNodes() {
		err := cluster.Poll(ctx, timeout, 50*time.Millisecond, func() error {
			v, err := n.Peers(ctx)
			if err != nil {
				return err
			}
			for _, name := range names {
				p, ok := v.Peer(name)
				if !ok || (p.State != "live" && p.State != "self") {
					return fmt.Errorf("%s sees %s", n.Name(), v.Summary())
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// startNode starts Caddy i (again).
func (e *env) startNode(i int) error {
	cfg := e.nodeConfig(i)
	e.mu.Lock()
	e.seq++
	dir := e.dir
	e.mu.Unlock()
	n, err := cluster.Start(e.bin, dir, cfg, nil)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.nodes[i], e.cfgs[i] = n, cfg
	e.mu.Unlock()
	return nil
}

// teardown stops everything; it keeps the directory if keep.
func (e *env) teardown() error {
	err := cluster.StopAll(e.allNodes(), 5*time.Second)
	for _, a := range e.apps {
		a.Kill()
	}
	for _, t := range e.tcp {
		t.Close()
	}
	for _, u := range e.udp {
		u.Close()
	}
	return err
}

// logErrors returns the nodes' error lines that mention sub.
func (e *env) grepLogs(sub string, max int) []string {
	var out []string
	for _, n := range e.allNodes() {
		if n == nil {
			continue
		}
		data, err := os.ReadFile(n.LogPath)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			if strings.Contains(line, sub) && len(out) < max {
				out = append(out, n.Name()+": "+strings.TrimSpace(line))
			}
		}
	}
	return out
}

// logf writes a progress line.
func (e *env) logf(format string, args ...any) {
	if e.o.Log == nil {
		return
	}
	fmt.Fprintf(e.o.Log, "  [%6.1fs] %s\n", time.Since(e.start).Seconds(), fmt.Sprintf(format, args...))
}
