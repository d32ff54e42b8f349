package backhand_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/internal/cluster"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// The `backhand` directive on every node's app site: each node is an entry
// point, as with mod_backhand. These tests send requests to node1's app
// site and look at which node answered ("served by nodeN").

// directiveCluster starts n nodes whose app site runs `backhand { chain }`
// (the chain's lines separated by ";").
func directiveCluster(t *testing.T, base, n int, chain string, modify func(*cluster.NodeConfig)) []*cluster.Node {
	t.Helper()
	nodes, _ := itCluster{base: base, n: n, modify: func(c *cluster.NodeConfig) {
		c.Entry = false
		c.AppDirectives = []string{backhandBlock(chain)}
		if modify != nil {
			modify(c)
		}
	}}.start(t)
	waitAllSeeAll(t, nodes, 2*itInterval+itStartup)
	return nodes
}

func backhandBlock(chain string) string {
	lines := strings.Split(chain, ";")
	for i, l := range lines {
		lines[i] = "\t\t" + strings.TrimSpace(l)
	}
	return "backhand {\n" + strings.Join(lines, "\n") + "\n\t}"
}

// servedBy makes count requests to url and counts who served them; any
// failure fails the test.
func servedBy(t *testing.T, client *cluster.Node, url string, count int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := range count {
		who, err := get(t.Context(), client, url)
		if err != nil {
			t.Fatalf("request %d of %d: %v", i+1, count, err)
		}
		seen[who]++
	}
	return seen
}

