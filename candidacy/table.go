package candidacy

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

// The reasons Accept refuses an announcement for. The caller counts them.
var (
	// ErrOwn is this node's own announcement come back (multicast loop,
	// self in the peer list): not an error, and not a rejection.
	ErrOwn = errors.New("announcement rejected: own")
	// ErrReplay is an announcement older than the one the table holds.
	ErrReplay = errors.New("announcement rejected: replay")
	// ErrOutOfWindow is an announcement sent too far from this node's clock.
	ErrOutOfWindow = errors.New("announcement rejected: out_of_window")
	// ErrTableFull is a new node while the table is full of live ones.
	ErrTableFull = errors.New("announcement rejected: table_full")
	// ErrDuplicateID is another process announcing this node's name.
	ErrDuplicateID = errors.New("announcement rejected: duplicate_id")
)

// Limits are the parts of the config the table enforces. The table
// outlives configs, so the running app stores its limits here on Start.
type Limits struct {
	MaxPeers      int
	ReplayWindow  time.Duration
	MaxAge        time.Duration // older entries may be evicted to make room
	EvictAfter    time.Duration
	SelfName      string
	SelfAdvertise string
	Incarnation   uint64
}

// Slot holds the current record of one node name, and what this node
// itself observes of that peer.
type Slot struct {
	name  string
	cur   atomic.Pointer[Peer]
	local peerLocal

	// gaps are the silences before the peer's last announcements (a
	// ring; zero: none yet), for its Patience. Under the table's lock.
	gaps   [patienceGaps]time.Duration
	gapsAt int

	// table is the slot's, for the max_age that tells a silence from an
	// outage, the cluster's patience and its silence (see Slot.Fresh).
	table *Table
}

// How a peer's Patience is learned. An announcement lost on the way (UDP,
// a congested link) makes the silence before the next one longer; a peer
// counts as fresh while its silence is below patienceFactor times the
// longest of its last patienceGaps gaps, if that exceeds max_age, and
// never beyond evict_after. A steady peer (gaps of one interval) keeps
// max_age alone, so a node that dies or is cut off still leaves every
// list within max_age; one whose announcements are mostly lost is still
// a candidate between two that arrive, instead of herding every request
// onto the few peers heard last (the fault harness's loss90: with 90%
// of the announcements lost, one node of four was fresh within max_age).
// The longest gap, not a mean: the next one is longer with probability
// 1/(patienceGaps+1) whatever their distribution, twice as long far less
// often. Gaps are measured within an incarnation (a restart is no loss).
const (
	patienceGaps   = 8
	patienceFactor = 2
)

// recordGap takes the silence before an announcement of the slot's peer,
// and returns the peer's patience after it, at most limit.
func (s *Slot) recordGap(gap, limit time.Duration) time.Duration {
	s.gaps[s.gapsAt] = gap
	s.gapsAt = (s.gapsAt + 1) % patienceGaps
	return s.patience(limit)
}

// patience is patienceFactor times the longest recorded gap, at most
// limit.
func (s *Slot) patience(limit time.Duration) time.Duration {
	return min(patienceFactor*slices.Max(s.gaps[:]), limit)
}

// Name is the node name the slot holds.
func (s *Slot) Name() string { return s.name }

// Peer is the node's latest record.
func (s *Slot) Peer() *Peer { return s.cur.Load() }

// peerView is an immutable, name-sorted list of slots: it changes only when
// a node joins or is evicted, while each slot's record changes in place.
type peerView []*Slot

// Table is the live table of peers, self included. Writers (the UDP
// readers and the announcer) serialize on mu; readers load the view.
type Table struct {
	mu     sync.Mutex
	slots  map[string]*Slot
	view   atomic.Pointer[peerView]
	limits atomic.Pointer[Limits]

	// bound is at least the announced power of every peer in the view
	// (float64 bits), for byPower's sampling by rejection: raised by each
	// announcement that exceeds it, recomputed when the view changes.
	bound atomic.Uint64

	// reference is the cluster's reference response time in µs (float64
	// bits; see referenceTime), and self this node's slot: both for the
	// request path, which must not search for them.
	reference atomic.Uint64
	roundTrip atomic.Uint64 // float64 bits: see roundTripFactor
	crowd     atomic.Uint64 // float64 bits: see crowding
	self      atomic.Pointer[Slot]

	// patience is the cluster's (ns; see Patience), recomputed with the
	// reference once per interval.
	patience atomic.Int64

	// silentFrom is when this node stops hearing most of its peers if
	// none is heard again (Unix ns; see clusterSilence), recomputed with
	// the patience.
	silentFrom atomic.Int64

	// noStaleUntil is when the oldest entry of the last full scan turns
	// stale: until then a full table has nothing to evict, so a flood of
	// new names costs O(1) each instead of a scan of the table.
	noStaleUntil time.Time
}

