package candidacy

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// Too few responses are no evidence: the fallback counts.
func TestResponseTimesNeedEvidence(t *testing.T) {
	var r responseTimes
	for range minResponses - 1 {
		r.observe(time.Second, now)
	}
	if typ, cur := r.estimate(now, 5000); typ != 5000 || cur != 5000 {
		t.Errorf("after %d responses: %v/%v, want the fallback 5000", minResponses-1, typ, cur)
	}
	r.observe(time.Second, now)
	if typ, _ := r.estimate(now, 5000); typ != 1e6 {
		t.Errorf("after %d responses of 1 s: typical %vµs, want 1e6", minResponses, typ)
	}
	var z responseTimes
	for range 100 {
		z.observe(0, now) // zero-length responses must not divide by zero
	}
	if typ, cur := z.estimate(now, 5000); typ != floorMicros || cur != floorMicros {
		t.Errorf("zero-length responses: %v/%v, want the floor %v", typ, cur, floorMicros)
	}
}

// A healthy peer whose response times merely vary (lognormal, sigma 1: a
// heavy tail) almost never has its current time differ from its typical
// one, while the same peer turning 3x slower does within 16 responses;
// when it recovers, its typical time follows within typicalTau.
func TestResponseTimesIgnoreNoise(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	sample := func() time.Duration { return time.Duration(40e3*math.Exp(rng.NormFloat64()-0.5)) * time.Microsecond }
	var r responseTimes
	at := now.Add(-time.Hour)
	changed, decisions := 0, 0
	for i := range 5000 {
		at = at.Add(10 * time.Millisecond)
		r.observe(sample(), at)
		if i >= 500 {
			decisions++
			if typ, cur := r.estimate(at, 40e3); cur != typ {
				changed++
			}
		}
	}
	if f := float64(changed) / float64(decisions); f > 0.02 {
		t.Errorf("a healthy peer's current time differed from its typical one on %.1f%% of decisions, want under 2%%", 100*f)
	}
	for range 16 {
		at = at.Add(10 * time.Millisecond)
		r.observe(3*sample(), at)
	}
	if typ, cur := r.estimate(at, 40e3); cur < 1.5*typ {
		t.Errorf("after 16 responses 3x slower: current %.0f, typical %.0f, want current >= 1.5x", cur, typ)
	}
	for range 300 { // slow for 3 s: the typical time follows
		at = at.Add(10 * time.Millisecond)
		r.observe(3*sample(), at)
	}
	for range 500 { // recovered for 5 s (typicalTau)
		at = at.Add(10 * time.Millisecond)
		r.observe(sample(), at)
	}
	if _, cur := r.estimate(at, 40e3); cur > 1.5*40e3 {
		t.Errorf("5 s after recovering: current %.0f, want below 1.5 x 40000", cur)
	}
}

// A peer that recovers from a long slowdown is followed within a few
// dozen responses: waiting for the typical time to fade (typicalTau) kept
// requests off it for seconds.
func TestResponseTimesFollowRecovery(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	sample := func() time.Duration { return time.Duration(40e3*math.Exp(rng.NormFloat64()-0.5)) * time.Microsecond }
	var r responseTimes
	at := now.Add(-time.Hour)
	step := func(n int, slow float64) {
		for range n {
			at = at.Add(10 * time.Millisecond)
			r.observe(time.Duration(slow*float64(sample())), at)
		}
	}
	step(1000, 1)
	step(1000, 3) // 3x slower for 10 s
	if typ, cur := r.estimate(at, 40e3); cur < 2.5*40e3 || typ < 2*40e3 {
		t.Fatalf("after 10 s 3x slower: typical %.0f, current %.0f, want both about 3 x 40000", typ, cur)
	}
	step(30, 1) // recovered: 0.3 s
	followed := 0
	for range 70 { // and the next 0.7 s
		step(1, 1)
		if _, cur := r.estimate(at, 40e3); cur < 1.5*40e3 {
			followed++
		}
	}
	if followed < 65 {
		t.Errorf("0.3-1 s after recovering: current below 1.5 x 40000 on %d of 70 decisions, want at least 65", followed)
	}
}