// Nodes whose applications report different loads receive traffic in that
// order, and the order follows the reports as they change.
func TestIntegrationDirectiveFollowsAppLoad(t *testing.T) {
	dir := t.TempDir()
	report := func(i int) string { return filepath.Join(dir, fmt.Sprintf("load%d", i)) }
	write := func(i int, load string) {
		if err := os.WriteFile(report(i), []byte("load="+load+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(1, "0.9")
	write(2, "0.1")
	write(3, "0.5")
	nodes := directiveCluster(t, itBase(t, 3), 3, "byLoad; predict off", func(c *cluster.NodeConfig) {
		c.ExtraBackhand = []string{"app_report file " + report(c.Index)}
	})
	url := nodes[0].Config.AppURL()
	waitServedBy(t, nodes[0], url, "node2")
	if seen := servedBy(t, nodes[0], url, 20); seen["node2"] != 20 {
		t.Errorf("with loads 0.9/0.1/0.5 every request should go to node2: %v", seen)
	}
	write(2, "0.95") // node2 is now the busiest: node3 (0.5) comes first
	waitServedBy(t, nodes[0], url, "node3")
	if seen := servedBy(t, nodes[0], url, 20); seen["node3"] != 20 {
		t.Errorf("with loads 0.9/0.95/0.5 every request should go to node3: %v", seen)
	}
}

// waitServedBy polls until a request to url is served by want.
func waitServedBy(t *testing.T, client *cluster.Node, url, want string) {
	t.Helper()
	err := cluster.Poll(t.Context(), 3*time.Second+5*itInterval, itPoll, func() error {
		who, err := get(t.Context(), client, url)
		if err != nil {
			return cluster.Permanent(err)
		}
		if who != want {
			return fmt.Errorf("served by %s, want %s", who, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// When the chain picks this node (a large byLoad bias towards self) or
// ends empty (off), the rest of the route serves the request locally.
func TestIntegrationDirectiveServesLocally(t *testing.T) {
	for _, chain := range []string{"byLoad 1000", "off"} {
		t.Run(chain, func(t *testing.T) {
			nodes := directiveCluster(t, itBase(t, 3), 3, chain, nil)
			for _, n := range nodes {
				if seen := servedBy(t, n, n.Config.AppURL(), 10); seen[n.Name()] != 10 {
					t.Errorf("chain %q: requests to %s should all be served there: %v", chain, n.Name(), seen)
				}
			}
		})
	}
}

// A node never forwards a request that a peer forwarded to it: with
// removeSelf on every node, each request is forwarded exactly once. A
// marker a client forged is stripped and ignored (the request is balanced
// as usual); a valid one makes the node serve the request itself.
func TestIntegrationDirectiveLoopPrevention(t *testing.T) {
	nodes := directiveCluster(t, itBase(t, 3), 3, "removeSelf; byRandom", nil)
	node1 := nodes[0]
	url := node1.Config.AppURL()
	seen := servedBy(t, node1, url, 30)
	if seen["node1"] != 0 || seen["node2"] == 0 || seen["node3"] == 0 {
		t.Errorf("with removeSelf everywhere, node1's requests should be served once forwarded, by node2 and node3: %v", seen)
	}

	forged := fmt.Sprintf("v2;node2;node1;203.0.113.9;http;%d;%s", time.Now().UnixMilli(), strings.Repeat("ab", 16))
	signer := wire.NewHopSigner([]byte(itKey))
	misdirected := signer.Mark(wire.Hop{From: "node2", To: "node3", Client: "203.0.113.9", Scheme: "http", At: time.Now()}, "GET", "/")
	for _, marker := range []string{forged, misdirected} {
		for range 10 {
			if who := getWithHop(t, node1, url, marker); who == "node1" {
				t.Fatalf("hop marker %q made node1 serve the request itself", marker)
			}
		}
	}
	valid := signer.Mark(wire.Hop{From: "node2", To: "node1", Client: "203.0.113.9", Scheme: "http", At: time.Now()}, "GET", "/")
	for range 5 {
		if who := getWithHop(t, node1, url, valid); who != "node1" {
			t.Fatalf("a valid hop marker: served by %s, want node1 (a forwarded request is never forwarded again)", who)
		}
	}
}

func getWithHop(t *testing.T, n *cluster.Node, url, marker string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Backhand-Hop", marker)
	resp, err := n.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readAll(resp)
	if resp.StatusCode != 200 || !strings.HasPrefix(body, "served by ") {
		t.Fatalf("GET with a hop marker: %d %q", resp.StatusCode, body)
	}
	return strings.TrimPrefix(body, "served by ")
}

func readAll(resp *http.Response) string {
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			return b.String()
		}
	}
}

// HTTPRedirectToIP answers GET with a redirect to the winner's address
// instead of proxying, with a marker that makes the winner serve it: a
// client that follows redirects is served after exactly one, by the node
// the redirect named, with the original path and query. Other methods
// are proxied.
func TestIntegrationDirectiveRedirect(t *testing.T) {
	nodes := directiveCluster(t, itBase(t, 3), 3, "removeSelf; byRandom; HTTPRedirectToIP", nil)
	node1 := nodes[0]
	noFollow := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	want := map[string]string{nodes[1].Config.AppURL(): "node2", nodes[2].Config.AppURL(): "node3"}
	servedBy := map[string]int{}
	for range 20 {
		resp, err := noFollow.Get(node1.Config.AppURL() + "some/path?q=1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		base, rest, _ := strings.Cut(loc, "some/path?q=1&backhand_hop=")
		if resp.StatusCode != http.StatusFound || want[base] == "" || rest == "" {
			t.Fatalf("GET: %d Location %q, want 302 to node2 or node3 with the same URI and a marker", resp.StatusCode, loc)
		}
		// Follow it: the node it names serves it, without another redirect.
		resp, err = noFollow.Get(loc)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(resp)
		resp.Body.Close()
		if resp.StatusCode != 200 || body != "served by "+want[base] {
			t.Fatalf("following %s: %d %q, want served by %s", loc, resp.StatusCode, body, want[base])
		}
		servedBy[body]++
	}
	if len(servedBy) != 2 {
		t.Errorf("served by %v, want both node2 and node3 (byRandom)", servedBy)
	}
	resp, err := noFollow.Post(node1.Config.AppURL(), "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(resp)
	resp.Body.Close()
	if resp.StatusCode != 200 || body == "served by node1" {
		t.Errorf("POST: %d %q, want it proxied to a peer", resp.StatusCode, body)
	}
}

// bySession keeps a session with the server whose IPv4 address starts its
// id; byCookie keeps a client with the node the directive chose first.
func TestIntegrationDirectiveSessionAffinity(t *testing.T) {
	nodes := directiveCluster(t, itBase(t, 3), 3, "bySession; byCookie; byRandom", nil)
	node1 := nodes[0]
	url := node1.Config.AppURL()
	for range 10 {
		if who := getWithHeader(t, url, "Cookie", "PHPSESSID=7f000003c0ffee"); who != "node3" {
			t.Fatalf("PHPSESSID 7f000003...: served by %s, want node3 (127.0.0.3)", who)
		}
	}

	// byCookie: the first answer sets the cookie; every later request
	// with it goes to the same node.
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	first := strings.TrimPrefix(readAll(resp), "served by ")
	resp.Body.Close()
	var cookie *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "backhand" {
			cookie = c
		}
	}
	if cookie == nil {
		t.Fatalf("no backhand cookie set; headers %v", resp.Header)
	}
	for range 15 {
		if who := getWithHeader(t, url, "Cookie", "backhand="+cookie.Value); who != first {
			t.Fatalf("with the cookie for %s: served by %s", first, who)
		}
	}
	if who := getWithHeader(t, url, "Cookie", "backhand=node2.00000000000000000000000000000000"); who == "" {
		t.Fatal("a forged cookie broke the request")
	}
}

func getWithHeader(t *testing.T, url, key, value string) string {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	req.Header.Set(key, value)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readAll(resp)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %q", url, resp.StatusCode, body)
	}
	return strings.TrimPrefix(body, "served by ")
}

// loadLoop sends requests from workers until stopped or max requests were
// made, counting failures and who served the rest.
type loadLoop struct {
	clientLoop
	failed atomic.Int64
	mu     sync.Mutex
	errs   []string
	served map[string]int
}

func startLoad(ctx context.Context, client *cluster.Node, url string, workers int, max int64) *loadLoop {
	l := &loadLoop{served: map[string]int{}}
	l.start(ctx, workers, max, func() {
		who, err := get(ctx, client, url)
		if ctx.Err() != nil {
			return
		}
		l.mu.Lock()
		defer l.mu.Unlock()
		if err != nil {
			l.failed.Add(1)
			l.errs = append(l.errs, err.Error())
		} else {
			l.served[who]++
		}
	})
	return l
}

// halt stops the workers and returns how many requests each node served.
func (l *loadLoop) halt() map[string]int {
	l.clientLoop.halt()
	return l.served
}

// A peer killed under load loses no request: the next candidate is tried.
func TestIntegrationDirectivePeerKilledUnderLoad(t *testing.T) {
	nodes := directiveCluster(t, itBase(t, 3), 3, "removeSelf; byRandom", func(c *cluster.NodeConfig) { c.MaxAge = 3 * itInterval })
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	load := startLoad(ctx, nodes[0], nodes[0].Config.AppURL(), 4, 3000)
	waitRequests(t, load, 200)
	if err := nodes[2].Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := load.total.Load()
	waitRequests(t, load, killedAt+500)
	served := load.halt()
	t.Logf("%d requests, %d after kill -9 of node3; served %v", load.total.Load(), load.total.Load()-killedAt, served)
	if f := load.failed.Load(); f > 0 {
		t.Errorf("%d requests failed after node3 was killed: %v", f, load.errs[:min(len(load.errs), 5)])
	}
}

func waitRequests(t *testing.T, l *loadLoop, n int64) {
	t.Helper()
	if err := cluster.Poll(t.Context(), 10*time.Second, 5*time.Millisecond, func() error {
		if l.total.Load() < n {
			return fmt.Errorf("%d of %d requests made", l.total.Load(), n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// Changing the chain through the admin API (POST /load) takes effect for
// the next requests without failing any in flight.
func TestIntegrationDirectiveChainChangedLive(t *testing.T) {
	nodes := directiveCluster(t, itBase(t, 3), 3, "byHostname ^node2$", nil)
	node1 := nodes[0]
	url := node1.Config.AppURL()
	if seen := servedBy(t, node1, url, 10); seen["node2"] != 10 {
		t.Fatalf("byHostname ^node2$: %v", seen)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	load := startLoad(ctx, node1, url, 4, 3000)
	waitRequests(t, load, 100)

	cfg := node1.Config
	cfg.AppDirectives = []string{backhandBlock("byHostname ^node3$")}
	if err := node1.Load(t.Context(), cfg.Caddyfile()); err != nil {
		t.Fatal(err)
	}
	waitServedBy(t, node1, url, "node3")
	after := servedBy(t, node1, url, 20)
	waitRequests(t, load, load.total.Load()+200)
	served := load.halt()
	t.Logf("under load during the change: %v", served)
	if after["node3"] != 20 {
		t.Errorf("after the change every request should go to node3: %v", after)
	}
	if f := load.failed.Load(); f > 0 {
		t.Errorf("%d requests failed during the change: %v", f, load.errs[:min(len(load.errs), 5)])
	}
}

// A candidate that Caddy reports unavailable is never chosen: with
// unhealthy_request_count 1, node2 is full while one request is in flight
// there, and the next candidate serves the others.
func TestIntegrationPolicySkipsUnavailable(t *testing.T) {
	release := make(chan struct{})
	held := make(chan struct{}, 1)
	hold := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		held <- struct{}{}
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		fmt.Fprint(w, "served by node2 slowly")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hold.Serve(ln)
	defer hold.Close()

	nodes, _ := itCluster{base: itBase(t, 3), n: 3, modify: func(c *cluster.NodeConfig) {
		c.LBPolicy = "backhand {\n\t\t\tbyHostname ^node[23]$\n\t\t}"
		c.ProxyOptions = []string{"unhealthy_request_count 1"}
		if c.Index == 2 {
			c.AppDirectives = []string{"handle /slow {\n\t\treverse_proxy " + ln.Addr().String() + "\n\t}"}
		}
	}}.start(t)
	waitAllSeeAll(t, nodes, 2*itInterval+itStartup)
	entry := nodes[0].Config.EntryURL()
	if seen := servedBy(t, nodes[0], entry, 5); seen["node2"] != 5 {
		t.Fatalf("node2 comes first by name: %v", seen)
	}
	slow := make(chan string, 1)
	go func() {
		_, body, err := nodes[0].Get(t.Context(), entry+"slow")
		if err != nil {
			body = err.Error()
		}
		slow <- body
	}()
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow request never reached node2")
	}
	if seen := servedBy(t, nodes[0], entry, 10); seen["node3"] != 10 {
		t.Errorf("while node2 is full, every request should go to node3: %v", seen)
	}
	close(release)
	if body := <-slow; body != "served by node2 slowly" {
		t.Errorf("the slow request: %q", body)
	}
	if seen := servedBy(t, nodes[0], entry, 5); seen["node2"] != 5 {
		t.Errorf("once node2 is free again it comes first: %v", seen)
	}
}

// The application behind the node that serves a forwarded request sees
// the original client, not the forwarding peer, through the standard
// mechanisms and without trusted_proxies: a reverse_proxy sends it
// X-Forwarded-For with the client's address and X-Forwarded-Proto with
// the client's scheme, and the FastCGI transport (what php_fastcgi uses)
// sets REMOTE_ADDR to the client. The client connects from 127.0.0.9, so
// its address differs from every node's.
func TestIntegrationDirectiveKeepsClientAddress(t *testing.T) {
	echo := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "xff=%s proto=%s", r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"))
	})}
	echoLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go echo.Serve(echoLn)
	t.Cleanup(func() { echo.Close() })
	fcgiLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fcgi.Serve(fcgiLn, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// net/http/fcgi puts REMOTE_ADDR in RemoteAddr and HTTPS=on in TLS.
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "remote=%s https=%v", host, r.TLS != nil)
	}))
	t.Cleanup(func() { fcgiLn.Close() })

	nodes := directiveCluster(t, itBase(t, 2), 2, "removeSelf; byRandom", func(c *cluster.NodeConfig) {
		c.AppDirectives = append(c.AppDirectives, "reverse_proxy /fcgi/* "+fcgiLn.Addr().String()+" {\n\t\ttransport fastcgi\n\t}")
		c.AppUpstream = echoLn.Addr().String()
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9)}}).DialContext,
	}}
	for path, want := range map[string]string{"/": "xff=127.0.0.9 proto=http", "/fcgi/x": "remote=127.0.0.9 https=false"} {
		resp, err := client.Get(strings.TrimSuffix(nodes[0].Config.AppURL(), "/") + path)
		if err != nil {
			t.Fatal(err)
		}
		body := readAll(resp)
		resp.Body.Close()
		if resp.StatusCode != 200 || body != want {
			t.Errorf("GET %s through node1 (served by node2): %d %q, want %q", path, resp.StatusCode, body, want)
		}
	}
}
