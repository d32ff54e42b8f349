package candidacy

import (
	"math"
	"sync/atomic"
	"time"
)

// peerLocal is what this node itself knows about one peer, fresher than
// the peer's announcements: the requests it has in flight there, and how
// fast that peer has answered it (for this node's own slot: how fast it
// served its own requests). It lives in the peer's slot, so it
// survives config reloads like the table does.
type peerLocal struct {
	inflight   atomic.Int64  // requests this node has in flight to the peer now
	atAnnounce atomic.Int64  // inflight when the peer's last announcement arrived
	sent       atomic.Uint64 // requests this node has sent to the peer
	loadHWM    atomic.Uint32 // highest Load1000 announced (byCost's load_hwm)
	latency    peakEWMA
	times      responseTimes
	failedAt   atomic.Int64  // when an attempt from this node to the peer last failed, Unix ns
	answeredAt atomic.Int64  // when a request from this node to the peer last ended answered, Unix ns
	failedInc  atomic.Uint64 // the peer's incarnation then
	repeatAt   atomic.Int64  // when it last failed again after being taken back, Unix ns
	repeatGap  atomic.Int64  // how long after the failure before it, ns
	staleUntil atomic.Int64  // when the announcement came that ended the peer's last stale spell, Unix ns

	// What the peer's last announcement showed beyond this node's own
	// requests (others' share: other entry points, direct traffic), and its
	// long-run mean over announcements, for the "decay" estimate. Written
	// only by the announcement's writer (under the table's lock).
	othersAt   atomic.Uint64          // float64 bits
	othersMean atomic.Uint64          // float64 bits
	othersVar  atomic.Uint64          // float64 bits: their variance about othersMean
	othersNow  atomic.Uint64          // float64 bits: their mean over the last few announcements
	othersN    atomic.Uint64          // announcements in othersMean
	ownNow     atomic.Uint64          // float64 bits: this node's own share, averaged as othersNow
	gap        atomic.Int64           // the silence before the peer's last announcement, ns
	logged     atomic.Pointer[string] // the state last logged, so each change is logged once
}

// announced records that a new announcement has arrived: from now on, what
// the peer announced already includes the requests in flight at this moment.
func (l *peerLocal) announced(f *Figures) {
	own := l.inflight.Load()
	l.atAnnounce.Store(own)
	// Not clipped at 0 here: a peer that serves only this node's requests
	// announces a little more or less than this node counts at that
	// moment, and a mean of clipped values would credit it with others'
	// requests that do not exist (which made every peer look busier than
	// this node itself). The estimate is clipped instead.
	others := float64(f.Busy) - float64(own)
	l.othersAt.Store(math.Float64bits(others))
	l.updateOthersMean(others)
	storeFloat(&l.ownNow, ewma(loadFloat(&l.ownNow), float64(own), max(othersRecentWeight, 1/float64(l.othersN.Load()))))
	for {
		hwm := l.loadHWM.Load()
		if f.Load1000 <= hwm || l.loadHWM.CompareAndSwap(hwm, f.Load1000) {
			return
		}
	}
}

// updateOthersMean takes the others' share one announcement showed into
// their long-run mean. When the mean of the last few announcements has
// moved from it beyond their noise (a shift: another entry point stopped
// or started sending, the traffic moved), the long-run mean starts again
// from the recent one: its two-hundred-announcement memory would
// otherwise credit the peer with requests that stopped minutes ago (the
// benchmark, switching from dedicated balancers to the directive: every
// peer still counted the balancers' six requests, and the deciding node
// served a third of four equal nodes' requests). The variance restarts
// too, so the next shift is told from the noise seen since.
func (l *peerLocal) updateOthersMean(others float64) {
	mean, variance := loadFloat(&l.othersMean), loadFloat(&l.othersVar)
	recent := loadFloat(&l.othersNow)
	n := l.othersN.Add(1)
	w := max(othersMeanWeight, 1/float64(n))
	mean += w * (others - mean)
	variance += w * ((others-mean)*(others-mean) - variance)
	recent += max(othersRecentWeight, 1/float64(n)) * (others - recent)
	if n > othersShiftAfter && math.Abs(recent-mean) > max(othersShiftMin, othersShiftZ*othersRecentSE*math.Sqrt(variance)) {
		mean, recent, variance = others, others, 0
		l.othersN.Store(1)
	}
	storeFloat(&l.othersMean, mean)
	storeFloat(&l.othersVar, variance)
	storeFloat(&l.othersNow, recent)
}

// How a shift in the others' share is told from noise: the recent mean
// (weight othersRecentWeight, the last eight or so announcements) differs
// from the long-run one by more than othersShiftZ of its standard errors,
// and by at least othersShiftMin requests, once othersShiftAfter
// announcements have come. After a shift both means restart from the
// latest announcement, as plain averages of those since, as at the start.
const (
	othersRecentWeight = 1.0 / 8
	othersShiftZ       = 3
	othersShiftMin     = 1
	othersShiftAfter   = 8
)

