package backhand

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
)

// localStats counts this node's own requests; the announcer turns them into
// the Busy, LatencyMicros and Forwarded figures.
type localStats struct {
	busy          atomic.Int64  // requests in flight now
	done          atomic.Uint64 // requests completed
	latencyMicros atomic.Uint64 // their response times summed
	forwarded     atomic.Uint64 // requests proxied to a peer other than self
	sent          atomic.Uint64 // announcements sent
}

// served counts a request that this node served itself, which took d:
// into the latency it announces, and into what it knows of its own speed
// (its slot's response times, as it learns each peer's).
// A request served across a stall of this process (Table.Stalled) counts
// in neither: it timed the stall.
func (n *node) served(d time.Duration, now time.Time) {
	if n.table.Stalled(now.Add(-d), now) {
		return
	}
	n.stats.latencyMicros.Add(uint64(max(d, 0).Microseconds()))
	n.stats.done.Add(1)
	n.table.Served(d, now)
}

// latencyEWMA is the mean response time that this node announces: the
// mean over the requests it served, each weighing less with its age (time
// constant latencyTau), so that one slow interval moves the figure but
// does not define it, and an interval without requests leaves it. Nothing
// (0) is announced until latencyMinRequests have been served in this
// incarnation: from the first few dozen requests a mean of exponential
// times is off by 15-20%, beyond the 1.25x band within which peers count
// as equal, and the peer that drew short ones was ranked faster than the
// others until its figure caught up (the demo's entry gave one of three
// identical nodes half its requests in 5 of 30 runs). Until then
// peers rank this node by their own observations of it.
type latencyEWMA struct {
	prevDone, prevSum uint64
	at                time.Time
	sum, count        float64 // decayed µs and requests
}

const (
	latencyTau         = candidacy.Decay(5 * time.Second)
	latencyMinRequests = 200
)

func (e *latencyEWMA) update(st *localStats, now time.Time) uint32 {
	done, sum := st.done.Load(), st.latencyMicros.Load()
	if !e.at.IsZero() {
		// An idle interval scales both alike: the mean stays.
		w := latencyTau.Remaining(now.Sub(e.at))
		e.sum = e.sum*w + float64(sum-e.prevSum)
		e.count = e.count*w + float64(done-e.prevDone)
	}
	e.prevDone, e.prevSum, e.at = done, sum, now
	if done < latencyMinRequests || e.count <= 0 {
		return 0
	}
	return uint32(min(e.sum/e.count, math.MaxUint32))
}
