package backhand

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
)

// dials returns the dial addresses of upstreams.
func dials(ups []*reverseproxy.Upstream) []string {
	out := make([]string, len(ups))
	for i, u := range ups {
		out[i] = u.Dial
	}
	return out
}

// withHosts gives upstreams the Host that reverse_proxy fills in.
func withHosts(ups []*reverseproxy.Upstream) []*reverseproxy.Upstream {
	for _, u := range ups {
		u.Host = new(reverseproxy.Host)
	}
	return ups
}

// candidatesOf returns the candidates a chain leaves for the peers of n,
// copied out of the list.
func candidatesOf(n *node, chain ...CandidacyFunction) []candidacy.Candidate {
	c := policy(n, chain...).evaluate(candidacy.Run{Now: time.Now()})
	defer c.Release()
	return slices.Clone(c.Head(maxKeep))
}

// Provisioned as Caddy provisions them, `dynamic backhand` is linked to
// its reverse_proxy's `lb_policy backhand` (and the directive's source to
// the directive's policy). Caddy drops the policy's JSON once it is
// loaded, so the link must not depend on it.
func TestSourceLinkedWhenProvisioned(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	rp := u.proxy(`{"dynamic_upstreams":{"source":"backhand"},"load_balancing":{"selection_policy":{"policy":"backhand"}}}`)
	if src := rp.DynamicUpstreams.(*Upstreams); src.policy == nil || src.policy != rp.LoadBalancing.SelectionPolicy {
		t.Errorf("reverse_proxy: source linked to %p, want its policy %p", src.policy, rp.LoadBalancing.SelectionPolicy)
	}
	mod, err := u.load("http.handlers.backhand", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	h := mod.(*Handler)
	if src := h.proxy.DynamicUpstreams.(*Upstreams); src.policy != h.policy {
		t.Errorf("backhand directive: source linked to %p, want the directive's policy %p", src.policy, h.policy)
	}
}

// linkPolicy links the source to the handler's lb_policy when that is a
// provisioned backhand policy (Caddy drops the policy's JSON once it is
// loaded), fails clearly when the JSON names backhand but the policy is
// not provisioned yet, and links nothing for other policies.
func TestLinkPolicy(t *testing.T) {
	sel := &Selection{}
	raw := func(policy string) json.RawMessage { return json.RawMessage(`{"policy":"` + policy + `"}`) }
	for _, tt := range []struct {
		name string
		h    *reverseproxy.Handler
		want *Selection
		err  string
	}{
		{"no handler", nil, nil, ""},
		{"no load balancing", &reverseproxy.Handler{}, nil, ""},
		{"backhand, provisioned", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicyRaw: raw("backhand"), SelectionPolicy: sel}}, sel, ""},
		{"backhand, not provisioned", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicyRaw: raw("backhand")}}, nil, "not provisioned before its upstream source"},
		{"backhand provisioned, JSON dropped (as Caddy does)", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicy: sel}}, sel, ""},
		{"random", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicyRaw: raw("random"), SelectionPolicy: &reverseproxy.RandomSelection{}}}, nil, ""},
		{"policy not a string", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicyRaw: json.RawMessage(`{"policy":1}`)}}, nil, ""},
		{"not JSON", &reverseproxy.Handler{LoadBalancing: &reverseproxy.LoadBalancing{SelectionPolicyRaw: json.RawMessage(`backhand`)}}, nil, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := new(Upstreams)
			err := src.linkPolicy(tt.h)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("error %v, want %q", err, tt.err)
			}
			if src.policy != tt.want {
				t.Errorf("linked to %p, want %p", src.policy, tt.want)
			}
		})
	}
}

