package candidacy

import (
	"cmp"
	"math"
	"math/bits"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Candidate is one peer on a candidacy chain's list.
type Candidate struct {
	// Peer is the peer's last announcement. Never nil.
	Peer *Peer

	slot *Slot
	key  float64 // sort key, set by the ordering function that runs
}

// Slot is the candidate's slot in the table: what this node knows of the
// peer besides its announcement, and where the requests sent there are
// counted.
func (x *Candidate) Slot() *Slot { return x.slot }

// Candidates is the list a candidacy chain works on. It starts as the live
// peers (heard within max_age, not draining, not failed by this node since
// their last announcement), self included, in the order
// of their names; each function filters, reorders or truncates it, and the
// first candidate left wins. An empty list means "serve locally".
//
// The list is evaluated lazily, so that the common chain "byAge, byRandom,
// byWindow 2, <order>" costs O(1) in the number of peers: filters that only
// look at one peer at a time are deferred, a shuffle followed by a window
// draws just the window's members at random (rejecting the ones a filter
// drops), and only what survives is sorted. Third-party functions see the
// same semantics through All, Filter, Truncate and Sort.
type Candidates struct {
	req      *http.Request
	now      time.Time
	liveBusy *atomic.Int64 // this node's live count in flight, fresher than its own announcement
	// selfCounted is 1 when liveBusy already counts the request being decided,
	// which must not weigh against serving it here.
	selfCounted int64
	view        peerView
	table       *Table // for byPower's power bound
	rnd         func(n int) int
	maxAge      time.Duration // the starting rule's age limit
	cookies     Cookies       // byCookie's check of its cookie; nil: none
	scope       Scope         // the caller's filter, applied before the pending ones

	pending  []peerFilter // filters not yet applied to the view
	shuffled bool         // a shuffle of the whole list is pending
	weighted bool         // the pending shuffle is byPower's, weighted by power
	done     bool         // list holds the whole (remaining) candidate list
	list     []Candidate
	// keyed says an ordering is pending: the keys are set, but only the
	// first ordered candidates are in key order yet (callers mostly read
	// just the winner: see orderHead).
	keyed   bool
	ordered int
	drawn   []uint64 // sample's bitmap of the view's indices drawn

	tried   []*Slot // peers this request already tried are not candidates again
	predict Predict // how estimates account for the age of announcements

	decision decision // what the chain decided beyond the list's order
	salt     uint64   // peerUniform's, drawn at its first use in a run
}

// decision is what a chain decides besides the order of its list: how the
// winner is reached, and whether the request stays here after all.
type decision struct {
	redirect redirector // HTTPRedirectTo*: answer with a redirect to the winner
	cookie   string     // byCookie: the cookie that names the winner
	off      bool       // off (backhand_off): serve locally, whatever follows
}

// peerFilter is a filter that looks at one peer at a time, so the list can
// apply it lazily.
type peerFilter interface {
	admits(c *Candidates, p *Peer) bool
}

var candidatesPool = sync.Pool{New: func() any { return new(Candidates) }}

// newCandidates starts a list from t's view for run. Release it with
// Release when done.
func newCandidates(t *Table, run *Run, maxAge time.Duration, predict Predict) *Candidates {
	c := candidatesPool.Get().(*Candidates)
	c.req, c.now, c.maxAge, c.predict = run.Request, run.Now, maxAge, predict
	c.view, c.table = t.peers(), t
	c.liveBusy, c.cookies, c.scope, c.tried = run.Busy, run.Cookies, run.Scope, run.Tried
	if run.SelfCounted {
		c.selfCounted = 1
	}
	c.rnd = run.Rand
	if c.rnd == nil {
		c.rnd = rand.IntN
	}
	return c
}

// Release returns the list to a pool for reuse, once the caller of
// Chain.Evaluate is done with it; it must not be used after.
func (c *Candidates) Release() {
	pending, list, drawn := c.pending[:0], c.list[:0], c.drawn
	clear(c.list[:cap(c.list)]) // drop peer pointers so the pool keeps no old records
	*c = Candidates{pending: pending, list: list, drawn: drawn}
	candidatesPool.Put(c)
}

// Request is the request being balanced.
func (c *Candidates) Request() *http.Request { return c.req }

// Now is the time the chain started.
func (c *Candidates) Now() time.Time { return c.now }

// Intn returns a uniform random int in [0, n), from the per-request source.
func (c *Candidates) Intn(n int) int { return c.rnd(n) }

// filter adds a lazily applied filter.
func (c *Candidates) filter(f peerFilter) {
	if c.done {
		c.orderAll()
		c.list = slices.DeleteFunc(c.list, func(x Candidate) bool { return !f.admits(c, x.Peer) })
		return
	}
	c.pending = append(c.pending, f)
}

// passes reports whether the peer of slot s, p, survives the live-peer rule
// and the pending filters.
func (c *Candidates) passes(s *Slot, p *Peer) bool {
	if !c.live(s, p) || (len(c.tried) > 0 && slices.Contains(c.tried, s)) || (!p.Self && s.local.shunned(p, c.now, c.maxAge)) {
		return false
	}
	if c.scope != nil && !c.scope.Admits(p, c.now) {
		return false
	}
	for _, f := range c.pending {
		if !f.admits(c, p) {
			return false
		}
	}
	return true
}

// live is the starting rule: Slot.Usable under the chain's max_age
// (heard within it or a patience, or answering through a cluster-wide
// silence). (passes also drops a peer this node failed to reach since its
// last announcement.)
func (c *Candidates) live(s *Slot, p *Peer) bool {
	return p.takesRequests() && s.fresh(p, c.now, c.maxAge)
}

// shuffle puts the list in uniformly random order.
func (c *Candidates) shuffle() {
	if !c.done {
		c.shuffled = true // what came before does not matter to a uniform order
		return
	}
	for i := len(c.list) - 1; i > 0; i-- {
		j := c.rnd(i + 1)
		c.list[i], c.list[j] = c.list[j], c.list[i]
	}
	c.keyed = false // a pending ordering no longer matters
}

// shuffleByPower puts the list in a random order in which each candidate
// comes next with probability in proportion to its power (a weighted
// sample without replacement).
func (c *Candidates) shuffleByPower() {
	if !c.done {
		c.shuffled, c.weighted = true, true
		return
	}
	for i := range c.list {
		c.list[i].key = c.weightedKey(c.power(&c.list[i]))
	}
	c.sortByKey()
}

// uniform is a random float64 in (0, 1], the one uniform draw that random
// choices with a probability use.
func (c *Candidates) uniform() float64 {
	return (float64(c.rnd(1<<30)) + 1) / (1 << 30)
}

// peerUniform is a random float64 in (0, 1] for the named peer, the same
// every time within one run of the chain: a filter that draws for a peer
// (slowStart) then decides once per peer, whether the list draws its
// members one by one (a window after a shuffle) or evaluates them all.
func (c *Candidates) peerUniform(name string) float64 {
	if c.salt == 0 {
		c.salt = uint64(c.rnd(1<<62)) | 1
	}
	h := c.salt
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 0x100000001b3 // FNV-1a over the salt
	}
	h ^= h >> 33 // splitmix64's finaliser spreads the bits
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return (float64(h>>34) + 1) / (1 << 30)
}

