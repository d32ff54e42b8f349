package candidacytest

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/caddy-backhand/backhand/candidacy"
)

// Board is a peer table that the caller feeds instead of announcements
// arriving over UDP, with one decider's own counters: for simulators, tests
// and tools that run the real candidacy chains outside a running Caddy.
// Each entry proxy being simulated needs a Board of its own, since each
// counts only its own requests in flight. Not safe for concurrent use.
type Board struct {
	self  string
	table *candidacy.Table
	busy  atomic.Int64 // requests the decider serves itself: none
}

// NewBoard makes an empty board for a decider named self.
func NewBoard(self string) *Board {
	t := candidacy.NewTable(candidacy.Limits{MaxPeers: 1 << 20, SelfName: self, MaxAge: time.Hour, EvictAfter: time.Hour, ReplayWindow: time.Hour})
	return &Board{self: self, table: t}
}

// Announce takes p as the latest announcement of its node, received at
// p.ReceivedAt. It returns an error if the table refuses it.
func (b *Board) Announce(p candidacy.Peer) error {
	if p.Self || p.Name == b.self {
		b.table.UpdateSelf(&p)
		return nil
	}
	b.table.Store(&p)
	return nil
}

// Refresh updates peer's announced busy figure and, unless 0, its
// latency (the mean time it serves a request, as it counts busy), as a new
// announcement received at `at` would: for simulators that refresh
// thousands of entries per simulated second. Unlike Announce it must not
// run while a chain runs over the board.
func (b *Board) Refresh(peer string, busy uint32, latency time.Duration, at time.Time) {
	s := b.table.Lookup(peer)
	if s == nil {
		return
	}
	// A copy: the table measures the gap since the record it holds.
	p := new(candidacy.Peer)
	*p = *s.Peer()
	p.Figures.Busy, p.ReceivedAt = busy, at
	if latency > 0 {
		p.Figures.LatencyMicros = uint32(min(latency.Microseconds(), math.MaxUint32))
	}
	b.table.Store(p)
}

// UpdateReference recomputes the cluster's reference response time from
// what the board holds, as a node's announcer does once per interval.
func (b *Board) UpdateReference(now time.Time) { b.table.UpdateReference(now) }

// Begin records that this decider sent a request to peer.
func (b *Board) Begin(peer string) {
	if s := b.table.Lookup(peer); s != nil {
		s.Begin()
	}
}

// End records that a request to peer finished after d, at now.
func (b *Board) End(peer string, d time.Duration, now time.Time) {
	if s := b.table.Lookup(peer); s != nil {
		s.End(d, now, true)
	}
}

// unsignedCookies reads byCookie's cookie as a board's decider would
// without a cluster key: the value is the node's name.
type unsignedCookies struct{}

func (unsignedCookies) CookieNode(v string) (string, bool) { return v, v != "" }