// The pool the source offered is recognised by its upstream values, not
// their addresses: a pool of other upstreams with the same addresses (as
// another source could return) is balanced by the chain, matched by
// address; so is a pool with one upstream more or less.
func TestOfferedPoolByIdentity(t *testing.T) {
	n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardPeer("b", "127.0.0.3:80", 0))
	s := policy(n, byNames{"a", "b"})
	src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}

	r, cancel := countingRequest()
	defer cancel()
	st := ensureState(r)
	st.plan(candidatesOf(n, byNames{"b", "a"})) // the directive planned b first
	offered := withHosts(must(src.GetUpstreams(r)))
	same := withHosts([]*reverseproxy.Upstream{{Dial: offered[0].Dial}, {Dial: offered[1].Dial}})
	isOffered := func(pool []*reverseproxy.Upstream) bool { return st.offerFor(pool) != nil }
	if !isOffered(offered) || isOffered(same) || isOffered(offered[:1]) || isOffered(append(slices.Clone(offered), same[0])) || isOffered(nil) {
		t.Fatalf("offerFor: offered %v, same addresses %v, shorter %v, longer %v; want only the offered pool",
			isOffered(offered), isOffered(same), isOffered(offered[:1]), isOffered(append(slices.Clone(offered), same[0])))
	}
	if o := st.offerFor(offered); o[0].slot.Name() != "b" || o[1].slot.Name() != "a" {
		t.Errorf("the offer's peers are %s, %s; want b, a (the plan's order)", o[0].slot.Name(), o[1].slot.Name())
	}
	if got := s.Select(same, r, nil); got != same[1] {
		t.Errorf("pool of other upstreams: chose %v, want the chain's first, a (%s)", got, same[1].Dial)
	}

	r2, cancel2 := countingRequest()
	defer cancel2()
	ensureState(r2).plan(candidatesOf(n, byNames{"b", "a"}))
	offered = withHosts(must(src.GetUpstreams(r2)))
	if got := s.Select(offered, r2, nil); got != offered[0] || got.Dial != "127.0.0.3:80" {
		t.Errorf("offered pool: chose %v, want its first, b", got)
	}
	if got := inFlight(n); got["a"] != 1 || got["b"] != 1 {
		t.Errorf("in flight %v, want a 1 (first request), b 1 (second)", got)
	}
	if got := outcomes(n); !sameOutcomes(got, map[string]uint64{"forwarded": 2}) {
		t.Errorf("outcomes %v, want forwarded twice", got)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// The directive's plan is offered once, on the first attempt, in its own
// order and cut to keep; a retry runs the chain again without the peers
// tried.
func TestPlanUsedOnce(t *testing.T) {
	n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardPeer("b", "127.0.0.3:80", 0), heardPeer("c", "127.0.0.4:80", 0))
	s := policy(n, byNames{"a", "b", "c"})
	s.keep = 2
	src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}
	r, cancel := countingRequest()
	defer cancel()
	st := ensureState(r)
	st.plan(candidatesOf(n, byNames{"c", "b", "a"}))
	first := withHosts(must(src.GetUpstreams(r)))
	if got := dials(first); !slices.Equal(got, []string{"127.0.0.4:80", "127.0.0.3:80"}) {
		t.Fatalf("first attempt offered %v, want the plan c, b cut to keep 2", got)
	}
	if st.takePlan() != nil {
		t.Error("the plan is still there after the first attempt")
	}
	if got := s.Select(first, r, nil); got != first[0] {
		t.Fatalf("chose %v, want c", got)
	}
	// c failed: reverse_proxy asks again.
	second := withHosts(must(src.GetUpstreams(r)))
	if got := dials(second); !slices.Equal(got, []string{"127.0.0.2:80", "127.0.0.3:80"}) {
		t.Errorf("retry offered %v, want the chain's a, b without c", got)
	}
	if got := s.Select(second, r, nil); got != second[0] {
		t.Errorf("retry chose %v, want a", got)
	}
	if got := inFlight(n); got["a"] != 1 || got["b"] != 0 || got["c"] != 0 {
		t.Errorf("in flight %v, want a 1 only", got)
	}
	if !failed(n.table.Lookup("c")) {
		t.Error("c, the failed first choice, is still a candidate")
	}
}

