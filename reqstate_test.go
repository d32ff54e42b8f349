package backhand

import (
	"context"
	"net/http/httptest"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-backhand/backhand/candidacy"
)

// Without a handler to end it (no backhand_track, no directive), the
// request's context ends the count: the peer that served keeps it until
// then, exactly once, and learns a response time; the first choice, which
// failed, dropped its count at the retry without a sample. synctest makes
// the context's end observable without waiting on the clock.
func TestContextEndsPolicyCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardPeer("b", "127.0.0.3:80", 0), heardWith("me", "127.0.0.4:80", 0, self))
		s := policy(n, byNames{"a", "b"})
		src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}
		r, cancel := countingRequest()
		first := proxyAttempt(t, src, s, r)
		if first.Dial != "127.0.0.2:80" {
			t.Fatalf("first attempt to %s, want a", first.Dial)
		}
		if got := inFlight(n); got["a"] != 1 {
			t.Fatalf("in flight after the first choice %v, want a 1", got)
		}
		proxyAttempt(t, src, s, r) // a failed: the retry goes to b
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		if got := inFlight(n); got["a"] != 0 || got["b"] != 1 {
			t.Errorf("in flight after the route returned: %v, want b 1 until the context ends", got)
		}
		cancel()
		synctest.Wait()
		if got := inFlight(n); got["a"] != 0 || got["b"] != 0 {
			t.Errorf("in flight after the context ended: %v, want 0", got)
		}
		a, b := n.table.Lookup("a"), n.table.Lookup("b")
		if sampled(a) || !sampled(b) {
			t.Errorf("response times learnt: a %v, b %v; want b's only", sampled(a), sampled(b))
		}
		if lat, _ := b.ObservedMicros(); lat != 50e3 {
			t.Errorf("b's response time %vµs, want the 50ms from its choice to the context's end", lat)
		}
		if got := n.stats.forwarded.Load(); got != 1 {
			t.Errorf("forwarded %d, want 1", got)
		}
		if got := outcomes(n); !sameOutcomes(got, map[string]uint64{"forwarded": 1}) {
			t.Errorf("outcomes %v, want forwarded once", got)
		}

		// This node chosen: its count ends with the context too, but it is
		// neither forwarded nor learnt from (its own requests teach it).
		r, cancel = countingRequest()
		s.chain.Functions = []CandidacyFunction{byNames{"me"}}
		proxyAttempt(t, src, s, r)
		me := n.table.Lookup("me")
		if me.InFlight() != 1 {
			t.Errorf("this node's count %d, want 1", me.InFlight())
		}
		cancel()
		synctest.Wait()
		if me.InFlight() != 0 || sampled(me) || n.stats.forwarded.Load() != 1 {
			t.Errorf("this node: in flight %d, learnt %v, forwarded %d; want 0, false, still 1", me.InFlight(), sampled(me), n.stats.forwarded.Load())
		}
		if got := outcomes(n); !sameOutcomes(got, map[string]uint64{"forwarded": 1, "local": 1}) {
			t.Errorf("outcomes %v, want one local more", got)
		}
	})
}

// When the context ends a request that reverse_proxy got no response for
// (its last attempt timed out or broke off: Caddy sets no upstream
// latency), the peer's count drops without a sample of its speed, and the
// peer is not held out either (the context's end may be the client's);
// with a response, the time is a sample.
func TestContextEndWithoutResponseIsNoSample(t *testing.T) {
	for _, tt := range []struct {
		name     string
		response bool
	}{{"no response", false}, {"response", true}} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardWith("me", "127.0.0.4:80", 0, self))
				s := policy(n, byNames{"a"})
				src := &Upstreams{node: n, table: n.table, maxAge: time.Hour, policy: s}
				r, cancel := countingRequest()
				repl := caddy.NewReplacer()
				r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
				before := time.Now()
				proxyAttempt(t, src, s, r)
				time.Sleep(2 * time.Second)
				if tt.response {
					repl.Set("http.reverse_proxy.upstream.latency", 2*time.Second)
				}
				cancel()
				synctest.Wait()
				a := n.table.Lookup("a")
				if a.InFlight() != 0 {
					t.Errorf("in flight %d after the context ended, want 0", a.InFlight())
				}
				if sampled(a) != tt.response {
					t.Errorf("response time learnt: %v, want %v", sampled(a), tt.response)
				}
				if a.FailedSince(before) {
					t.Errorf("a held out as failed, want it a candidate still")
				}
			})
		})
	}
}

