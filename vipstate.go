package backhand

// The vip option's running side: the process-level state that holds the
// addresses across reloads, and the loop that evaluates the assignment
// and adds and removes them.

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/caddy-backhand/backhand/internal/vip"
)

// vipStates is the process-level state of the vip option, per cluster:
// the addresses this process has put on the interface outlive a config,
// since a reload starts the new app before it stops the old one, and
// must neither remove nor re-add them.
var vipStates = caddy.NewUsagePool()

// vipState owns this process's virtual addresses: which it holds, the
// loop that adds and removes them, and what the status page shows.
type vipState struct {
	mu          sync.Mutex
	run         *vipRun                 // the running config; nil before the first start
	held        map[netip.Addr]heldAddr // what this process put on the interface
	listenUntil time.Time               // no acquisitions before: the table is not complete yet
	prev        []string                // each address's live holders at the previous evaluation, joined
	stopped     bool                    // released for good: an orderly stop
	loopCancel  context.CancelFunc
	loopDone    chan struct{}

	tag      atomic.Pointer[string] // the holdings tag to announce; nil while not taking part
	disabled atomic.Pointer[string] // why the option is refused (a missing capability)
	snapshot atomic.Pointer[vipSnapshot]
	acquired atomic.Uint64
	released atomic.Uint64

	pokes      chan struct{}   // a peer announced holdings: evaluate now
	errLog     *rate.Limiter   // failed adds and removals, retried every evaluation
	mismatched map[string]bool // peers warned of for announcing another set (under mu)
}

// vipRun is one config's side of the state.
type vipRun struct {
	app  *App
	cfg  *VirtualAddresses
	link *vip.Link
}

// heldAddr is an address on the interface and where it is.
type heldAddr struct {
	prefix netip.Prefix
	link   *vip.Link
}

// vipSnapshot is the last evaluation, for the status page and metrics.
type vipSnapshot struct {
	set     vip.Set
	owners  []string
	holders [][]string // live holders by address, this node included
}

func newVIPState() *vipState {
	return &vipState{
		held:       map[netip.Addr]heldAddr{},
		pokes:      make(chan struct{}, 1),
		errLog:     rate.NewLimiter(rate.Every(10*time.Second), 3),
		mismatched: map[string]bool{},
	}
}

// use makes r the running config. The first time in this process, the
// addresses of the set found on the interface are left over from a
// process that did not stop cleanly: they are removed, and the node only
// listens for max_age plus one interval, until its table holds every live
// peer: it acquires nothing and announces no holdings tag, so the peers
// do not count it as a holder yet. On a reload, addresses that the new config no longer lists,
// or lists on another interface, are removed; the others stay.
func (st *vipState) use(r *vipRun) {
	st.mu.Lock()
	defer st.mu.Unlock()
	log := r.app.logger
	if st.run == nil {
		if present, err := r.link.Present(r.cfg.set); err != nil {
			log.Warn("vip: reading the interface's addresses", zap.Error(err))
		} else {
			for i, p := range r.cfg.set {
				if present.Has(i) {
					st.remove(r.app, heldAddr{p, r.link}, "left over from a process that did not stop cleanly")
				}
			}
		}
		interval := time.Duration(r.app.Interval)
		st.listenUntil = time.Now().Add(time.Duration(r.app.MaxAge) + interval)
	}
	for addr, h := range st.held {
		i := slices.IndexFunc(r.cfg.set, func(p netip.Prefix) bool { return p.Addr() == addr })
		if i < 0 || r.cfg.set[i] != h.prefix || h.link.Name() != r.link.Name() {
			st.remove(r.app, h, "no longer configured so (reload)")
			continue
		}
		st.held[addr] = heldAddr{h.prefix, r.link} // the same interface, looked up again
	}
	st.run = r
	st.stopped = false
	st.publishTag()
	if st.loopCancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		st.loopCancel, st.loopDone = cancel, make(chan struct{})
		go st.loop(ctx)
	}
	log.Info("vip: managing virtual addresses",
		zap.String("interface", r.link.Name()),
		zap.Stringers("addresses", r.cfg.set),
		zap.String("holders_tag", r.cfg.HoldersTag),
		zap.Bool("sticky", r.cfg.Sticky))
}

// poke asks the loop to evaluate now: a peer's announcement with
// holdings arrived, so an address it released can be taken at once
// instead of within a quarter interval.
func (st *vipState) poke() {
	select {
	case st.pokes <- struct{}{}:
	default: // one is pending already
	}
}

// loop evaluates four times per interval, so that a stale holder is
// replaced within a quarter interval of going stale, and at once after
// each announcement with holdings (poke).
func (st *vipState) loop(ctx context.Context) {
	defer close(st.loopDone)
	for {
		st.mu.Lock()
		period := time.Second / 4
		if st.run != nil {
			period = max(time.Duration(st.run.app.Interval)/4, time.Millisecond)
		}
		st.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		case <-st.pokes:
		}
		st.evaluate(time.Now())
	}
}

