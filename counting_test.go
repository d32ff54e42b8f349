package backhand

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
)

// countingRequest is a request as Caddy's server hands it to handlers
// (a variables map in its context), with its own context to end it.
func countingRequest() (*http.Request, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{}))
	return httptest.NewRequest("GET", "/", nil).WithContext(ctx), cancel
}

// proxyAttempt is what reverse_proxy does for one attempt with `dynamic
// backhand` and `lb_policy backhand`: get the upstreams, select one.
func proxyAttempt(t *testing.T, src *Upstreams, s *Selection, r *http.Request) *reverseproxy.Upstream {
	t.Helper()
	ups, err := src.GetUpstreams(r)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range ups {
		u.Host = new(reverseproxy.Host)
	}
	up := s.Select(ups, r, nil)
	if up == nil {
		t.Fatal("no upstream")
	}
	return up
}

// heardPeer is a test peer heard age before the wall clock's now (the
// request path reads the wall clock).
func heardPeer(name, advertise string, age time.Duration) *candidacy.Peer {
	p := tp(name, 0, adv(advertise))
	p.ReceivedAt = time.Now().Add(-age)
	return p
}

// inFlight returns this node's in-flight count to each peer.
func inFlight(n *node) map[string]int64 {
	out := map[string]int64{}
	for _, sl := range n.table.Peers() {
		out[sl.Name()] = sl.InFlight()
	}
	return out
}

// A dedicated balancer without backhand_track: the policy counts every
// request it routes in flight from its choice until the request ends, so
// decisions over a table that does not change (announcements a second
// old, every peer equally idle) spread instead of herding onto the
// apparent minimum; and the counts come down exactly when the requests end.
func TestPolicyCountsItsOwnRequests(t *testing.T) {
	var peers []*candidacy.Peer
	for i := range 4 {
		peers = append(peers, heardPeer(fmt.Sprintf("p%d", i), fmt.Sprintf("127.0.0.%d:80", i+2), 500*time.Millisecond))
	}
	n := testNode(peers...)
	s := policy(n, candidacy.DefaultChain()...)
	s.chain.Predict = candidacy.PredictDecay
	src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}

	var cancels []context.CancelFunc
	for range 40 {
		r, cancel := countingRequest()
		cancels = append(cancels, cancel)
		proxyAttempt(t, src, s, r)
	}
	counts := inFlight(n)
	t.Logf("in flight after 40 requests: %v", counts)
	for name, c := range counts {
		if c < 8 || c > 12 {
			t.Errorf("%s has %d in flight, want 10 +-2: the decisions herd", name, c)
		}
	}
	for _, cancel := range cancels {
		cancel()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		total := int64(0)
		for _, c := range inFlight(n) {
			total += c
		}
		if total == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("in flight %v after every request ended, want all 0", inFlight(n))
		}
		time.Sleep(time.Millisecond)
	}
	sent := uint64(0)
	for _, sl := range n.table.Peers() {
		sent += sl.Sent()
	}
	if sent != 40 {
		t.Errorf("sent %d, want 40", sent)
	}
	if got := n.stats.forwarded.Load(); got != 40 {
		t.Errorf("forwarded %d, want 40", got)
	}
}

// With backhand_track on the route, the track handler ends the count when
// the rest of the route returns, and the context's end adds nothing: each
// request counts once. A retry moves the count to the next peer.
func TestPolicyCountsOnceWithTrack(t *testing.T) {
	n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardPeer("b", "127.0.0.3:80", 0))
	s := policy(n, candidacy.DefaultChain()...)
	src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}
	track := &Track{node: n}
	r, cancel := countingRequest()
	var during map[string]int64
	var first string
	err := track.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		first = proxyAttempt(t, src, s, r).Dial // fails, reverse_proxy retries:
		proxyAttempt(t, src, s, r)
		during = inFlight(n)
		return nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if during["a"]+during["b"] != 1 {
		t.Errorf("in flight during the second attempt: %v, want 1 in all", during)
	}
	failed := "a"
	if first == "127.0.0.3:80" {
		failed = "b"
	}
	if during[failed] != 0 {
		t.Errorf("the failed first choice %s still counts the request: %v", failed, during)
	}
	cancel()
	time.Sleep(20 * time.Millisecond) // a context-ended finish, if wrongly registered, would run now
	if got := inFlight(n); got["a"] != 0 || got["b"] != 0 {
		t.Errorf("in flight after the request: %v, want 0", got)
	}
	if got := n.stats.forwarded.Load(); got != 1 {
		t.Errorf("forwarded %d, want 1", got)
	}
}

// backhand_track counts a request as busy here; the backhand directive
// after it takes the request out of that count while a peer serves it,
// and puts it back when every peer failed and it serves the request
// itself: a node that only forwards does not announce itself busy.
func TestTrackBusyLeavesForwardedRequests(t *testing.T) {
	n := testNode(heardPeer("a", "127.0.0.2:80", 0))
	track := &Track{node: n}
	h := &Handler{node: n}
	r, cancel := countingRequest()
	defer cancel()
	var during, failedOver int64
	err := track.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		st := stateOf(r)
		if got := st.claimCounting(roleDirective); got != roleTrack {
			t.Errorf("counting claimed by %d, want backhand_track's", got)
		}
		st.releaseBusy() // what forward does before proxying
		during = n.stats.busy.Load()
		return h.serveLocally(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
			failedOver = n.stats.busy.Load() // every peer failed: served here
			return nil
		}))
	}))
	if err != nil {
		t.Fatal(err)
	}
	if during != 0 || failedOver != 1 {
		t.Errorf("busy while forwarded %d, while served here after the failure %d: want 0 and 1", during, failedOver)
	}
	if got := n.stats.busy.Load(); got != 0 {
		t.Errorf("busy after the request: %d, want 0", got)
	}
}
