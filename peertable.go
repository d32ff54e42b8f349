package backhand

import (
	"errors"
	"math"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-backhand/backhand/internal/wire"
)

// Peer is one node of the cluster as this node last heard it. A Peer is
// immutable once published: an announcement replaces it with a new one, so
// readers on the request path need no lock.
type Peer struct {
	Name        string
	Advertise   string // host:port to forward HTTP to
	Tags        []string
	Figures     Figures
	Incarnation uint64
	Seq         uint64
	SentAt      int64          // Unix ns, by the sender's clock
	ReceivedAt  time.Time      // by this node's clock; ages are measured from it
	FirstSeen   time.Time      // when this incarnation was first heard (slow start)
	Source      netip.AddrPort // UDP source; zero for self
	Self        bool
}

// Age is how long ago the peer was last heard from.
func (p *Peer) Age(now time.Time) time.Duration { return now.Sub(p.ReceivedAt) }

// fresh reports whether the peer was heard from within maxAge at now; this
// node itself always is.
func (p *Peer) fresh(now time.Time, maxAge time.Duration) bool {
	return p.Self || p.Age(now) <= maxAge
}

// takesRequests reports whether the peer may be sent new requests: it
// advertises an address and is not draining.
func (p *Peer) takesRequests() bool {
	return p.Advertise != "" && !p.Figures.Draining
}

// usable is the one rule for a peer that may serve a new request: fresh
// and taking requests. Candidate lists, the upstream source and the
// status page all apply it.
func (p *Peer) usable(now time.Time, maxAge time.Duration) bool {
	return p.takesRequests() && p.fresh(now, maxAge)
}

// HasTags reports whether the peer carries every one of tags.
func (p *Peer) HasTags(tags []string) bool {
	for _, t := range tags {
		if !slices.Contains(p.Tags, t) {
			return false
		}
	}
	return true
}

// rejectReason says why a datagram was not taken into the table: first
// wire's reasons, which Decode finds in the datagram itself (truncated,
// bad_mac ...), with the same values, then the table's own. Their names
// label metrics and the status page.
type rejectReason uint8

const (
	rejectWrongCluster rejectReason = rejectReason(wire.NumReasons) + iota
	rejectACL
	rejectReplay
	rejectOutOfWindow // send time too far from our clock
	rejectTableFull
	rejectDuplicateID     // another process announces this node's name
	rejectAdvertiseDenied // the advertised address is outside advertise_allow
	numRejectReasons
)

var rejectNames = [numRejectReasons - rejectReason(wire.NumReasons)]string{
	"wrong_cluster", "acl", "replay", "out_of_window", "table_full", "duplicate_id", "advertise_denied",
}

func (r rejectReason) String() string {
	switch {
	case r < rejectReason(wire.NumReasons):
		return wire.Reason(r).String()
	case r < numRejectReasons:
		return rejectNames[r-rejectReason(wire.NumReasons)]
	}
	return "unknown"
}

// errReject is a datagram rejected for a reason that the peer table counts.
type errReject struct{ reason rejectReason }

func (e errReject) Error() string { return "announcement rejected: " + e.reason.String() }

func reject(r rejectReason) error { return errReject{r} }

// reasonOf returns the rejection reason carried by err, from the table or
// from wire's Decode (wire.Malformed for any other error).
func reasonOf(err error) rejectReason {
	var e errReject
	if errors.As(err, &e) {
		return e.reason
	}
	return rejectReason(wire.ReasonOf(err))
}

// tableLimits are the parts of the config the table enforces. The table
// outlives configs, so the running app stores its limits here on Start.
type tableLimits struct {
	maxPeers      int
	replayWindow  time.Duration
	maxAge        time.Duration // older entries may be evicted to make room
	evictAfter    time.Duration
	selfName      string
	selfAdvertise string
	incarnation   uint64
}

// peerSlot holds the current record of one node name, and what this node
// itself observes of that peer.
type peerSlot struct {
	name  string
	cur   atomic.Pointer[Peer]
	local peerLocal
}

// peerView is an immutable, name-sorted list of slots: it changes only when
// a node joins or is evicted, while each slot's record changes in place.
type peerView []*peerSlot