// weightedKey is a random sort key for a weighted shuffle
// (Efraimidis-Spirakis): ordered by it, smallest first, a candidate of
// weight w comes next with probability in proportion to w.
func (c *Candidates) weightedKey(w float64) float64 { return -math.Log(c.uniform()) / w }

// truncate keeps at most the first n candidates.
func (c *Candidates) truncate(n int) {
	if c.done {
		c.orderHead(n)
		if len(c.list) > n {
			c.list = c.list[:n]
		}
		return
	}
	c.materialize(n)
}

// materialize evaluates the pending filters and shuffle into the list,
// keeping at most limit candidates (limit < 0: all of them).
func (c *Candidates) materialize(limit int) {
	if c.done {
		return
	}
	c.list = c.list[:0]
	if limit < 0 || limit > len(c.view) {
		limit = len(c.view)
	}
	if c.shuffled && limit < len(c.view) && c.sample(limit) {
		c.finish()
		return
	}
	c.list = c.list[:0]
	for _, s := range c.view {
		if p := s.cur.Load(); c.passes(s, p) {
			c.list = append(c.list, Candidate{Peer: p, slot: s})
		}
	}
	c.done = true
	switch {
	case c.shuffled && c.weighted:
		c.shuffleByPower()
	case c.shuffled:
		c.shuffle()
	}
	if len(c.list) > limit {
		c.list = c.list[:limit]
	}
	c.finish()
}

func (c *Candidates) finish() {
	c.done, c.shuffled, c.weighted = true, false, false
	c.pending, c.scope = c.pending[:0], nil
}

// sample draws k distinct candidates at random from those that pass,
// uniformly or, after byPower, in proportion to their power, by rejection:
// O(k) draws while most peers pass and powers are alike. It gives up
// (false) after too many rejections, when a full pass is cheaper.
func (c *Candidates) sample(k int) bool {
	n := len(c.view)
	budget := 4*k + 8
	bound := 0.0
	if c.weighted {
		bound = c.table.powerBound()
		budget *= 2
	}
	drawn := c.drawnBits(n)
	for len(c.list) < k {
		if budget == 0 {
			c.list = c.list[:0]
			return false
		}
		budget--
		i := c.rnd(n)
		if drawn[i/64]&(1<<(i%64)) != 0 {
			continue
		}
		s := c.view[i]
		p := s.cur.Load()
		if !c.passes(s, p) {
			continue
		}
		x := Candidate{Peer: p, slot: s}
		if c.weighted && c.uniform()*bound > c.power(&x) {
			continue
		}
		drawn[i/64] |= 1 << (i % 64)
		c.list = append(c.list, x)
	}
	return true
}

// drawnBits returns a cleared bitmap of n bits.
func (c *Candidates) drawnBits(n int) []uint64 {
	words := (n + 63) / 64
	if cap(c.drawn) < words {
		c.drawn = make([]uint64, words)
	}
	c.drawn = c.drawn[:words]
	clear(c.drawn)
	return c.drawn
}