// The source's filters (tags, name, exclude_self, max_age) and the
// live-peer rule (not draining), both when it returns every live peer
// (no backhand policy) and when it scopes the policy's chain.
func TestSourceFilters(t *testing.T) {
	n := testNode(
		heardWith("a", "127.0.0.2:80", 0, tags("x")),
		heardWith("web-b", "127.0.0.3:80", 0, tags("x", "y")),
		heardWith("c", "127.0.0.4:80", 0, draining),
		heardWith("d", "127.0.0.5:80", 2*time.Second, tags("x")),
		heardWith("me", "127.0.0.6:80", 0, self),
	)
	for _, tt := range []struct {
		name string
		src  Upstreams
		all  []string // the live peers returned without a policy
		tied []string // with the backhand policy (max_age 3s)
	}{
		{"max_age of the app (3s)", Upstreams{maxAge: 3 * time.Second}, []string{"a", "d", "me", "web-b"}, []string{"a", "d", "me", "web-b"}},
		{"own max_age 1s", Upstreams{MaxAge: caddy.Duration(time.Second), maxAge: time.Second}, []string{"a", "me", "web-b"}, []string{"a", "me", "web-b"}},
		{"app max_age 1s: the policy's age rules the chain", Upstreams{maxAge: time.Second}, []string{"a", "me", "web-b"}, []string{"a", "d", "me", "web-b"}},
		{"tags x y", Upstreams{Tags: []string{"x", "y"}, maxAge: time.Hour}, []string{"web-b"}, []string{"web-b"}},
		{"tags x", Upstreams{Tags: []string{"x"}, maxAge: time.Hour}, []string{"a", "d", "web-b"}, []string{"a", "d", "web-b"}},
		{"name", Upstreams{Name: "^web-", name: regexp.MustCompile("^web-"), maxAge: time.Hour}, []string{"web-b"}, []string{"web-b"}},
		{"exclude_self", Upstreams{ExcludeSelf: true, maxAge: time.Hour}, []string{"a", "d", "web-b"}, []string{"a", "d", "web-b"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			src := tt.src
			src.node, src.table = n, n.table
			r, cancel := countingRequest()
			defer cancel()
			if got := peerNames(n, must(src.GetUpstreams(r))); !slices.Equal(got, tt.all) {
				t.Errorf("without policy: %v, want %v", got, tt.all)
			}
			src.policy = policy(n, sortByName{})
			src.policy.keep = maxKeep
			if got := peerNames(n, must(src.GetUpstreams(r))); !slices.Equal(got, tt.tied) {
				t.Errorf("with policy: %v, want %v", got, tt.tied)
			}
		})
	}
}

// sortByName keeps every candidate, in name order (the list's own).
type sortByName struct{}

func (sortByName) Candidates(*candidacy.Candidates) {}

// peerNames maps upstreams back to the names of the peers advertising them.
func peerNames(n *node, ups []*reverseproxy.Upstream) []string {
	var out []string
	for _, up := range ups {
		for _, s := range n.table.Peers() {
			if s.Peer().Advertise == up.Dial {
				out = append(out, s.Name())
			}
		}
	}
	return out
}

// reverse_proxy with `dynamic backhand` and `lb_policy backhand`, without
// the directive: a first choice that fails is retried on the next
// candidate; the policy records the outcome once; the count in flight at
// the peer that served stays until the request's context ends (no handler
// ends it).
func TestProxyWithPolicyFailsOver(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	b, bAddr := peerSite(t, "b")
	a := u.peer("a", deadAddr(t))
	u.peer("b", bAddr)
	rp := u.proxy(`{"dynamic_upstreams":{"source":"backhand"},"load_balancing":{"selection_policy":{"policy":"backhand"},"retries":2}}`)
	rp.LoadBalancing.SelectionPolicy.(*Selection).chain.Functions = []CandidacyFunction{byNames{"a", "b"}}
	r, w, cancel := caddyRequest("GET", "/")
	defer cancel()
	if err := rp.ServeHTTP(w, r, &site{name: "next"}); err != nil {
		t.Fatal(err)
	}
	if w.Body.String() != "b" || b.count() != 1 {
		t.Fatalf("served by %q", w.Body.String())
	}
	if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"forwarded": 1}) {
		t.Errorf("outcomes %v, want forwarded once", got)
	}
	if got := inFlight(u.n); got["a"] != 0 || got["b"] != 1 {
		t.Errorf("in flight before the request's context ends: %v, want b 1 only", got)
	}
	if !failed(a) || a.Sent() != 1 {
		t.Errorf("a: failed %v, sent %d; want failed after one attempt", failed(a), a.Sent())
	}
}

// Without a candidate from the chain (none left, or off), the fallback
// policy chooses among every live peer, and the request counts once as
// fallback.
func TestProxyWithPolicyFallback(t *testing.T) {
	for _, chain := range [][]CandidacyFunction{{byNames{"nobody"}}, {&candidacy.Off{}}} {
		u := newUnitApp(t, deadAddr(t))
		a, aAddr := peerSite(t, "a")
		u.peer("a", aAddr)
		rp := u.proxy(`{"dynamic_upstreams":{"source":"backhand","exclude_self":true},"load_balancing":{"selection_policy":{"policy":"backhand","fallback":{"policy":"first"}}}}`)
		rp.LoadBalancing.SelectionPolicy.(*Selection).chain.Functions = chain
		r, w, cancel := caddyRequest("GET", "/")
		if err := rp.ServeHTTP(w, r, &site{name: "next"}); err != nil {
			t.Fatal(err)
		}
		cancel()
		if a.count() != 1 {
			t.Errorf("chain %v: the fallback did not reach a", chain)
		}
		if got := outcomes(u.n); !sameOutcomes(got, map[string]uint64{"fallback": 1}) {
			t.Errorf("chain %v: outcomes %v, want fallback once", chain, got)
		}
	}
}

