package candidacy

import (
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// How a node learns how fast each candidate serves, from evidence rather
// than from what it is told. For a peer, the evidence is the response
// times of the requests this node sent it; for this node itself, those of
// the requests it served. Each candidate keeps two averages of them: a
// typical one (time constant typicalTau) and a recent one (the last
// sixteen or so responses). A ranking takes the typical time, or the
// recent one when it exceeds the typical by more than their noise: a peer
// turning slow is shunned within a few responses. When the recent time
// falls below the typical one by recoverMin, the peer has recovered from a
// slowdown, and the typical time starts again from the recent one: it is
// followed within a few dozen responses too (waiting for the typical time
// to fade, seconds, kept requests off it and queued them on the others:
// BENCHMARKS.md, slowdowns). A smaller drop is mostly queueing that has
// just drained, and chasing it, like chasing the differences between
// equal nodes, made the balancing oscillate in BENCHMARKS.md's checks.
// Without fresh evidence the estimate returns, with forgetTau, to the
// candidate's fallback: the response time the peer announces for the
// requests it serves, else the cluster's reference (the median of what
// this node knows), so that a peer shunned once gets its chance again.
//
// Times below latencyFloor count as latencyFloor: differences that small
// are the network's and the scheduler's noise rather than speed, and
// balancing on them would send every request to whichever node looked a
// few microseconds faster.
type responseTimes struct {
	recent    atomic.Uint64 // float64 bits: µs, weight recentWeight per response
	typical   atomic.Uint64 // float64 bits: µs, time constant typicalTau
	typicalSq atomic.Uint64 // float64 bits: µs², as typical, for its spread
	n         atomic.Uint64 // responses seen
	last      atomic.Int64  // when the last response came, Unix ns
}

const (
	recentWeight = 1.0 / 16
	typicalTau   = Decay(5 * time.Second)
	// typicalMaxWeight is the most one response weighs in the typical time
	// (once past the first few), so that one response after a silence
	// cannot redefine it.
	typicalMaxWeight = recentWeight / 4
	// minResponses is how many responses the averages need before they
	// count as evidence.
	minResponses = 8
	forgetTau    = Decay(10 * time.Second)
	// The recent time replaces the typical one only when they differ by
	// changeZ standard errors of the recent average (from the spread of
	// the responses), and at least by the factor changeMin: a fixed band
	// alone mistakes noise for change (BENCHMARKS.md, pace).
	changeZ   = 3
	changeMin = 1.25
	// recoverMin is how many times shorter than the typical time the
	// recent one must be for the typical one to start again from it.
	recoverMin = 2
	// latencyFloor is the shortest response time a ranking tells apart.
	latencyFloor = time.Millisecond
)

// recentSE is the standard error of the recent average in units of one
// response's standard deviation: sqrt(w / (2 - w)) for an EWMA of weight
// w over independent samples.
var recentSE = math.Sqrt(recentWeight / (2 - recentWeight))

var floorMicros = float64(latencyFloor.Microseconds())

func loadFloat(a *atomic.Uint64) float64     { return math.Float64frombits(a.Load()) }
func storeFloat(a *atomic.Uint64, v float64) { a.Store(math.Float64bits(v)) }

// observe takes one response time. Updates are lock-free and may lose a
// sample to a concurrent one, which an average does not miss.
func (r *responseTimes) observe(d time.Duration, now time.Time) {
	sample := float64(max(d, 0).Microseconds())
	n := r.n.Add(1)
	prev := r.last.Swap(now.UnixNano())
	first := 1 / float64(n) // until there are enough, a plain mean
	recent := ewma(loadFloat(&r.recent), sample, max(recentWeight, first))
	storeFloat(&r.recent, recent)
	alpha := max(min(typicalTau.Alpha(time.Duration(now.UnixNano()-prev)), typicalMaxWeight), first)
	typical := ewma(loadFloat(&r.typical), sample, alpha)
	typicalSq := ewma(loadFloat(&r.typicalSq), sample*sample, alpha)
	if n > minResponses && recent*recoverMin < typical {
		// Recovered: start again from the recent time, keeping the
		// relative spread (threshold's noise band).
		typicalSq *= (recent / typical) * (recent / typical)
		typical = recent
	}
	storeFloat(&r.typical, typical)
	storeFloat(&r.typicalSq, typicalSq)
}

// estimate returns the candidate's typical response time and its current
// one (the recent time when it exceeds the typical beyond noise), in
// µs and at least latencyFloor, each blended towards fallback as the last
// response ages; both are fallback without enough evidence.
func (r *responseTimes) estimate(now time.Time, fallback float64) (typical, current float64) {
	if r.n.Load() < minResponses {
		return fallback, fallback
	}
	typical = loadFloat(&r.typical)
	current = typical
	// changeMin first: it settles most calls without threshold's root.
	if recent := loadFloat(&r.recent); typical > 0 && recent > typical*changeMin {
		if t := r.threshold(typical); recent > typical*t {
			current = recent
		}
	}
	typical, current = max(typical, floorMicros), max(current, floorMicros)
	if age := time.Duration(now.UnixNano() - r.last.Load()); age > time.Duration(forgetTau/16) {
		w := forgetTau.remaining(age)
		typical = ewma(fallback, typical, w)
		current = ewma(fallback, current, w)
	}
	return typical, current
}

// learned returns the typical response time in µs (at least
// latencyFloor), without fallback, and whether there is enough evidence
// for one.
func (r *responseTimes) learned() (float64, bool) {
	t, ok := r.typicalMicros()
	if !ok {
		return 0, false
	}
	return max(t, floorMicros), true
}

// typicalMicros returns the typical response time in µs as observed,
// without floor or fallback, and whether there is enough evidence for one.
func (r *responseTimes) typicalMicros() (float64, bool) {
	if r.n.Load() < minResponses {
		return 0, false
	}
	return loadFloat(&r.typical), true
}

// threshold is the ratio between the recent and the typical time beyond
// which they differ by more than noise.
func (r *responseTimes) threshold(typical float64) float64 {
	variance := max(loadFloat(&r.typicalSq)-typical*typical, 0)
	return max(changeMin, 1+changeZ*recentSE*math.Sqrt(variance)/typical)
}

// fallbackTime is what a candidate's response time is taken to be
// without evidence of this node's own, in µs: what the peer announces for
// the requests it serves; else the cluster's reference time, scaled by a
// configured speed (1000 = the reference); never below latencyFloor
// but for a speed above the reference.
func fallbackTime(p *Peer, reference float64) float64 {
	if t := float64(p.Figures.LatencyMicros); t > 0 {
		return max(t, floorMicros)
	}
	t := max(reference, floorMicros)
	if p.Figures.Speed > 0 {
		t *= 1000 / float64(p.Figures.Speed)
	}
	return t
}

// referenceTime is the median of the typical response times that this
// node ranks the live peers in view by (what they announce, else its own
// observations), in µs, or 0 when it knows none. The announcer updates
// it once per interval; peers without evidence are ranked as if they took
// this long.
func referenceTime(view peerView, now time.Time, maxAge time.Duration) float64 {
	times := make([]float64, 0, len(view))
	for _, s := range view {
		p := s.cur.Load()
		if !p.Self && p.Age(now) > maxAge {
			continue
		}
		t := float64(p.Figures.LatencyMicros)
		if p.Self || t == 0 {
			t, _ = s.local.times.learned()
		}
		if t > 0 {
			times = append(times, t)
		}
	}
	if len(times) == 0 {
		return 0
	}
	slices.Sort(times)
	return times[len(times)/2]
}

// roundTripFactor is the median, over the live peers that announce their
// time per request and to which this node has sent enough requests, of the
// round trip this node sees over the time the peer serves (counts busy),
// between 1 and maxRoundTripFactor; 1 without evidence. By Little's law
// this node's requests in flight to a peer outnumber those the peer is
// serving by that ratio (the hop: network, the peer's proxy), so this
// node's own count, which covers only the serving, is raised by it to
// compare with its peers' (see Candidates.busy): unraised, with hops of
// 8 ms on 40 ms of service, the deciding node served itself 31% of four
// identical nodes' requests (TestSelfShareDespiteTheHop). A median over peers, and applied to this node alone: where
// the ratio rises because this node's requests meet queues longer than
// the peer's average (many deciders herding on stale figures), scaling
// each peer by its own ratio fed the herd (the simulator, 10 entry
// points, figures 50 service times old: 4.0 -> 4.45).
func roundTripFactor(view peerView, now time.Time, maxAge time.Duration) float64 {
	ratios := make([]float64, 0, len(view))
	for _, s := range view {
		p := s.cur.Load()
		if p.Self || p.Age(now) > maxAge || p.Figures.LatencyMicros == 0 {
			continue
		}
		if rt, ok := s.local.times.typicalMicros(); ok {
			ratios = append(ratios, rt/float64(p.Figures.LatencyMicros))
		}
	}
	if len(ratios) == 0 {
		return 1
	}
	slices.Sort(ratios)
	return min(max(ratios[len(ratios)/2], 1), maxRoundTripFactor)
}

// maxRoundTripFactor bounds the round-trip factor: a node whose peers
// answer it in more than twice the time they take to serve is far away,
// and is better served by its own requests than by forwarding them.
const maxRoundTripFactor = 2

// crowding is how many requests the other deciders send this node's live
// peers per request of this node's own (the others' share of what the
// peers announce against this node's own, both averaged over the last
// eight or so announcements), times how many of a peer's request times
// pass between two of its announcements (the median gap over the
// reference time): roughly (deciders - 1) x staleness. It says how much
// traffic acts on the same stale announcements as this node; see
// BySample. +Inf while this node has sent its peers nothing; 0 when it
// sends (nearly) all they serve.
func crowding(view peerView, now time.Time, maxAge time.Duration, reference float64) float64 {
	var own, others float64
	gaps := make([]time.Duration, 0, len(view))
	for _, s := range view {
		p := s.cur.Load()
		if p.Self || p.Age(now) > maxAge {
			continue
		}
		own += loadFloat(&s.local.ownNow)
		others += loadFloat(&s.local.othersNow)
		if g := s.local.gap.Load(); g > 0 {
			gaps = append(gaps, time.Duration(g))
		}
	}
	if own <= 0 {
		return math.Inf(1)
	}
	others = max(others, 0)
	if others == 0 {
		return 0
	}
	if len(gaps) == 0 || reference <= 0 {
		return math.Inf(1)
	}
	slices.Sort(gaps)
	staleness := float64(gaps[len(gaps)/2].Microseconds()) / reference
	return others / own * staleness
}
