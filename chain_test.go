package backhand

import (
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
)

// How the request path runs the chain over this node's table: the test
// table and chain, and the chain's view of what this node knows (which
// peers a request tried, byCookie's signed cookie).

// now is the fixed time of the chain tests.
var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// tp builds a test peer heard age ago, with figure setters applied.
func tp(name string, age time.Duration, set ...func(*candidacy.Peer)) *candidacy.Peer {
	p := &candidacy.Peer{
		Name: name, Advertise: "127.0.0.1:80", ReceivedAt: now.Add(-age), FirstSeen: now.Add(-time.Hour),
		Figures: Figures{CPUMilli: 1000, Capacity: 100, Speed: 1000, CPUIdle1000: 500, MemTotal: 1000, MemAvail: 500},
	}
	for _, s := range set {
		s(p)
	}
	return p
}

func busy(n uint32) func(*candidacy.Peer) { return func(p *candidacy.Peer) { p.Figures.Busy = n } }
func adv(a string) func(*candidacy.Peer)  { return func(p *candidacy.Peer) { p.Advertise = a } }
func self(p *candidacy.Peer)              { p.Self = true }
func draining(p *candidacy.Peer)          { p.Figures.Draining = true }
func tags(t ...string) func(*candidacy.Peer) {
	return func(p *candidacy.Peer) { p.Tags = t }
}

// testNode builds a node whose table holds peers; "me" is self.
func testNode(peers ...*candidacy.Peer) *node {
	n := newNode()
	n.table.SetLimits(&candidacy.Limits{MaxPeers: 1 << 16, SelfName: "me", MaxAge: 3 * time.Second, EvictAfter: time.Hour, ReplayWindow: time.Hour})
	for _, p := range peers {
		n.table.Store(p)
	}
	return n
}

// policy is `lb_policy backhand` over n with the chain fns, max_age 3s,
// prediction off and keep 4.
func policy(n *node, fns ...CandidacyFunction) *Selection {
	return &Selection{chain: candidacy.Chain{Functions: fns, MaxAge: 3 * time.Second}, node: n, keep: 4}
}

// chainNames runs the chain and returns the names left, in order; nil
// for "serve locally" (empty or off).
func chainNames(s *Selection, r *http.Request, seed uint64) []string {
	return chainNamesAt(s, r, now, seed)
}

// chainNamesAt is chainNames at another time.
func chainNamesAt(s *Selection, r *http.Request, at time.Time, seed uint64) []string {
	c := s.evaluate(candidacy.Run{Request: r, Now: at, Rand: rand.New(rand.NewPCG(seed, seed)).IntN})
	defer c.Release()
	return c.Names()
}

// lookupPeer is the named peer's record in t, or nil.
func lookupPeer(t *candidacy.Table, name string) *candidacy.Peer {
	if s := t.Lookup(name); s != nil {
		return s.Peer()
	}
	return nil
}

func fig(n ...string) []string { return n }

// A peer that an attempt failed to reach (Caddy retried elsewhere) is no
// candidate until it announces again (a dropped keep-alive connection,
// say, costs it an interval at most); if it fails again once taken back,
// its announcements say nothing of its HTTP (a partition), and it waits
// for max_age after that repeat; a restart (a new incarnation) makes it a
// candidate at once.
func TestFailedPeerIsHeldOut(t *testing.T) {
	n := testNode(tp("a", time.Second), tp("b", time.Second))
	s := policy(n)
	a, b := n.table.Lookup("a"), n.table.Lookup("b")
	fail := func(at time.Time) {
		var st requestState
		st.handlerEnds()
		st.choose(context.Background(), a, at, &n.stats)
		st.choose(context.Background(), b, at, &n.stats) // the attempt at a failed
	}
	announce := func(at time.Time) {
		back := *a.Peer()
		back.ReceivedAt = at
		n.table.Store(&back)
	}
	fail(now)
	if got := chainNames(s, nil, 1); !slices.Equal(got, fig("b")) {
		t.Errorf("after a failed attempt at a: got %v, want [b]", got)
	}
	announce(now.Add(time.Millisecond))
	if got := chainNames(s, nil, 1); !slices.Equal(got, fig("a", "b")) {
		t.Errorf("after a's next announcement: got %v, want [a b]", got)
	}
	fail(now.Add(2 * time.Millisecond)) // taken back, and failing again: a partition
	announce(now.Add(3 * time.Millisecond))
	if got := chainNamesAt(s, nil, now.Add(time.Second), 1); !slices.Equal(got, fig("b")) {
		t.Errorf("after a repeated failure and another announcement: got %v, want [b] (held for max_age)", got)
	}
	announce(now.Add(3 * time.Second))
	if got := chainNamesAt(s, nil, now.Add(3*time.Second+3*time.Millisecond), 1); !slices.Contains(got, "a") {
		t.Errorf("max_age after the repeat: got %v, want a a candidate again", got)
	}
	fail(now.Add(4 * time.Second))
	restarted := *a.Peer()
	restarted.Incarnation++
	restarted.ReceivedAt = now.Add(4*time.Second + time.Millisecond)
	n.table.Store(&restarted)
	if got := chainNamesAt(s, nil, now.Add(4*time.Second+2*time.Millisecond), 1); !slices.Contains(got, "a") {
		t.Errorf("after a restarted: got %v, want a a candidate", got)
	}
}

// A peer this request already tried is no candidate for its next attempt.
func TestTriedPeerIsNoCandidate(t *testing.T) {
	n := testNode(tp("a", 0), tp("b", 0))
	s := policy(n)
	var st requestState
	st.handlerEnds()
	st.choose(context.Background(), n.table.Lookup("a"), now, &n.stats)
	c := s.evaluate(candidacy.Run{Now: now, Tried: st.triedSlots()})
	defer c.Release()
	if got := c.Names(); !slices.Equal(got, fig("b")) {
		t.Errorf("after trying a: got %v, want [b]", got)
	}
}

func TestByCookieSignedAndForged(t *testing.T) {
	n := testNode(tp("a", 0), tp("b.example", 0), tp("c", 0))
	n.keys.Store(deriveKeys([]byte("cluster-secret-of-some-length"), defaultReplayWindow))
	s := policy(n, &candidacy.ByCookie{})
	for _, tt := range []struct {
		cookie string
		want   []string
	}{
		{n.cookieValueFor("b.example"), fig("b.example")},
		{"b.example." + strings.Repeat("0", 32), fig("a", "b.example", "c")}, // forged MAC
		{"b.example", fig("a", "b.example", "c")},                            // no MAC
		{n.cookieValueFor("gone"), fig("a", "b.example", "c")},               // not a candidate
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.AddCookie(&http.Cookie{Name: "backhand", Value: tt.cookie})
		if got := chainNames(s, r, 1); !slices.Equal(got, tt.want) {
			t.Errorf("cookie %q: got %v, want %v", tt.cookie, got, tt.want)
		}
	}
}