// othersRecentSE is the standard error of the recent mean in units of one
// announcement's standard deviation.
var othersRecentSE = math.Sqrt(othersRecentWeight / (2 - othersRecentWeight))

// othersMeanWeight is the EWMA weight of one announcement in othersMean
// once it has settled: about two hundred announcements, enough to average
// out queue noise while following load that persists. The simulator
// (BENCHMARKS.md) shows shorter memories doing worse than local-only choice
// when announcements are many service times old. Until a peer has sent that
// many, each announcement weighs 1/n, so the mean starts as a plain
// average instead of creeping up from zero.
const othersMeanWeight = 0.005

// decayed estimates the peer's requests in flight age after its last
// announcement: this node's own, exactly, plus the others' share decaying
// from what the announcement showed towards its mean (see othersTau; the
// peer announces servedMicros per request).
func (l *peerLocal) decayed(age time.Duration, servedMicros float64) float64 {
	at := math.Float64frombits(l.othersAt.Load())
	mean := math.Float64frombits(l.othersMean.Load())
	w := Decay(othersTau(servedMicros, mean)).remaining(age)
	return float64(max(l.inflight.Load(), 0)) + max(mean+(at-mean)*w, 0)
}

// othersTau is how long what an announcement showed of the others'
// requests at a peer stays worth more than their mean: about until the
// others send it their next request, the peer's time per request over one
// more than the others' mean there (Little's law), since the other
// deciders read the same announcement and act on it. A longer memory (the
// time per request alone, which includes the peer's queueing) herded:
// with ten deciders and announcements 20 service times old at 90% load
// the simulator's mean time in system was 5.97 service times against 3.60,
// worse than ignoring announcements (4.27). A peer that announces no time
// per request: defaultTau.
func othersTau(servedMicros, othersMean float64) time.Duration {
	if servedMicros <= 0 {
		return defaultTau
	}
	return time.Duration(servedMicros / (1 + max(othersMean, 0)) * float64(time.Microsecond))
}

// defaultTau is the decay time constant for a peer that announces no
// response time yet.
const defaultTau = 100 * time.Millisecond

// sentSinceAnnounce is how many more requests this node has in flight to
// the peer than when its last announcement arrived: the part of the peer's
// load that the announcement cannot know about yet. Never negative.
func (l *peerLocal) sentSinceAnnounce() int64 {
	return max(l.inflight.Load()-l.atAnnounce.Load(), 0)
}

// failed records that an attempt from this node to the peer p (its
// record now) failed (Caddy retried it elsewhere). A failure after the
// peer had been taken back following an earlier one (an announcement came
// in between) is a repeat: see shunned.
func (l *peerLocal) failed(now time.Time, p *Peer) {
	prev := l.failedAt.Load()
	if prev != 0 && prev < p.ReceivedAt.UnixNano() && l.failedInc.Load() == p.Incarnation {
		l.repeatGap.Store(now.UnixNano() - prev)
		l.repeatAt.Store(now.UnixNano())
	}
	l.failedInc.Store(p.Incarnation)
	l.failedAt.Store(now.UnixNano())
}

// failedSince reports whether an attempt to the peer failed after t.
func (l *peerLocal) failedSince(t time.Time) bool { return l.failedAt.Load() > t.UnixNano() }

// shunned reports whether p is no candidate because attempts to it
// failed. After a failure it waits for the peer's next announcement, so a
// node that just died does not take a place in every window until it ages
// out, while one that only dropped a connection (a reload closes idle
// keep-alive connections) is back within an interval. When it fails again
// once taken back, within hold (the policy's max_age) of the previous
// failure, in the same incarnation, its announcements say nothing about
// its HTTP (a partition): it waits for hold after that repeat instead. A
// restarted node (a new incarnation) is a candidate at once.
func (l *peerLocal) shunned(p *Peer, now time.Time, hold time.Duration) bool {
	at := l.failedAt.Load()
	switch {
	case at == 0:
		return false
	case at > p.ReceivedAt.UnixNano():
		return true
	case l.failedInc.Load() != p.Incarnation:
		return false
	}
	repeat := l.repeatAt.Load()
	return repeat != 0 && l.repeatGap.Load() < int64(hold) && now.UnixNano()-repeat < int64(hold)
}

func (l *peerLocal) begin() {
	l.inflight.Add(1)
	l.sent.Add(1)
}

// end records that a request to the peer ended after d; answered says
// whether the peer answered it, sample whether its time counts towards
// what this node learns of the peer.
func (l *peerLocal) end(d time.Duration, now time.Time, answered, sample bool) {
	l.inflight.Add(-1)
	if answered {
		l.answeredAt.Store(now.UnixNano())
	}
	if sample {
		l.latency.observe(d, now)
		l.times.observe(d, now)
	}
}

// peakEWMA is Finagle's and Linkerd's latency estimate: an exponentially
// weighted moving average that jumps up to any slower observation at once
// and decays towards faster ones with time constant peakEWMATau, so a peer
// that turns slow is avoided quickly and recovers gradually.
type peakEWMA struct {
	state atomic.Pointer[ewmaState]
}

