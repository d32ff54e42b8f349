package backhand

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// The request path's unit harness: a backhand app provisioned in memory
// (no announcer, no sockets of its own), a peer table filled by hand, peers
// that are httptest servers on 127.0.0.1, and handlers provisioned in the
// app's Caddy context as a config would provision them.

const unitKey = "unit-test-cluster-key-0123456789"

var unitClusters atomic.Int64

// unitApp is a backhand app provisioned in memory: its node's table holds
// what the test puts there, and modules are provisioned in ctx.
type unitApp struct {
	t   *testing.T
	ctx caddy.Context
	app *App
	n   *node
}

// newUnitApp provisions a backhand app named "me" advertising selfAddr, in
// a cluster of its own (the node state is per cluster and process), with
// the limits and keys that Start would apply, and this node in its table.
func newUnitApp(t *testing.T, selfAddr string) *unitApp {
	t.Helper()
	raw, err := json.Marshal(map[string]any{
		"name": "me", "cluster": fmt.Sprintf("unit-%d", unitClusters.Add(1)),
		"advertise": selfAddr, "key": unitKey, "listen": []string{"udp/127.0.0.1:0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	root, err := caddy.ProvisionContext(&caddy.Config{AppsRaw: caddy.ModuleMap{"backhand": raw}})
	if err != nil {
		t.Fatal(err)
	}
	v, err := root.AppIfConfigured("backhand")
	if err != nil {
		t.Fatal(err)
	}
	app := v.(*App)
	ctx, cancel := caddy.NewContext(root)
	t.Cleanup(func() {
		cancel()
		_ = app.Cleanup()
	})
	app.node.table.SetLimits(app.tableLimits())
	app.node.keys.Store(deriveKeys(app.secret, time.Duration(app.ReplayWindow)))
	me := heardPeer("me", selfAddr, 0)
	app.node.table.UpdateSelf(me)
	return &unitApp{t: t, ctx: ctx, app: app, n: app.node}
}

// peer puts a peer heard just now into the table, or announces it again.
func (u *unitApp) peer(name, addr string, set ...func(*candidacy.Peer)) *candidacy.Slot {
	p := heardPeer(name, addr, 0)
	for _, f := range set {
		f(p)
	}
	u.n.table.Store(p)
	return u.n.table.Lookup(name)
}

// heardWith is heardPeer with figure setters applied.
func heardWith(name, addr string, age time.Duration, set ...func(*candidacy.Peer)) *candidacy.Peer {
	p := heardPeer(name, addr, age)
	for _, f := range set {
		f(p)
	}
	return p
}

func (u *unitApp) slot(name string) *candidacy.Slot { return u.n.table.Lookup(name) }

// load provisions a module in the app's context.
func (u *unitApp) load(id, raw string) (any, error) {
	return u.ctx.LoadModuleByID(id, json.RawMessage(raw))
}

// directive provisions a backhand handler with proxy config proxy ("" for
// none) and replaces its policy's chain with chain.
func (u *unitApp) directive(proxy string, chain ...CandidacyFunction) *Handler {
	u.t.Helper()
	raw := `{}`
	if proxy != "" {
		raw = `{"proxy":` + proxy + `}`
	}
	mod, err := u.load("http.handlers.backhand", raw)
	if err != nil {
		u.t.Fatal(err)
	}
	h := mod.(*Handler)
	h.policy.chain.Functions = chain
	return h
}

// proxy provisions a reverse_proxy handler from its JSON.
func (u *unitApp) proxy(raw string) *reverseproxy.Handler {
	u.t.Helper()
	mod, err := u.load("http.handlers.reverse_proxy", raw)
	if err != nil {
		u.t.Fatal(err)
	}
	return mod.(*reverseproxy.Handler)
}

// outcomes returns the node's non-zero outcome counts by name.
func outcomes(n *node) map[string]uint64 {
	out := map[string]uint64{}
	for o := range numOutcomes {
		if c := n.decisions.outcomes[o].Load(); c > 0 {
			out[o.String()] = c
		}
	}
	return out
}

func sameOutcomes(got map[string]uint64, want map[string]uint64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// caddyRequest is a request as Caddy's HTTP server hands it to handlers
// (replacer, server, variables with the client's IP), from 127.0.0.1, with
// a context of its own to end it.
func caddyRequest(method, target string) (*http.Request, *httptest.ResponseRecorder, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	r := httptest.NewRequest(method, target, nil).WithContext(ctx)
	r.RemoteAddr = "127.0.0.1:40000"
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
	return r, w, cancel
}

// byNames is a deterministic test chain: the named peers, in that order;
// every other peer is dropped.
type byNames []string

func (f byNames) Candidates(c *candidacy.Candidates) {
	c.Filter(func(x *candidacy.Candidate) bool { return slices.Contains(f, x.Peer.Name) })
	c.Sort(func(x *candidacy.Candidate) float64 { return float64(slices.Index(f, x.Peer.Name)) })
}

// site is an HTTP endpoint of the test: a peer's server, or the rest of
// this node's route. It records what it saw of each request.
type site struct {
	name string
	mu   sync.Mutex
	hits int
	hops []string // the hop header of each request
	// during, if set, runs inside each request (before the answer).
	during func(r *http.Request)
	// fail, if set, makes the site write a header and return this error
	// (as the rest of a route can).
	fail error
}

func (s *site) record(r *http.Request) {
	s.mu.Lock()
	s.hits++
	s.hops = append(s.hops, r.Header.Get(wire.HopHeader))
	s.mu.Unlock()
	if s.during != nil {
		s.during(r)
	}
}

func (s *site) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits
}

func (s *site) hop(i int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hops[i]
}

// ServeHTTP makes the site the rest of a Caddy route.
func (s *site) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	s.record(r)
	w.Header().Set("Served-By", s.name)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(s.name))
	return s.fail
}

// peerSite starts an HTTP server on 127.0.0.1 for a peer.
func peerSite(t *testing.T, name string) (*site, string) {
	s := &site{name: name}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = s.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	return s, srv.Listener.Addr().String()
}

// deadAddr is a loopback address nothing listens on: dials fail at once.
func deadAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// totalInFlight sums this node's in-flight counts over every peer.
func totalInFlight(n *node) int64 {
	var sum int64
	for _, c := range inFlight(n) {
		sum += c
	}
	return sum
}

// failed reports whether an attempt to the peer failed since its last
// announcement (so it is no candidate until the next one).
func failed(s *candidacy.Slot) bool { return s.FailedSince(s.Peer().ReceivedAt) }

// sampled reports whether this node learnt a response time of the peer.
func sampled(s *candidacy.Slot) bool {
	_, ok := s.ObservedMicros()
	return ok
}
