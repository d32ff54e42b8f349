package backhand

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
)

var benchSizes = []int{4, 64, 1024}

// benchNode is a table of n live peers (self among them) with varied load.
func benchNode(n int) *node {
	var ps []*candidacy.Peer
	t := time.Now()
	for i := range n {
		name := fmt.Sprintf("peer-%04d", i)
		p := &candidacy.Peer{Name: name, Advertise: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1), ReceivedAt: t, FirstSeen: t,
			Figures: Figures{Load1000: uint32(i*37%4000 + 100), CPUMilli: 4000, Capacity: 100, Busy: uint32(i * 13 % 90), Speed: 1000}}
		if i == 0 {
			p.Name, p.Self = "me", true
		}
		ps = append(ps, p)
	}
	return testNode(ps...)
}

// benchChain is the chain the issue names for the speed goal. (The
// chain's own benchmarks, BenchmarkSelect and BenchmarkChain, are in
// package candidacy.)
func benchChain(n *node) *Selection {
	s := policy(n, &candidacy.ByAge{}, &candidacy.ByRandom{}, &candidacy.ByWindow{N: 2}, &candidacy.ByLoad{}, &candidacy.AddPrediction{})
	s.fallback = reverseproxy.RandomSelection{}
	return s
}

// BenchmarkProxyAttempt is what one proxied attempt costs with `dynamic
// backhand` and `lb_policy backhand`: GetUpstreams runs the chain and
// offers its best candidates, Select takes the first available and counts
// the request until its context ends (the benchmark's own context.WithCancel
// per request is included; Caddy's server makes one per request anyway). Its
// allocations (the offered upstreams and the request's state) must not
// grow with the number of peers.
func BenchmarkProxyAttempt(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			n := benchNode(size)
			s := benchChain(n)
			s.keep = 4
			src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}
			base := requestWithVars()
			vars := base.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
			var hosts [maxKeep]reverseproxy.Host
			b.ReportAllocs()
			for b.Loop() {
				delete(vars, stateVar) // a new request, which ends below
				ctx, end := context.WithCancel(base.Context())
				r := base.WithContext(ctx)
				ups, _ := src.GetUpstreams(r)
				for i, u := range ups {
					u.Host = &hosts[i] // what reverse_proxy's provisionUpstream does
				}
				if s.Select(ups, r, nil) == nil {
					b.Fatal("no upstream")
				}
				end()
			}
		})
	}
}

// BenchmarkCaddyPolicies runs Caddy's own policies over pools of the same
// sizes, for comparison (they see the whole pool on every request).
func BenchmarkCaddyPolicies(b *testing.B) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	rc := &reverseproxy.RandomChoiceSelection{Choose: 2}
	if err := rc.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	policies := []struct {
		name string
		sel  reverseproxy.Selector
	}{{"least_conn", reverseproxy.LeastConnSelection{}}, {"random_choose_2", rc}}
	for _, p := range policies {
		for _, size := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", p.name, size), func(b *testing.B) {
				pool := make(reverseproxy.UpstreamPool, size)
				for i := range pool {
					pool[i] = &reverseproxy.Upstream{Host: new(reverseproxy.Host), Dial: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1)}
				}
				r := httptest.NewRequest("GET", "/", nil)
				b.ReportAllocs()
				for b.Loop() {
					if p.sel.Select(pool, r, nil) == nil {
						b.Fatal("no upstream")
					}
				}
			})
		}
	}
}

// requestWithVars is a request as Caddy's server hands it to handlers: with
// a variables map in its context.
func requestWithVars() *http.Request {
	r := &http.Request{Method: "GET", Header: http.Header{}}
	ctx := context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{})
	return r.WithContext(ctx)
}

// BenchmarkGetUpstreamsAll is `dynamic backhand` under one of Caddy's own
// policies: every live peer as a fresh upstream, in one allocation.
func BenchmarkGetUpstreamsAll(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			n := benchNode(size)
			src := &Upstreams{node: n, table: n.table, maxAge: time.Hour}
			r := requestWithVars()
			b.ReportAllocs()
			for b.Loop() {
				ups, _ := src.GetUpstreams(r)
				if len(ups) != size {
					b.Fatalf("%d upstreams, want %d", len(ups), size)
				}
			}
		})
	}
}
