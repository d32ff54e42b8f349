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
)

var benchSizes = []int{4, 64, 1024}

// benchNode is a table of n live peers (self among them) with varied load.
func benchNode(n int) *node {
	var ps []*Peer
	t := time.Now()
	for i := range n {
		name := fmt.Sprintf("peer-%04d", i)
		p := &Peer{Name: name, Advertise: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1), ReceivedAt: t, FirstSeen: t,
			Figures: Figures{Load1000: uint32(i*37%4000 + 100), CPUMilli: 4000, Capacity: 100, Busy: uint32(i * 13 % 90), Speed: 1000}}
		if i == 0 {
			p.Name, p.Self = "me", true
		}
		ps = append(ps, p)
	}
	return testNode(ps...)
}

// benchChain is the chain the issue names for the speed goal.
func benchChain(n *node) *Selection {
	s := policy(n, &ByAge{}, &ByRandom{}, &ByWindow{N: 2}, &ByLoad{}, &AddPrediction{})
	s.fallback = reverseproxy.RandomSelection{}
	return s
}

// benchPick runs s's chain over n's table and picks the winner, once per
// benchmark iteration: the per-request work of the backhand policy.
func benchPick(b *testing.B, n *node, s *Selection) {
	b.ReportAllocs()
	for b.Loop() {
		c := s.evaluate(n, chainRun{now: time.Now()})
		if c.first() == nil {
			b.Fatal("no winner")
		}
		c.release()
	}
}

// BenchmarkSelect runs the default chain and its byPower variant over
// peers of mixed speeds (1-4) whose response times this node has seen, and
// picks the winner: both sample only their window, whatever the cluster
// size, and rank by the learned times.
func BenchmarkSelect(b *testing.B) {
	for _, chain := range []struct {
		name    string
		sampler CandidacyFunction
	}{{"default", &ByRandom{}}, {"byPower", &ByPower{}}} {
		for _, size := range benchSizes {
			b.Run(fmt.Sprintf("%s/%d", chain.name, size), func(b *testing.B) {
				n := benchNode(size)
				at := time.Now()
				for i, sl := range n.table.peers() {
					sl.cur.Load().Figures.Speed = uint32(1000 * (1 + i%4))
					for k := range minResponses * 2 {
						sl.local.times.observe(time.Duration(40/(1+i%4)+k%3)*time.Millisecond, at)
					}
				}
				n.table.mu.Lock()
				n.table.publishLocked() // the bound follows the speeds set above
				n.table.mu.Unlock()
				n.table.updateReference(at)
				s := policy(n, &ByAge{}, chain.sampler, &ByWindow{N: 3}, &ByWait{})
				s.predict = predictDecay
				s.fallback = reverseproxy.RandomSelection{}
				benchPick(b, n, s)
			})
		}
	}
}

// BenchmarkChain runs `byAge byRandom byWindow 2 byLoad addPrediction` and
// picks the winner: the per-request work of the backhand policy.
func BenchmarkChain(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			n := benchNode(size)
			s := benchChain(n)
			benchPick(b, n, s)
		})
	}
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
