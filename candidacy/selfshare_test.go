package candidacy

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// A node that decides for four identical nodes (itself and three peers)
// gives itself no more than its share, although it counts the requests it
// serves only while serving them and those it forwards over the whole
// round trip, hop included (here 8 ms each way on 40 ms of service: a
// loaded machine). The peers announce once a second what they serve and
// how long it takes them, as real nodes do.
func TestSelfShareDespiteTheHop(t *testing.T) {
	for _, hop := range []time.Duration{0, 8 * time.Millisecond} {
		counts := simulateWithSelf(t, hop, 6000, 7)
		total := 0
		for _, c := range counts {
			total += c
		}
		t.Logf("hop %v each way: %v", hop, counts)
		for name, c := range counts {
			if share := float64(c) / float64(total); math.Abs(share/0.25-1) > 0.10 {
				t.Errorf("hop %v: %s's share %.3f, want 0.25 +-10%%", hop, name, share)
			}
		}
	}
}

// simulateWithSelf runs the default chain (decay estimate) on node "me"
// in front of itself and peers p1-p3, each 8 workers with exponential
// service of 40 ms mean, Poisson arrivals at 70% of the four nodes'
// capacity; a forwarded request reaches its peer hop after the choice
// and its response comes back hop after the service ends.
func simulateWithSelf(t *testing.T, hop time.Duration, requests int, seed uint64) map[string]int {
	t.Helper()
	const (
		workers  = 8
		service  = 40 * time.Millisecond
		interval = time.Second
	)
	names := []string{"me", "p1", "p2", "p3"}
	n := newTestNode(tp("me", 0, self), tp("p1", 0), tp("p2", 0), tp("p3", 0))
	for _, p := range n.table.peers() {
		pp := *p.cur.Load()
		pp.Figures.Capacity = workers
		p.cur.Store(&pp)
	}
	s := policy(n, DefaultChain()...)
	s.Predict = PredictDecay
	rng := rand.New(rand.NewPCG(seed, 23))

	// Each node: its workers' next free times, the requests in its
	// system (arrived, not yet served), and a 5 s-like average of the
	// times it served them in, which it announces.
	type node struct {
		free    []time.Time
		inSys   [][2]time.Time // when each request in the system arrived, and leaves
		servedµ float64
	}
	nodes := map[string]*node{}
	for _, name := range names {
		nodes[name] = &node{free: make([]time.Time, workers), servedµ: float64(service.Microseconds())}
	}
	type event struct {
		at   time.Time
		name string
		took time.Duration // the round trip this node sees (peers), or the service (self)
	}
	var ends []event // responses this node sees end
	gap := time.Duration(float64(time.Second) / (0.7 * 4 * workers / service.Seconds()))
	at, nextAnnounce := now, now
	counts := map[string]int{}
	for range requests {
		at = at.Add(time.Duration(rng.ExpFloat64() * float64(gap)))
		slices.SortFunc(ends, func(a, b event) int { return a.at.Compare(b.at) })
		for len(ends) > 0 && !ends[0].at.After(at) {
			e := ends[0]
			ends = ends[1:]
			if e.name == "me" {
				n.busy.Add(-1)
				n.table.Served(e.took, e.at)
			} else {
				n.table.Lookup(e.name).End(e.took, e.at, true)
			}
		}
		for ; !nextAnnounce.After(at); nextAnnounce = nextAnnounce.Add(interval) {
			for _, name := range names[1:] {
				nd := nodes[name]
				nd.inSys = slices.DeleteFunc(nd.inSys, func(r [2]time.Time) bool { return !r[1].After(nextAnnounce) })
				busy := 0 // the requests it serves: arrived, not yet served
				for _, r := range nd.inSys {
					if !r[0].After(nextAnnounce) {
						busy++
					}
				}
				p := *n.table.Lookup(name).Peer()
				p.ReceivedAt, p.Figures.Busy = nextAnnounce, uint32(busy)
				p.Figures.LatencyMicros = uint32(nd.servedµ)
				n.table.Store(&p)
			}
			n.table.UpdateReference(nextAnnounce)
		}
		c := s.evaluate(Run{Now: at, Rand: rng.IntN})
		name := c.First().Peer.Name
		c.Release()
		counts[name]++

		arrive := at
		if name != "me" {
			arrive = at.Add(hop)
			n.table.Lookup(name).Begin()
		} else {
			n.busy.Add(1)
		}
		nd := nodes[name]
		k := 0
		for j := range nd.free {
			if nd.free[j].Before(nd.free[k]) {
				k = j
			}
		}
		start := arrive
		if nd.free[k].After(start) {
			start = nd.free[k]
		}
		done := start.Add(time.Duration(rng.ExpFloat64() * float64(service)))
		nd.free[k] = done
		nd.inSys = append(nd.inSys, [2]time.Time{arrive, done})
		nd.servedµ += (float64(done.Sub(arrive).Microseconds()) - nd.servedµ) / 512
		if name == "me" {
			ends = append(ends, event{at: done, name: name, took: done.Sub(arrive)})
		} else {
			ends = append(ends, event{at: done.Add(hop), name: name, took: done.Add(hop).Sub(at)})
		}
	}
	return counts
}