// `lb_policy backhand` over static upstreams: the chain's candidates are
// matched to the pool by address; an upstream no peer advertises is left
// to the fallback.
func TestPolicyOverStaticUpstreams(t *testing.T) {
	u := newUnitApp(t, deadAddr(t))
	a, aAddr := peerSite(t, "a")
	b, bAddr := peerSite(t, "b")
	other, otherAddr := peerSite(t, "other")
	u.peer("a", aAddr)
	u.peer("b", bAddr)
	for _, tt := range []struct {
		pool []string
		want *site
		out  string
	}{
		{[]string{aAddr, bAddr}, b, "forwarded"},
		{[]string{otherAddr}, other, "fallback"},
	} {
		var ups []string
		for _, d := range tt.pool {
			ups = append(ups, `{"dial":"`+d+`"}`)
		}
		rp := u.proxy(`{"upstreams":[` + strings.Join(ups, ",") + `],"load_balancing":{"selection_policy":{"policy":"backhand"}}}`)
		rp.LoadBalancing.SelectionPolicy.(*Selection).chain.Functions = []CandidacyFunction{byNames{"b", "a"}}
		before := outcomes(u.n)[tt.out]
		r, w, cancel := caddyRequest("GET", "/")
		if err := rp.ServeHTTP(w, r, &site{name: "next"}); err != nil {
			t.Fatal(err)
		}
		cancel()
		if w.Body.String() != tt.want.name {
			t.Errorf("pool %v: served by %q, want %s", tt.pool, w.Body.String(), tt.want.name)
		}
		if got := outcomes(u.n)[tt.out]; got != before+1 {
			t.Errorf("pool %v: %s counted %d times, want once", tt.pool, tt.out, got-before)
		}
	}
	if a.count() != 0 {
		t.Error("a served though the chain put b first")
	}
}

// forwardedToPeer without a backhand choice: a request proxied through
// `dynamic backhand` under another policy counts as forwarded when its
// upstream is another peer, as served when it is this node's own address.
func TestTrackCountsProxiedRequests(t *testing.T) {
	me, meAddr := peerSite(t, "me")
	u := newUnitApp(t, meAddr)
	track := &Track{node: u.n}
	serve := func(rp *reverseproxy.Handler) {
		r, w, cancel := caddyRequest("GET", "/")
		defer cancel()
		err := track.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return rp.ServeHTTP(w, r, &site{name: "next"})
		}))
		if err != nil {
			t.Fatal(err)
		}
	}
	rp := u.proxy(`{"dynamic_upstreams":{"source":"backhand"},"load_balancing":{"selection_policy":{"policy":"first"}}}`)
	serve(rp) // only this node is live
	if me.count() != 1 || u.n.stats.done.Load() != 1 || u.n.stats.forwarded.Load() != 0 {
		t.Errorf("to this node's address: served %d, forwarded %d; want 1, 0", u.n.stats.done.Load(), u.n.stats.forwarded.Load())
	}
	a, aAddr := peerSite(t, "a")
	u.peer("a", aAddr) // first in name order
	serve(rp)
	if a.count() != 1 || u.n.stats.done.Load() != 1 || u.n.stats.forwarded.Load() != 1 {
		t.Errorf("to a peer: served %d, forwarded %d; want 1, 1", u.n.stats.done.Load(), u.n.stats.forwarded.Load())
	}
	if u.n.stats.busy.Load() != 0 {
		t.Errorf("busy %d after the requests", u.n.stats.busy.Load())
	}
}

// When no peer has been heard within max_age (announcements lost, or all
// nodes restarted at once), `dynamic backhand` offers the peers still in
// the table rather than none, which would fail every request with 503 (the
// fault harness: 90% announcement loss); while one is live, only the live.
func TestSourceFallsBackToStalePeers(t *testing.T) {
	n := testNode(heardPeer("a", "127.0.0.2:80", 5*time.Second), heardPeer("b", "127.0.0.3:80", 10*time.Second))
	src := &Upstreams{node: n, table: n.table, maxAge: 3 * time.Second}
	ups, err := src.GetUpstreams(httptest.NewRequest("GET", "/", nil))
	if err != nil || len(ups) != 2 {
		t.Fatalf("every peer stale: %d upstreams (%v), want both still in the table", len(ups), err)
	}
	n.table.Store(heardPeer("c", "127.0.0.4:80", 0))
	ups, _ = src.GetUpstreams(httptest.NewRequest("GET", "/", nil))
	if len(ups) != 1 || ups[0].Dial != "127.0.0.4:80" {
		t.Errorf("with c live: %v, want c only", ups)
	}
}