// vipView is what one evaluation reads from the peer table.
type vipView struct {
	members []vip.Member
	others  vip.Others // what live peers announce holding
	holders [][]string // live holders by address, self included
}

// view reads the table: live peers that take part (they announce a
// holdings tag of the same set), which of them may hold addresses (not
// draining, carrying the holders tag), and what each holds.
func (st *vipState) view(r *vipRun, held vip.Holding, now time.Time) vipView {
	set, app := r.cfg.set, r.app
	maxAge := time.Duration(app.MaxAge)
	v := vipView{holders: make([][]string, len(set))}
	holderTags := []string{}
	if r.cfg.HoldersTag != "" {
		holderTags = []string{r.cfg.HoldersTag}
	}
	for _, s := range app.node.table.Peers() {
		p := s.Peer()
		if p.Self || !p.Fresh(now, maxAge) {
			continue
		}
		h, ok := set.ParseTag(p.Tags)
		if !ok {
			st.warnMismatch(app, p.Name, p.Tags)
			continue
		}
		delete(st.mismatched, p.Name)
		if p.Figures.Draining {
			v.others.Draining |= h
		} else {
			v.others.Active |= h
		}
		v.addHolders(p.Name, h)
		if p.Usable(now, maxAge) && p.HasTags(holderTags) {
			v.members = append(v.members, vip.Member{Name: p.Name, Holds: h})
		}
	}
	v.addHolders(app.Name, held)
	draining := app.Drain || app.node.draining.Load()
	if !draining && (r.cfg.HoldersTag == "" || slices.Contains(app.Tags, r.cfg.HoldersTag)) {
		v.members = append(v.members, vip.Member{Name: app.Name, Holds: held})
	}
	return v
}

// warnMismatch warns, once per peer, of a live peer that runs the vip
// option with another set of addresses: it takes no part in this node's
// assignment, so both may hold an address.
func (st *vipState) warnMismatch(app *App, name string, tags []string) {
	if st.mismatched[name] || !slices.ContainsFunc(tags, vip.IsTag) {
		return
	}
	st.mismatched[name] = true
	app.logger.Warn("vip: a peer announces another set of virtual addresses; every node must list the same set",
		zap.String("peer", name), zap.Stringers("addresses", app.VIP.set))
}

func (v *vipView) addHolders(name string, h vip.Holding) {
	for i := range v.holders {
		if h.Has(i) {
			v.holders[i] = append(v.holders[i], name)
		}
	}
}

// holding is what this process holds of set.
func (st *vipState) holding(set vip.Set) vip.Holding {
	var h vip.Holding
	for i, p := range set {
		if _, ok := st.held[p.Addr()]; ok {
			h = h.With(i)
		}
	}
	return h
}

// evaluate runs the assignment and the handover rule once, and adds and
// removes addresses accordingly.
func (st *vipState) evaluate(now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.run
	if r == nil || st.stopped {
		return
	}
	set, self := r.cfg.set, r.app.Name
	listening := now.Before(st.listenUntil)
	if !listening && st.tag.Load() == nil {
		// Done listening: take part from the next announcement on.
		st.publishTag()
		kickAnnouncer(r.app.node)
	}
	st.dropVanished(r)
	held := st.holding(set)
	v := st.view(r, held, now)
	if listening {
		// Not a member yet, as the peers see it (no holdings tag).
		v.members = slices.DeleteFunc(v.members, func(m vip.Member) bool { return m.Name == self })
	}
	owners := vip.Assign(set, v.members, r.cfg.Sticky)
	draining := r.app.Drain || r.app.node.draining.Load()
	acquire, release := vip.Plan(owners, self, held, v.others, draining)
	if listening {
		acquire = 0
	}
	changed := false
	for i, p := range set {
		switch {
		case release.Has(i):
			changed = st.remove(r.app, heldAddr{p, r.link}, st.releaseReason(r, owners[i])) || changed
		case acquire.Has(i):
			changed = st.add(r, p, st.acquireReason(r, i, v, now)) || changed
		}
	}
	st.prev = make([]string, len(set))
	for i, h := range v.holders {
		st.prev[i] = strings.Join(slices.DeleteFunc(slices.Clone(h), func(n string) bool { return n == self }), ",")
	}
	if changed {
		held = st.holding(set)
		v.holders = st.view(r, held, now).holders
		st.publishTag()
		kickAnnouncer(r.app.node)
	}
	st.snapshot.Store(&vipSnapshot{set: set, owners: owners, holders: v.holders})
}