type ewmaState struct {
	micros float64
	at     time.Time
}

const peakEWMATau = Decay(10 * time.Second)

func (e *peakEWMA) observe(d time.Duration, now time.Time) {
	sample := float64(d.Microseconds())
	for {
		old := e.state.Load()
		next := &ewmaState{micros: sample, at: now}
		if old != nil && sample < old.micros {
			next.micros = ewma(sample, old.micros, peakEWMATau.remaining(now.Sub(old.at)))
		}
		if e.state.CompareAndSwap(old, next) {
			return
		}
	}
}

// micros returns the current estimate in microseconds and whether there is
// one at all.
func (e *peakEWMA) micros() (float64, bool) {
	s := e.state.Load()
	if s == nil {
		return 0, false
	}
	return s.micros, true
}

// Begin records that this node sent the slot's peer a request, in flight
// there until End.
func (s *Slot) Begin() { s.local.begin() }

// End records that a request to the peer ended after d, at now; sample
// says whether its time counts towards what this node learns of the peer
// (not for a failure, nor for this node itself reached through its own
// site). Nor does it count when the peer was stale at some time during
// the request (silent beyond max_age: stopped, cut off): such a time
// measures the outage, not the peer's speed, and a node that hung for
// ten seconds would otherwise be ranked last long after it recovered,
// when no request goes there to correct it. A sample, stale or not, is
// also this node's evidence that the peer answers (see silentQuorum).
func (s *Slot) End(d time.Duration, now time.Time, sample bool) {
	s.local.end(d, now, sample, sample && !s.staleDuring(now.Add(-d), now))
}

// staleDuring reports whether the peer was stale at some time between
// from and now: it is now, or the announcement that ended its last stale
// spell came after from. For this node's own slot: whether its own
// announcements stopped for longer than max_age meanwhile.
func (s *Slot) staleDuring(from, now time.Time) bool {
	p := s.cur.Load()
	maxAge := s.table.limits.Load().MaxAge
	if maxAge <= 0 {
		return false // a table without an age limit (tests, boards)
	}
	// For this node's own slot, stale means its announcer stopped: the
	// process stalled (Table.Stalled).
	silent := p.Age(now) > maxAge
	if !p.Self {
		silent = !p.Fresh(now, maxAge)
	}
	return silent || s.local.staleUntil.Load() > from.UnixNano()
}

// Failed records that an attempt from this node to the peer failed at now:
// the peer is no candidate until its next announcement, or, if it fails
// again once taken back, for max_age; a restart ends either (see
// shunned).
func (s *Slot) Failed(now time.Time) { s.local.failed(now, s.cur.Load()) }

// FailedSince reports whether an attempt to the peer failed after t.
func (s *Slot) FailedSince(t time.Time) bool { return s.local.failedSince(t) }

// Sent is how many requests this node has sent the peer.
func (s *Slot) Sent() uint64 { return s.local.sent.Load() }

// InFlight is how many requests this node has in flight to the peer now.
func (s *Slot) InFlight() int64 { return s.local.inflight.Load() }

// ObservedMicros is this node's peak-EWMA of the peer's response times to
// its requests (byLatency's estimate), in µs, and whether it has one.
func (s *Slot) ObservedMicros() (float64, bool) { return s.local.latency.micros() }

// LearnedMicros is the typical response time byWait ranks the peer by,
// learned from the requests this node sent it (for this node itself: from
// those it served), in µs, and whether there is enough evidence for one.
func (s *Slot) LearnedMicros() (float64, bool) { return s.local.times.learned() }

// Responses is how many response times of the peer this node has learnt
// from: the evidence behind LearnedMicros.
func (s *Slot) Responses() uint64 { return s.local.times.n.Load() }

// MarkState records state as the peer's state last logged, so that each
// change is logged once, even by several announcers sharing the table. It
// returns the state recorded before, and changed: whether there was one
// and it differs, and this call replaced it.
func (s *Slot) MarkState(state string) (prev string, changed bool) {
	old := s.local.logged.Load()
	if old != nil && *old == state || !s.local.logged.CompareAndSwap(old, &state) || old == nil {
		return "", false
	}
	return *old, true
}

// Served records that this node served a request itself, which took d,
// into what it knows of its own speed (its slot's response times, as it
// learns each peer's), unless the request spanned a stall of this process
// (see Stalled).
func (t *Table) Served(d time.Duration, now time.Time) {
	if s := t.self.Load(); s != nil && !s.staleDuring(now.Add(-d), now) {
		s.local.times.observe(d, now)
	}
}

// Stalled reports whether this process stalled between from and now: its
// own announcements stopped for longer than max_age (a SIGSTOP, a
// debugger, a starved runtime). A request it served across a stall timed
// the stall, not its speed: the fault harness's hung node announced a
// latency of 2.3 s for its requests held through a 10 s SIGSTOP, was
// ranked by it and sent nothing, and without requests the figure never
// moved.
func (t *Table) Stalled(from, now time.Time) bool {
	s := t.self.Load()
	return s != nil && s.staleDuring(from, now)
}