// A peer quiet for a while counts as what it announces: a peer shunned
// once for being slow gets its chance again.
func TestResponseTimesForget(t *testing.T) {
	var r responseTimes
	for i := range 100 {
		r.observe(200*time.Millisecond, now.Add(time.Duration(i)*10*time.Millisecond))
	}
	last := now.Add(time.Second)
	if typ, _ := r.estimate(last, 40e3); typ < 190e3 {
		t.Errorf("right after: typical %.0f, want about 200000", typ)
	}
	if typ, _ := r.estimate(last.Add(time.Duration(forgetTau)), 40e3); typ > 110e3 || typ < 80e3 {
		t.Errorf("forgetTau after: typical %.0f, want about 40000 + 160000/e", typ)
	}
	if typ, cur := r.estimate(last.Add(time.Minute), 40e3); typ > 41e3 || cur > 41e3 {
		t.Errorf("a minute after: %.0f/%.0f, want the fallback 40000", typ, cur)
	}
}

// Identical peers receive equal shares once this node has seen them
// answer, whatever speed they announce: a node that rated itself 5x
// slower than its twin at start-up (a CPU benchmark on a busy machine)
// must not be starved for it. Requests stay in flight for 40 ms (both
// peers alike, with noise) and arrive every 5 ms.
func TestIdenticalPeersEqualSharesWhateverTheirRating(t *testing.T) {
	n := newTestNode(tp("a", 0, spd(200)), tp("b", 0, spd(1000)))
	s := policy(n, DefaultChain()...)
	s.Predict = PredictDecay
	counts := simulate(n, s, simSpec{service: map[string]time.Duration{"a": 40 * time.Millisecond, "b": 40 * time.Millisecond},
		gap: 5 * time.Millisecond, requests: 4000, seed: 3})
	share := float64(counts["a"]) / float64(counts["a"]+counts["b"])
	t.Logf("a (rated 200) %d, b (rated 1000) %d", counts["a"], counts["b"])
	if math.Abs(share/0.5-1) > 0.10 {
		t.Errorf("a's share %.3f, want 0.5 +-10%%", share)
	}
}

// Peers of speeds 1, 1, 2 and 4 that nobody configured: the learned
// times converge to the true ratio within a few seconds of traffic, and
// the shares follow the speeds.
func TestLearnedSpeedConverges(t *testing.T) {
	n := newTestNode(tp("s1", 0), tp("s2", 0), tp("x2", 0), tp("x4", 0))
	s := policy(n, DefaultChain()...)
	s.Predict = PredictDecay
	service := map[string]time.Duration{"s1": 40 * time.Millisecond, "s2": 40 * time.Millisecond, "x2": 20 * time.Millisecond, "x4": 10 * time.Millisecond}
	// 8 workers each: capacity 320 req/s; arrivals at 70%, 224 req/s.
	counts := simulate(n, s, simSpec{service: service, workers: 8, gap: time.Second / 224, requests: 2000, seed: 5})
	at := now.Add(2000 * time.Second / 224)
	learned := map[string]float64{}
	for name := range service {
		learned[name], _ = n.table.Lookup(name).local.times.estimate(at, 0)
	}
	t.Logf("after ~9 s: learned µs %v, shares %v", learned, counts)
	for name, want := range map[string]float64{"s2": 1, "x2": 2, "x4": 4} {
		got := learned["s1"] / learned[name]
		if got < want*0.75 || got > want*1.25 {
			t.Errorf("learned speed of %s relative to s1: %.2f, want %v +-25%%", name, got, want)
		}
	}
	total := float64(counts["s1"] + counts["s2"] + counts["x2"] + counts["x4"])
	if f := float64(counts["x4"]) / total; f < 0.35 {
		t.Errorf("x4 (half the cluster's power) took %.2f of the requests, want >= 0.35", f)
	}
	if f := float64(counts["s1"]+counts["s2"]) / total; f > 0.35 {
		t.Errorf("the two slow peers took %.2f of the requests, want <= 0.35 (power share 0.25)", f)
	}
}