// dropVanished forgets held addresses that are no longer on the
// interface (an operator removed them, or the interface went down, which
// flushes IPv6 addresses): the plan then adds them again if this node
// still owns them, with a new gratuitous ARP or advertisement.
func (st *vipState) dropVanished(r *vipRun) {
	if len(st.held) == 0 {
		return
	}
	present, err := r.link.Present(r.cfg.set)
	if err != nil {
		return
	}
	for i, p := range r.cfg.set {
		if h, ok := st.held[p.Addr()]; ok && h.link.Name() == r.link.Name() && !present.Has(i) {
			delete(st.held, p.Addr())
			st.released.Add(1)
			r.app.logger.Warn("vip: an address this node held vanished from the interface", zap.Stringer("address", p), zap.String("interface", r.link.Name()))
		}
	}
}

// releaseReason says why this node lets an address go to owner.
func (st *vipState) releaseReason(r *vipRun, owner string) string {
	switch {
	case r.app.Drain || r.app.node.draining.Load():
		return "draining: handing it over to " + owner
	case r.cfg.HoldersTag != "" && !slices.Contains(r.app.Tags, r.cfg.HoldersTag):
		return "this node lacks the holders tag: handing it over to " + owner
	}
	return "rebalancing: " + owner + " is its owner now"
}

// acquireReason says why this node takes address i: it had no live
// holder, or its previous holder went stale or handed it over.
func (st *vipState) acquireReason(r *vipRun, i int, v vipView, now time.Time) string {
	if i >= len(st.prev) || st.prev[i] == "" {
		return "its owner now, and no live node holds it"
	}
	var stale, handed []string
	for _, name := range strings.Split(st.prev[i], ",") {
		if s := r.app.node.table.Lookup(name); s == nil || !s.Peer().Fresh(now, time.Duration(r.app.MaxAge)) {
			stale = append(stale, name)
		} else {
			handed = append(handed, name)
		}
	}
	if len(stale) > 0 {
		return "its owner now: previous holder " + strings.Join(stale, ",") + " is stale (silent for more than max_age)"
	}
	return "its owner now: previous holder " + strings.Join(handed, ",") + " released it"
}

// add puts p on the interface and tells the link; it reports whether the
// address was added.
func (st *vipState) add(r *vipRun, p netip.Prefix, reason string) bool {
	log := r.app.logger
	if err := r.link.Add(p); err != nil {
		if st.errLog.Allow() {
			log.Error("vip: acquiring an address failed; retrying every evaluation", zap.Stringer("address", p), zap.String("reason", reason), zap.Error(err))
		}
		return false
	}
	st.held[p.Addr()] = heldAddr{p, r.link}
	st.acquired.Add(1)
	log.Info("vip: acquired", zap.Stringer("address", p), zap.String("interface", r.link.Name()), zap.String("reason", reason))
	if err := r.link.Announce(p); err != nil {
		log.Warn("vip: announcing the move to the link failed; clients learn it when their caches expire", zap.Stringer("address", p), zap.Error(err))
	}
	return true
}

// remove takes an address off its interface; it reports whether this
// process held it.
func (st *vipState) remove(app *App, h heldAddr, reason string) bool {
	log := app.logger
	if err := h.link.Remove(h.prefix); err != nil {
		if st.errLog.Allow() {
			log.Error("vip: releasing an address failed; retrying every evaluation", zap.Stringer("address", h.prefix), zap.String("reason", reason), zap.Error(err))
		}
		return false
	}
	_, had := st.held[h.prefix.Addr()]
	delete(st.held, h.prefix.Addr())
	if had {
		st.released.Add(1)
	}
	log.Info("vip: released", zap.Stringer("address", h.prefix), zap.String("interface", h.link.Name()), zap.String("reason", reason))
	return had
}

// publishTag sets the holdings tag that the next announcement carries:
// none before the first config runs, and none while the node listens
// after its start, so that the peers do not count on it (a node that
// restarts quickly would otherwise leave its own addresses unserved
// until it is done listening: the peers would wait for it to take them).
func (st *vipState) publishTag() {
	if st.run == nil || time.Now().Before(st.listenUntil) {
		st.tag.Store(nil)
		return
	}
	t := st.run.cfg.set.Tag(st.holding(st.run.cfg.set))
	st.tag.Store(&t)
}

// releaseAll removes every address this process holds, stops acquiring
// and stops announcing the holdings tag: an orderly stop. It reports
// whether anything was released.
func (st *vipState) releaseAll(app *App, reason string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.stopped = true
	released := false
	for _, h := range st.held {
		released = st.remove(app, h, reason) || released
	}
	// Announce no holdings tag from now on: the peers then count this
	// node out at once instead of waiting for it to go stale.
	st.tag.Store(nil)
	return released
}

// Destruct implements caddy.Destructor: the last config holding the
// state is gone, so the process stops or the option was removed; the
// addresses go.
func (st *vipState) Destruct() error {
	if st.loopCancel != nil {
		st.loopCancel()
		<-st.loopDone
	}
	st.mu.Lock()
	r := st.run
	st.mu.Unlock()
	if r != nil {
		st.releaseAll(r.app, "the vip option is no longer configured, or the process stops")
	}
	return nil
}

// Interface guards
var _ caddy.Destructor = (*vipState)(nil)