// When a handler ends the request, the context's end adds nothing; after
// the end, a late choice is not counted at all.
func TestHandlerEndsCountOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := testNode(heardPeer("a", "127.0.0.2:80", 0), heardPeer("b", "127.0.0.3:80", 0))
		a, b := n.table.Lookup("a"), n.table.Lookup("b")
		ctx, cancel := context.WithCancel(context.Background())
		var st requestState
		st.handlerEnds()
		st.choose(ctx, a, time.Now(), &n.stats)
		st.finish(time.Now(), false)
		st.finish(time.Now(), false) // a second end does nothing
		cancel()
		synctest.Wait()
		if got := a.InFlight(); got != 0 {
			t.Errorf("a in flight %d, want 0", got)
		}
		st.choose(ctx, b, time.Now(), &n.stats) // after the end
		if got := inFlight(n); got["a"] != 0 || got["b"] != 0 {
			t.Errorf("a choice after the end counted: %v", got)
		}
		if fwd, ok := st.forwarded(); !fwd || !ok {
			t.Errorf("forwarded() = %v, %v; want true, true", fwd, ok)
		}
		st.servedHere()
		if fwd, ok := st.forwarded(); fwd || !ok {
			t.Errorf("after servedHere forwarded() = %v, %v; want false, true (a policy chose, and this node serves it)", fwd, ok)
		}
	})
}

// The state's methods on a nil state (a request without variables), the
// claims, and the bound on the peers remembered as tried.
func TestRequestStateBasics(t *testing.T) {
	var nilState *requestState
	if stateOf(nil) != nil || ensureState(nil) != nil || ensureState(httptest.NewRequest("GET", "/", nil)) != nil {
		t.Error("a state for a request without variables")
	}
	if nilState.claimCounting(roleTrack) != roleTrack || !nilState.claimRecording(rolePolicy) || nilState.countedHere() {
		t.Error("without a state every module must count and record alone")
	}
	if nilState.takePlan() != nil || nilState.wasTried(nil) || nilState.offerFor(nil) != nil {
		t.Error("a nil state has a plan or tried peers")
	}
	nilState.offer(nil, nil)
	nilState.finish(time.Now(), false)
	if fwd, ok := nilState.forwarded(); fwd || ok {
		t.Error("a nil state forwarded")
	}

	r, cancel := countingRequest()
	defer cancel()
	st := ensureState(r)
	if st == nil || ensureState(r) != st || stateOf(r) != st {
		t.Fatal("ensureState does not keep one state per request")
	}
	if st.claimCounting(roleTrack) != roleTrack || st.claimCounting(roleDirective) != roleTrack || !st.countedHere() {
		t.Error("counting: the first claim must hold")
	}
	if !st.claimRecording(roleDirective) || st.claimRecording(rolePolicy) || st.recorder != roleDirective {
		t.Error("recording: the first claim must hold, once")
	}

	var ps []*candidacy.Peer
	for i := range maxTries + 2 {
		ps = append(ps, heardPeer(string(rune('a'+i)), "127.0.0.1:80", 0))
	}
	n := testNode(ps...)
	st.handlerEnds()
	for _, s := range n.table.Peers() {
		st.choose(r.Context(), s, time.Now(), &n.stats)
	}
	if st.nTried != maxTries {
		t.Errorf("%d peers remembered as tried, want the bound %d", st.nTried, maxTries)
	}
	if total := totalInFlight(n); total != 1 {
		t.Errorf("in flight %d over %d choices, want 1 (each retry drops the previous)", total, len(ps))
	}
}