// All evaluates the list and returns it; functions may reorder it in place.
func (c *Candidates) All() []Candidate {
	c.materialize(-1)
	c.orderAll()
	return c.list
}

// Filter keeps the candidates for which keep returns true, in order.
func (c *Candidates) Filter(keep func(*Candidate) bool) {
	c.materialize(-1)
	c.orderAll()
	c.list = slices.DeleteFunc(c.list, func(x Candidate) bool { return !keep(&x) })
}

// Truncate keeps at most the first n candidates.
func (c *Candidates) Truncate(n int) { c.truncate(max(n, 0)) }

// Sort orders the candidates by ascending key; ties keep their order (so a
// shuffle before a sort breaks ties at random).
func (c *Candidates) Sort(key func(*Candidate) float64) {
	c.All() // an earlier ordering decides the ties
	for i := range c.list {
		c.list[i].key = key(&c.list[i])
	}
	c.sortByKey()
}

// sortByKey orders the list by the precomputed keys, ascending, ties in
// their order (a stable sort), as far as it is read: the work is done by
// orderHead or orderAll when the list is read.
func (c *Candidates) sortByKey() { c.keyed, c.ordered = true, 0 }

// orderHead puts the first k candidates in key order, if an ordering is
// pending: by picking the smallest of the rest k times for a short head
// (a caller that wants the winner, or the few that reverse_proxy may try,
// need not sort the whole list), else by sorting.
func (c *Candidates) orderHead(k int) {
	if !c.keyed {
		return
	}
	if k > headPicks {
		c.orderAll()
		return
	}
	k = min(k, len(c.list))
	for ; c.ordered < k; c.ordered++ {
		i, m := c.ordered, c.ordered
		for j := i + 1; j < len(c.list); j++ {
			if c.list[j].key < c.list[m].key { // the first of equals: stable
				m = j
			}
		}
		if m != i {
			x := c.list[m]
			copy(c.list[i+1:m+1], c.list[i:m]) // the rest keep their order
			c.list[i] = x
		}
	}
	c.keyed = c.ordered < len(c.list)-1
}

// headPicks is the longest head that orderHead picks rather than sorts.
const headPicks = 4

// orderAll puts the whole list in key order, if an ordering is pending:
// a stable sort of what orderHead has not placed yet (insertion sort for
// the short lists that windows and samples leave, the library's
// otherwise).
func (c *Candidates) orderAll() {
	if !c.keyed {
		return
	}
	c.keyed = false
	rest := c.list[min(c.ordered, len(c.list)):]
	if len(rest) <= 24 {
		for i := 1; i < len(rest); i++ {
			for j := i; j > 0 && rest[j].key < rest[j-1].key; j-- {
				rest[j], rest[j-1] = rest[j-1], rest[j]
			}
		}
		return
	}
	slices.SortStableFunc(rest, func(a, b Candidate) int { return cmp.Compare(a.key, b.key) })
}

// First is the winner: the first candidate, or nil to serve locally.
func (c *Candidates) First() *Candidate {
	if h := c.Head(1); len(h) > 0 {
		return &h[0]
	}
	return nil
}

// Head returns the first k candidates (fewer if the list is shorter; none
// after off). A list still lazy is evaluated only that far: after a bare
// byRandom, k random draws instead of a shuffle of every peer.
func (c *Candidates) Head(k int) []Candidate {
	if c.decision.off {
		return nil
	}
	c.materialize(k)
	c.orderHead(k)
	return c.list[:min(k, len(c.list))]
}

// log2Floor is floor(log2(n)) for n >= 1.
func log2Floor(n int) int { return bits.Len(uint(n)) - 1 }

// Names returns the names of the candidates left, in order, or nil when
// the request would be served locally.
func (c *Candidates) Names() []string {
	all := c.Head(len(c.view))
	if len(all) == 0 {
		return nil
	}
	out := make([]string, len(all))
	for i, x := range all {
		out[i] = x.Peer.Name
	}
	return out
}

// Cookie is the name of the cookie that byCookie keeps clients with, or
// "" when it did not run; the winner is to be set in it.
func (c *Candidates) Cookie() string { return c.decision.cookie }

// RedirectTarget is where HTTPRedirectTo* sends the client when a
// candidate wins.
type RedirectTarget struct {
	// Host is host[:port]: the winner's advertised address, or a name.
	Host string
	// Named is set by HTTPRedirectToName: the name is the site's own, so
	// the client keeps its scheme; an advertised address is reached as
	// peers are.
	Named bool
}

// Redirect returns where HTTPRedirectTo* sends the client when x wins, and
// false when no redirect function ran.
func (c *Candidates) Redirect(x *Candidate) (RedirectTarget, bool) {
	if c.decision.redirect == nil {
		return RedirectTarget{}, false
	}
	_, named := c.decision.redirect.(*HTTPRedirectToName)
	return RedirectTarget{Host: c.decision.redirect.redirectHost(c, x), Named: named}, true
}
