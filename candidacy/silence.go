package candidacy

import (
	"math"
	"slices"
	"time"
)

// What this node does when it stops hearing most of its peers at once.
// Announcements are UDP: when many peers fall silent together, loss on
// this node's side of the network (its link, its socket's buffer) is far
// likelier than as many simultaneous deaths, and a dead node is held out
// by its failed connections anyway. Waiting for each peer's next
// announcement then leaves the load on the few still heard: the fault
// harness's loss90 (90% of the datagrams lost on every link) left a
// dedicated balancer with one or two fresh peers of four for seconds at
// the onset, before any patience had been learnt (p99 1.2 s, 9.1 s and
// 13.8 s in three runs; 369-370 ms, the no-loss figure, with this rule).
// But this node has evidence of its own: the answers to the requests it
// sends its peers. So while at least half of its peers, and at least
// silentQuorum, have been silent for longer than max_age, a peer whose
// announcements stopped stays usable as long as it answers this node:
// one of this node's requests to it was answered within the chain's
// max_age, and none failed since (see Slot.answering). One silent peer
// among heard ones is that peer's own fault (its announcements cut while
// its HTTP works, a partition) and goes stale after max_age as before; a
// hung peer answers nothing, so it too goes stale within max_age of its
// last answer.
const silentQuorum = 2

// clusterSilence returns when, if no peer in view is heard again, at
// least half of them and at least silentQuorum will have been silent for
// longer than maxAge (Unix ns; math.MaxInt64: never, too few peers). A
// peer that this node failed to reach since its last announcement is
// left out: its silence has another explanation (a dead node), and a
// dead node beside one partitioned node would pass for loss. The
// announcer recomputes it once per interval (UpdateReference); an
// announcement that arrives in between makes it early for at most that
// peer, and only if the peer had already been silent for max_age less
// an interval.
func clusterSilence(view peerView, maxAge time.Duration) int64 {
	staleAt := make([]int64, 0, len(view))
	for _, s := range view {
		p := s.cur.Load()
		if p.Self || s.local.failedAt.Load() > p.ReceivedAt.UnixNano() {
			continue
		}
		staleAt = append(staleAt, p.ReceivedAt.Add(maxAge).UnixNano())
	}
	k := max(silentQuorum, (len(staleAt)+1)/2)
	if len(staleAt) < k || maxAge <= 0 {
		return math.MaxInt64
	}
	slices.Sort(staleAt)
	return staleAt[k-1]
}

// Silent reports whether this node has stopped hearing most of its peers
// at now (see silentQuorum), as of the table's last UpdateReference.
func (t *Table) Silent(now time.Time) bool { return now.UnixNano() > t.silentFrom.Load() }

// answering reports whether this node's own requests show the peer
// serving while the cluster is silent: one of them was answered within
// maxAge, and none failed since (see silentQuorum).
func (s *Slot) answering(now time.Time, maxAge time.Duration) bool {
	at := s.local.answeredAt.Load()
	return at != 0 && now.UnixNano()-at <= int64(maxAge) && s.local.failedAt.Load() < at && s.table.Silent(now)
}

// Fresh reports whether the peer counts as live, by its announcements or
// by this node's own evidence: heard within maxAge, within its own
// patience or within the cluster's (Table.Patience); or, while most of the
// cluster is silent, answering this node's requests (see silentQuorum).
// This node itself always is.
func (s *Slot) Fresh(now time.Time, maxAge time.Duration) bool {
	return s.fresh(s.cur.Load(), now, maxAge)
}

// Usable is the one rule for a peer that may serve a new request: Fresh,
// and taking requests (advertising an address, not draining). The chain's
// starting list, `dynamic backhand` and the status page apply it.
func (s *Slot) Usable(now time.Time, maxAge time.Duration) bool {
	p := s.cur.Load()
	return p.takesRequests() && s.fresh(p, now, maxAge)
}

// fresh is Fresh for p, the slot's record already loaded. The evidence is
// looked at only for a peer whose announcements stopped, so a healthy
// cluster's decisions cost what they did.
func (s *Slot) fresh(p *Peer, now time.Time, maxAge time.Duration) bool {
	return p.Fresh(now, max(maxAge, s.table.Patience())) || s.answering(now, maxAge)
}

// Usable is Slot.Usable for a peer's record, for callers that hold the
// record only (a Scope): the slot is looked up only when the record
// alone does not make it usable.
func (t *Table) Usable(p *Peer, now time.Time, maxAge time.Duration) bool {
	if !p.takesRequests() {
		return false
	}
	if p.Fresh(now, max(maxAge, t.Patience())) {
		return true
	}
	s := t.Lookup(p.Name)
	return s != nil && s.answering(now, maxAge)
}