// peerTable is the live table of peers, self included. Writers (the UDP
// readers and the announcer) serialize on mu; readers load the view.
type peerTable struct {
	mu      sync.Mutex
	slots   map[string]*peerSlot
	view    atomic.Pointer[peerView]
	limits  atomic.Pointer[tableLimits]
	accepts atomic.Uint64
	rejects [numRejectReasons]atomic.Uint64

	// bound is at least the announced power of every peer in the view
	// (float64 bits), for byPower's sampling by rejection: raised by each
	// announcement that exceeds it, recomputed when the view changes.
	bound atomic.Uint64

	// reference is the cluster's reference response time in µs (float64
	// bits; see referenceTime), and self this node's slot: both for the
	// request path, which must not search for them.
	reference atomic.Uint64
	self      atomic.Pointer[peerSlot]

	// noStaleUntil is when the oldest entry of the last full scan turns
	// stale: until then a full table has nothing to evict, so a flood of
	// new names costs O(1) each instead of a scan of the table.
	noStaleUntil time.Time
}

func newPeerTable(l tableLimits) *peerTable {
	t := &peerTable{slots: make(map[string]*peerSlot)}
	t.limits.Store(&l)
	t.view.Store(&peerView{})
	return t
}

// selfAdvertise is the address this node advertises.
func (t *peerTable) selfAdvertise() string { return t.limits.Load().selfAdvertise }

// setLimits applies a (new) config's limits.
func (t *peerTable) setLimits(l *tableLimits) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.limits.Store(l)
	t.noStaleUntil = time.Time{}
}

// referenceMicros is the cluster's reference response time, 0 while
// unknown.
func (t *peerTable) referenceMicros() float64 { return loadFloat(&t.reference) }

// updateReference recomputes the reference response time from the view.
func (t *peerTable) updateReference(now time.Time) {
	storeFloat(&t.reference, referenceTime(t.peers(), now, t.limits.Load().maxAge))
}

// powerBound is at least the announced power of every peer in the view.
func (t *peerTable) powerBound() float64 { return math.Float64frombits(t.bound.Load()) }

// raiseBoundLocked raises the power bound to p's power if that is higher.
func (t *peerTable) raiseBoundLocked(p *Peer) {
	if pw := announcedPower(p); pw > t.powerBound() {
		t.bound.Store(math.Float64bits(pw))
	}
}

// peers returns the current view. Callers must not modify it.
func (t *peerTable) peers() peerView { return *t.view.Load() }

// lookup returns the named peer's record, or nil.
func (t *peerTable) lookup(name string) *Peer {
	if s := t.lookupSlot(name); s != nil {
		return s.cur.Load()
	}
	return nil
}

// byAdvertise returns the peer that advertises addr, or nil: a scan of
// the view, for the rare choices made without the chain.
func (t *peerTable) byAdvertise(addr string) *Peer {
	for _, s := range t.peers() {
		if p := s.cur.Load(); p.Advertise == addr {
			return p
		}
	}
	return nil
}

// lookupSlot returns the named peer's slot, or nil.
func (t *peerTable) lookupSlot(name string) *peerSlot { return t.peers().find(name) }

// find returns the named slot of v, or nil.
func (v peerView) find(name string) *peerSlot {
	i, ok := slices.BinarySearchFunc(v, name, func(s *peerSlot, n string) int { return strings.Compare(s.name, n) })
	if !ok {
		return nil
	}
	return v[i]
}

// selfSlot returns this node's slot in view, or nil before the first
// announcement.
func (t *peerTable) selfSlot(v peerView) *peerSlot { return v.find(t.limits.Load().selfName) }

// countReject records a rejection and returns its reason.
func (t *peerTable) countReject(r rejectReason) rejectReason {
	t.rejects[r].Add(1)
	return r
}

// errOwn marks our own datagram come back (multicast loop, self in the peer
// list): not an error, and not counted as a rejection.
var errOwn = reject(numRejectReasons)