// The round-trip factor is the median over live peers of the round trip
// this node sees over the time the peer announces, between 1 and 2, and 1
// without evidence.
func TestRoundTripFactor(t *testing.T) {
	withLatency := func(ms uint32) func(*Peer) { return func(p *Peer) { p.Figures.LatencyMicros = ms * 1000 } }
	n := newTestNode(tp("me", 0, self), tp("a", 0, withLatency(40)), tp("b", 0, withLatency(40)),
		tp("c", 0, withLatency(10)), tp("old", 10*time.Second, withLatency(1)))
	n.table.UpdateReference(now)
	if got := n.table.RoundTripFactor(); got != 1 {
		t.Errorf("without observations: %v, want 1", got)
	}
	observe := func(name string, d time.Duration) {
		for i := range 20 {
			n.table.Lookup(name).End(d, now.Add(time.Duration(i)*time.Millisecond), true)
		}
	}
	observe("a", 50*time.Millisecond)  // 1.25
	observe("b", 44*time.Millisecond)  // 1.1
	observe("c", 40*time.Millisecond)  // 4, clamped in the result only if it is the median
	observe("old", 9*time.Millisecond) // stale: left out
	n.table.UpdateReference(now)
	if got := n.table.RoundTripFactor(); math.Abs(got-1.25) > 0.01 {
		t.Errorf("factor %v, want the median 1.25", got)
	}
	observe("b", 400*time.Millisecond) // b now far slower than it announces
	n.table.UpdateReference(now.Add(time.Second))
	if got := n.table.RoundTripFactor(); got != 2 {
		t.Errorf("factor %v, want the median clamped to 2", got)
	}
}

// The others' share at a peer follows a shift within a few announcements
// (another entry point stopped sending), not the two hundred of its
// long-run mean, yet a stationary share with noise does not move it.
func TestOthersMeanFollowsAShift(t *testing.T) {
	var l peerLocal
	rng := rand.New(rand.NewPCG(3, 4))
	for range 300 { // others keep about six requests there, with noise
		l.announced(&Figures{Busy: uint32(4 + rng.IntN(5))})
	}
	if m := loadFloat(&l.othersMean); math.Abs(m-6) > 0.5 {
		t.Fatalf("stationary: mean %.2f, want about 6", m)
	}
	for range 10 { // they stop
		l.announced(&Figures{Busy: 0})
	}
	if m := loadFloat(&l.othersMean); m > 1.5 {
		t.Errorf("10 announcements after the others stopped: mean %.2f, want under 1.5", m)
	}
}
