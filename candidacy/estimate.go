package candidacy

import (
	"math"
)

// The figures candidacy functions rank by. Announced figures are up to an
// interval old; with prediction on (the default, or addPrediction), each
// load-like figure of a peer also counts the requests this node has sent it
// since its last announcement and still has in flight, which the
// announcement cannot know about. For this node itself the live counters
// are used instead of its own last announcement.

// busy estimates the requests in flight at x's peer now.
func (c *Candidates) busy(x *Candidate) float64 {
	switch {
	case x.Peer.Self && c.liveBusy != nil:
		// The requests served here, raised to the round trip over which
		// this node counts its requests to every peer (Little's law), or,
		// if more, those that a reverse_proxy here sent to this node's
		// own site and waits for, counted over the round trip already.
		// A node that reaches itself through its own site (a balancer
		// whose upstreams include it) counts those over the round trip
		// already: no factor then.
		own, factor := int64(0), c.table.roundTripFactor()
		if x.slot != nil && x.slot.local.sent.Load() > 0 {
			own, factor = x.slot.local.inflight.Load(), 1
		}
		served := float64(max(c.liveBusy.Load()-c.selfCounted, 0)) * factor
		return max(served, float64(own))
	case c.predict == PredictDecay && x.slot != nil && !x.Peer.Self:
		return x.slot.local.decayed(x.Peer.Age(c.now), float64(x.Peer.Figures.LatencyMicros))
	}
	return float64(x.Peer.Figures.Busy) + c.predicted(x)
}

// predicted is what this node added to x's peer since its announcement, or
// 0 with prediction off.
func (c *Candidates) predicted(x *Candidate) float64 {
	if c.predict == PredictOff || x.Peer.Self || x.slot == nil {
		return 0
	}
	return float64(x.slot.local.sentSinceAnnounce())
}

// load estimates x's load average: the announced one plus, with
// prediction, one runnable task per request sent since.
func (c *Candidates) load(x *Candidate) float64 {
	return float64(x.Peer.Figures.Load1000)/1000 + c.predicted(x)
}

// cpuIdle estimates x's idle CPU share, 0-1: the announced one less, with
// prediction, one CPU's worth per request sent since.
func (c *Candidates) cpuIdle(x *Candidate) float64 {
	idle := float64(x.Peer.Figures.CPUIdle1000)/1000 - c.predicted(x)/cpus(x.Peer)
	return min(max(idle, 0), 1)
}

// cpus is the peer's CPU count, at least a thousandth.
func cpus(p *Peer) float64 { return max(float64(p.Figures.CPUMilli)/1000, 0.001) }

// capacity is the peer's announced capacity, at least 1.
func capacity(p *Peer) float64 { return max(float64(p.Figures.Capacity), 1) }

// speed is the peer's configured speed relative to a reference core
// (1.0); a peer without one counts as the reference.
func speed(p *Peer) float64 {
	if p.Figures.Speed == 0 {
		return 1
	}
	return float64(p.Figures.Speed) / 1000
}

// serviceTime is how long x's candidate takes per request, as byWait
// ranks by, in µs: the response time learned from evidence (see
// responseTimes), the current one when quick, else the typical one. The
// application's weight, when it reports one, stretches the typical time
// by 1/weight; with quick, the larger of that and the current time counts,
// not their product, since both measure the same slowness. +Inf at weight
// 0.
func (c *Candidates) serviceTime(x *Candidate, quick bool) float64 {
	typical, current := c.responseTimes(x)
	if !quick {
		current = typical
	}
	if !x.Peer.Figures.HasAppWeight {
		return current
	}
	w := weight(x.Peer)
	if w <= 0 {
		return math.Inf(1)
	}
	return max(current, typical/w)
}

// responseTimes returns x's typical and current response times in µs.
// A peer that announces how long it takes to serve is ranked by that,
// the same measure as this node's own (the requests it serves), without
// the hop to it, which would otherwise make every peer look slower than
// this node; this node's observations of the peer then say only how much
// slower than typical it answers now. A peer that announces no
// latency (it counts no requests) is ranked by what this node observes.
func (c *Candidates) responseTimes(x *Candidate) (typical, current float64) {
	ref := c.table.referenceMicros()
	fb := fallbackTime(x.Peer, ref)
	if x.slot == nil {
		return fb, fb
	}
	typical, current = x.slot.local.times.estimate(c.now, fb)
	if !x.Peer.Self && x.Peer.Figures.LatencyMicros > 0 {
		typical, current = fb, fb*current/typical
	}
	return alike(typical, current, ref)
}

// alike ranks a candidate whose typical time lies within sameBand of the
// cluster's reference as taking the reference: between nodes, differences
// that small are mostly noise and queueing of the moment, and ranking by
// them costs more than it gains (BENCHMARKS.md: equal nodes, a node's
// death). The current time keeps its ratio to the typical.
func alike(typical, current, reference float64) (float64, float64) {
	if reference > 0 && typical < reference*sameBand && typical*sameBand > reference {
		return reference, current * reference / typical
	}
	return typical, current
}

// sameBand is the ratio within which candidates' typical times count as
// equal.
const sameBand = 1.25

// power is how much work x's peer can take on now, as byPower sees it:
// its announced power, with the application's weight lowered to the
// inverse of the peer's slowness when it answers slower than usual (the
// lower of the two, not their product: both measure the same slowness).
// It never exceeds the announced power, which the table's bound covers.
func (c *Candidates) power(x *Candidate) float64 {
	w := weight(x.Peer)
	if typical, current := c.responseTimes(x); current > typical {
		w = min(w, typical/current)
	}
	return capacity(x.Peer) * speed(x.Peer) * w
}

// announcedPower is how much work the peer says it can take on:
// capacity x speed x application weight.
func announcedPower(p *Peer) float64 {
	return capacity(p) * speed(p) * weight(p)
}

// weight is the application-reported weight, 0-1; 1 when none is reported.
func weight(p *Peer) float64 {
	if !p.Figures.HasAppWeight {
		return 1
	}
	return float64(p.Figures.AppWeight) / 1000
}