// accept takes a verified announcement from src into the table, enforcing
// the time window, replay order and the size bound. It reports whether a
// new node joined. Rejections are counted.
func (t *peerTable) accept(a *wire.Announcement, src netip.AddrPort, now time.Time) (joined bool, err error) {
	l := t.limits.Load()
	if a.Node == l.selfName {
		if a.Incarnation == l.incarnation {
			return false, errOwn
		}
		return false, reject(t.countReject(rejectDuplicateID))
	}
	if skew := now.UnixNano() - a.SentAt; skew > int64(l.replayWindow) || -skew > int64(l.replayWindow) {
		return false, reject(t.countReject(rejectOutOfWindow))
	}
	p := &Peer{
		Name: a.Node, Advertise: a.Advertise, Tags: slices.Clone(a.Tags), Figures: a.Figures,
		Incarnation: a.Incarnation, Seq: a.Seq, SentAt: a.SentAt,
		ReceivedAt: now, FirstSeen: now, Source: src,
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if slot := t.slots[a.Node]; slot != nil {
		cur := slot.cur.Load()
		if cur.Incarnation == a.Incarnation && a.Seq <= cur.Seq {
			return false, reject(t.countReject(rejectReplay))
		}
		if cur.Incarnation != a.Incarnation && a.SentAt <= cur.SentAt {
			// A restart brings a new incarnation, always with a later
			// send time; an older one is a replay of the previous life.
			return false, reject(t.countReject(rejectReplay))
		}
	} else if len(t.slots) >= l.maxPeers && !t.evictOldestLocked(now, l.maxAge) {
		return false, reject(t.countReject(rejectTableFull))
	}
	t.accepts.Add(1)
	_, joined = t.storeLocked(p)
	return joined, nil
}

// updateSelf publishes this node's own record.
func (t *peerTable) updateSelf(p *Peer) {
	p.Self = true
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.Name != t.limits.Load().selfName {
		// The send loop of a config that a reload has replaced with one
		// that renamed the node: its record would stay, self and forever
		// fresh, after dropStaleSelf.
		return
	}
	slot, _ := t.storeLocked(p)
	t.self.Store(slot)
}

// storeLocked publishes p as the latest record of its node, in the node's
// slot, and returns that slot and whether it is new (the node joined). It
// is the last step of every way into the table (announcements,
// this node's own record, the offline Board): it keeps FirstSeen within an
// incarnation, raises byPower's bound and tells the slot's local
// estimates that an announcement arrived.
func (t *peerTable) storeLocked(p *Peer) (slot *peerSlot, joined bool) {
	if slot = t.slots[p.Name]; slot == nil {
		t.insertLocked(p)
		return t.slots[p.Name], true
	}
	if cur := slot.cur.Load(); cur.Incarnation == p.Incarnation {
		p.FirstSeen = cur.FirstSeen
	}
	t.raiseBoundLocked(p)
	slot.cur.Store(p)
	slot.local.announced(&p.Figures)
	return slot, false
}

func (t *peerTable) insertLocked(p *Peer) {
	slot := &peerSlot{name: p.Name}
	slot.cur.Store(p)
	slot.local.announced(&p.Figures)
	t.slots[p.Name] = slot
	t.publishLocked()
}

// publishLocked rebuilds the sorted view after a join or an eviction.
func (t *peerTable) publishLocked() {
	v := make(peerView, 0, len(t.slots))
	bound := 0.0
	for _, s := range t.slots {
		v = append(v, s)
		bound = max(bound, announcedPower(s.cur.Load()))
	}
	t.bound.Store(math.Float64bits(bound))
	slices.SortFunc(v, func(a, b *peerSlot) int { return strings.Compare(a.name, b.name) })
	t.view.Store(&v)
}

// evictOldestLocked removes the least recently heard peer if it is older
// than maxAge, to make room for a new one; live peers are never displaced,
// so a flood of new names cannot push out the real cluster.
func (t *peerTable) evictOldestLocked(now time.Time, maxAge time.Duration) bool {
	if now.Before(t.noStaleUntil) {
		return false
	}
	var oldest *peerSlot
	var oldestAt time.Time
	for _, s := range t.slots {
		p := s.cur.Load()
		if p.Self {
			continue
		}
		if oldest == nil || p.ReceivedAt.Before(oldestAt) {
			oldest, oldestAt = s, p.ReceivedAt
		}
	}
	if oldest == nil {
		return false
	}
	if now.Sub(oldestAt) <= maxAge {
		t.noStaleUntil = oldestAt.Add(maxAge)
		return false
	}
	delete(t.slots, oldest.name)
	t.publishLocked()
	return true
}

// sweep evicts peers silent for longer than evictAfter and returns them.
func (t *peerTable) sweep(now time.Time) []*Peer {
	evictAfter := t.limits.Load().evictAfter
	t.mu.Lock()
	defer t.mu.Unlock()
	var gone []*Peer
	for name, s := range t.slots {
		if p := s.cur.Load(); !p.Self && p.Age(now) > evictAfter {
			delete(t.slots, name)
			gone = append(gone, p)
		}
	}
	if len(gone) > 0 {
		t.publishLocked()
	}
	return gone
}

// dropStaleSelf drops self entries whose name is not selfName: after a
// reload that renamed this node, the old self record must not linger as a
// live peer.
func (t *peerTable) dropStaleSelf(selfName string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for name, s := range t.slots {
		if s.cur.Load().Self && name != selfName {
			delete(t.slots, name)
			changed = true
		}
	}
	if changed {
		t.publishLocked()
	}
}
