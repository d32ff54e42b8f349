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

// latencyEWMA smooths the mean response time of each interval with a time
// constant of latencyTau, so that one slow interval moves the figure but
// does not define it. An interval without requests leaves it unchanged.
type latencyEWMA struct {
	prevDone, prevSum uint64
	at                time.Time
	micros            float64
}

const latencyTau = candidacy.Decay(5 * time.Second)

func (e *latencyEWMA) update(st *localStats, now time.Time) uint32 {
	done, sum := st.done.Load(), st.latencyMicros.Load()
	if !e.at.IsZero() && done > e.prevDone {
		mean := float64(sum-e.prevSum) / float64(done-e.prevDone)
		if e.micros == 0 {
			e.micros = mean
		} else {
			e.micros += latencyTau.Alpha(now.Sub(e.at)) * (mean - e.micros)
		}
	}
	e.prevDone, e.prevSum, e.at = done, sum, now
	return uint32(min(e.micros, math.MaxUint32))
}