// NewTable makes an empty table with limits l.
func NewTable(l Limits) *Table {
	t := &Table{slots: make(map[string]*Slot)}
	t.limits.Store(&l)
	t.view.Store(&peerView{})
	storeFloat(&t.crowd, math.Inf(1)) // unknown until UpdateReference: crowded
	t.silentFrom.Store(math.MaxInt64)
	return t
}

// SelfAdvertise is the address this node advertises.
func (t *Table) SelfAdvertise() string { return t.limits.Load().SelfAdvertise }

// Limits returns the limits the table enforces now.
func (t *Table) Limits() Limits { return *t.limits.Load() }

// SetLimits applies a (new) config's limits.
func (t *Table) SetLimits(l *Limits) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.limits.Store(l)
	t.noStaleUntil = time.Time{}
}

// referenceMicros is the cluster's reference response time, 0 while
// unknown.
func (t *Table) referenceMicros() float64 { return loadFloat(&t.reference) }

// roundTripFactor is how much longer this node counts a request it sends
// a peer than the peer counts it (see roundTripFactor), at least 1.
func (t *Table) roundTripFactor() float64 { return max(loadFloat(&t.roundTrip), 1) }

// Crowding is how many requests other deciders send this node's peers,
// per request of this node's own, in the time between two announcements
// over the time a peer takes per request, as last computed by
// UpdateReference (see crowding): +Inf while this node sends none.
func (t *Table) Crowding() float64 { return loadFloat(&t.crowd) }

// RoundTripFactor is how much longer this node counts a request it sends
// a peer than the peer counts it, as last computed by UpdateReference: 1
// to 2, 1 without evidence. byWait raises this node's own count by it.
func (t *Table) RoundTripFactor() float64 { return t.roundTripFactor() }

// ReferenceMicros is the cluster's reference response time in µs, as last
// computed by UpdateReference, 0 while unknown.
func (t *Table) ReferenceMicros() float64 { return t.referenceMicros() }

// UpdateReference recomputes the cluster's reference response time (the
// median of the live peers' typical ones), the round-trip factor, the
// cluster's patience and when most peers will have fallen silent
// (clusterSilence) from the view; the announcer calls it once per
// interval.
func (t *Table) UpdateReference(now time.Time) {
	view, maxAge := t.peers(), t.limits.Load().MaxAge
	storeFloat(&t.reference, referenceTime(view, now, maxAge))
	storeFloat(&t.roundTrip, roundTripFactor(view, now, maxAge))
	storeFloat(&t.crowd, crowding(view, now, maxAge, loadFloat(&t.reference)))
	t.patience.Store(int64(medianPatience(view)))
	t.silentFrom.Store(clusterSilence(view, maxAge))
}

// Patience is the silence every peer is allowed, whatever its own gaps:
// the median of the peers' own patience. When announcements are being
// lost on most links, a peer not heard since the loss began has learned
// no long gap yet, and would be stale until its next announcement got
// through, which can take tens of seconds (the fault harness's loss90: a
// balancer herded onto the two nodes heard first); once half the peers
// show long gaps, the others get the same patience. One peer's own long
// gap (a partition that healed) does not move the median. 0 while most
// peers are steady: max_age alone then.
func (t *Table) Patience() time.Duration { return time.Duration(t.patience.Load()) }

// medianPatience is the median of the Patience of the peers in view, this
// node left out.
func medianPatience(view peerView) time.Duration {
	ps := make([]time.Duration, 0, len(view))
	for _, s := range view {
		if p := s.cur.Load(); !p.Self {
			ps = append(ps, p.Patience)
		}
	}
	if len(ps) == 0 {
		return 0
	}
	slices.Sort(ps)
	return ps[len(ps)/2]
}

// powerBound is at least the announced power of every peer in the view.
func (t *Table) powerBound() float64 { return math.Float64frombits(t.bound.Load()) }

// raiseBoundLocked raises the power bound to p's power if that is higher.
func (t *Table) raiseBoundLocked(p *Peer) {
	if pw := announcedPower(p); pw > t.powerBound() {
		t.bound.Store(math.Float64bits(pw))
	}
}

// Peers returns the slots, sorted by name, self included. Callers must not
// modify the slice.
func (t *Table) Peers() []*Slot { return t.peers() }

func (t *Table) peers() peerView { return *t.view.Load() }

// Lookup returns the named peer's slot, or nil.
func (t *Table) Lookup(name string) *Slot { return t.peers().find(name) }

// ByAdvertise returns the peer that advertises addr, or nil: a scan of
// the view, for the rare choices made without the chain (reverse_proxy's
// fallback policy).
func (t *Table) ByAdvertise(addr string) *Peer {
	for _, s := range t.peers() {
		if p := s.cur.Load(); p.Advertise == addr {
			return p
		}
	}
	return nil
}

// find returns the named slot of v, or nil.
func (v peerView) find(name string) *Slot {
	i, ok := slices.BinarySearchFunc(v, name, func(s *Slot, n string) int { return strings.Compare(s.name, n) })
	if !ok {
		return nil
	}
	return v[i]
}

// selfSlot returns this node's slot in view, or nil before the first
// announcement.
func (t *Table) selfSlot(v peerView) *Slot { return v.find(t.limits.Load().SelfName) }