// simSpec is a deterministic simulation of one decider in front of peers
// with fixed service times (exponentially distributed around them) and,
// with workers, FIFO queues: requests arrive every gap, the chain picks,
// and the peer's response time (queueing included) is what this node
// observes.
type simSpec struct {
	service  map[string]time.Duration
	workers  int // 0: unlimited
	gap      time.Duration
	requests int
	seed     uint64
}

// simulate runs spec over n with s and returns the requests each peer got.
func simulate(n *testNode, s *testPolicy, spec simSpec) map[string]int {
	rng := rand.New(rand.NewPCG(spec.seed, 17))
	type done struct {
		slot *Slot
		at   time.Time
		took time.Duration
	}
	var pending []done
	free := map[string][]time.Time{} // when each worker of a peer is next free
	counts := map[string]int{}
	at := now
	for i := range spec.requests {
		at = at.Add(spec.gap)
		// Responses that ended by now are observed first, in order.
		keep := pending[:0]
		for _, d := range pending {
			if !d.at.After(at) {
				d.slot.local.end(d.took, d.at, true, true)
			} else {
				keep = append(keep, d)
			}
		}
		pending = keep
		// Announcements: every peer is heard from "now" in the chain's eyes.
		for _, sl := range n.table.peers() {
			p := *sl.cur.Load()
			p.ReceivedAt = at
			sl.cur.Store(&p)
		}
		if i%200 == 0 {
			n.table.UpdateReference(at)
		}
		c := s.evaluate(Run{Now: at, Rand: rng.IntN})
		x := c.First()
		slot, name := x.slot, x.Peer.Name
		c.Release()
		counts[name]++
		slot.local.begin()
		took := time.Duration(rng.ExpFloat64() * float64(spec.service[name]))
		start := at
		if spec.workers > 0 {
			w := free[name]
			if w == nil {
				w = make([]time.Time, spec.workers)
				free[name] = w
			}
			k := 0
			for j := range w {
				if w[j].Before(w[k]) {
					k = j
				}
			}
			if w[k].After(start) {
				start = w[k]
			}
			w[k] = start.Add(took)
		}
		end := start.Add(took)
		pending = append(pending, done{slot: slot, at: end, took: end.Sub(at)})
	}
	return counts
}

// Typical times within sameBand of the cluster's reference count as the
// reference, so noise between equal nodes does not steer load; times
// further apart keep their ratio.
func TestAlikeTimes(t *testing.T) {
	for _, tt := range []struct {
		typical, current, ref, wantTyp, wantCur float64
	}{
		{46e3, 46e3, 40e3, 40e3, 40e3}, // 15% apart: alike
		{46e3, 92e3, 40e3, 40e3, 80e3}, // alike, now twice as slow: the ratio stays
		{80e3, 80e3, 40e3, 80e3, 80e3}, // twice the reference: as it is
		{20e3, 20e3, 40e3, 20e3, 20e3}, // half: as it is
		{46e3, 46e3, 0, 46e3, 46e3},    // no reference yet
		{1000, 1000, 1100, 1100, 1100}, // at the floor
	} {
		typ, cur := alike(tt.typical, tt.current, tt.ref)
		if math.Abs(typ-tt.wantTyp) > 1e-6 || math.Abs(cur-tt.wantCur) > 1e-6 {
			t.Errorf("alike(%v, %v, ref %v) = %v, %v; want %v, %v", tt.typical, tt.current, tt.ref, typ, cur, tt.wantTyp, tt.wantCur)
		}
	}
}