// Accept takes a verified announcement from src into the table, enforcing
// the time window, replay order and the size bound. It reports whether a
// new node joined; a refused announcement is one of the Err values.
func (t *Table) Accept(a *wire.Announcement, src netip.AddrPort, now time.Time) (joined bool, err error) {
	l := t.limits.Load()
	if a.Node == l.SelfName {
		if a.Incarnation == l.Incarnation {
			return false, ErrOwn
		}
		return false, ErrDuplicateID
	}
	if skew := now.UnixNano() - a.SentAt; skew > int64(l.ReplayWindow) || -skew > int64(l.ReplayWindow) {
		return false, ErrOutOfWindow
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
			return false, ErrReplay
		}
		if cur.Incarnation != a.Incarnation && a.SentAt <= cur.SentAt {
			// A restart brings a new incarnation, always with a later
			// send time; an older one is a replay of the previous life.
			return false, ErrReplay
		}
	} else if len(t.slots) >= l.MaxPeers && !t.evictOldestLocked(now, l.MaxAge) {
		return false, ErrTableFull
	}
	_, joined = t.storeLocked(p)
	return joined, nil
}

// UpdateSelf publishes this node's own record.
func (t *Table) UpdateSelf(p *Peer) {
	p.Self = true
	t.mu.Lock()
	defer t.mu.Unlock()
	if p.Name != t.limits.Load().SelfName {
		// The send loop of a config that a reload has replaced with one
		// that renamed the node: its record would stay, self and forever
		// fresh, after DropStaleSelf.
		return
	}
	slot, _ := t.storeLocked(p)
	t.self.Store(slot)
}

// Store publishes p as the latest record of its node, without an
// announcement's checks (time window, replay order, table size): for
// tables fed otherwise than by announcements, such as candidacytest's
// Board.
func (t *Table) Store(p *Peer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.storeLocked(p)
}

// storeLocked publishes p as the latest record of its node, in the node's
// slot, and returns that slot and whether it is new (the node joined). It
// is the last step of every way into the table (announcements,
// this node's own record, Store): it keeps FirstSeen within an
// incarnation, raises byPower's bound and tells the slot's local
// estimates that an announcement arrived.
func (t *Table) storeLocked(p *Peer) (slot *Slot, joined bool) {
	if slot = t.slots[p.Name]; slot == nil {
		t.insertLocked(p)
		return t.slots[p.Name], true
	}
	if cur := slot.cur.Load(); cur.Incarnation == p.Incarnation {
		p.FirstSeen = cur.FirstSeen
		l, gap := t.limits.Load(), p.ReceivedAt.Sub(cur.ReceivedAt)
		// A silence beyond what the peer may keep and stay fresh (for this
		// node itself: its own announcer stopped for max_age, the process
		// was stopped or starved) ends now: what it served, or was sent,
		// meanwhile timed the outage, not its speed (staleDuring).
		if l.MaxAge > 0 && gap > max(l.MaxAge, cur.Patience) {
			slot.local.staleUntil.Store(p.ReceivedAt.UnixNano())
		}
		if !p.Self {
			p.Patience = slot.recordGap(gap, l.EvictAfter)
			slot.local.gap.Store(int64(gap))
		}
	} else if !p.Self {
		p.Patience = slot.patience(t.limits.Load().EvictAfter)
	}
	t.raiseBoundLocked(p)
	slot.cur.Store(p)
	slot.local.announced(&p.Figures)
	return slot, false
}

func (t *Table) insertLocked(p *Peer) {
	slot := &Slot{name: p.Name, table: t}
	slot.cur.Store(p)
	slot.local.announced(&p.Figures)
	t.slots[p.Name] = slot
	t.publishLocked()
}

// publishLocked rebuilds the sorted view after a join or an eviction.
func (t *Table) publishLocked() {
	v := make(peerView, 0, len(t.slots))
	bound := 0.0
	for _, s := range t.slots {
		v = append(v, s)
		bound = max(bound, announcedPower(s.cur.Load()))
	}
	t.bound.Store(math.Float64bits(bound))
	slices.SortFunc(v, func(a, b *Slot) int { return strings.Compare(a.name, b.name) })
	t.view.Store(&v)
}

// evictOldestLocked removes the least recently heard peer if it is older
// than maxAge, to make room for a new one; live peers are never displaced,
// so a flood of new names cannot push out the real cluster.
func (t *Table) evictOldestLocked(now time.Time, maxAge time.Duration) bool {
	if now.Before(t.noStaleUntil) {
		return false
	}
	var oldest *Slot
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

// Sweep evicts peers silent for longer than the limits' EvictAfter and
// returns them.
func (t *Table) Sweep(now time.Time) []*Peer {
	evictAfter := t.limits.Load().EvictAfter
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

// DropStaleSelf drops self entries whose name is not selfName: after a
// reload that renamed this node, the old self record must not linger as a
// live peer.
func (t *Table) DropStaleSelf(selfName string) {
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
