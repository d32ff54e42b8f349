package backhand

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// requestState follows one request through the backhand modules: which
// candidates `dynamic backhand` offered on this attempt, which peers were
// tried, and which one is serving it now. It lives in the request's
// variables, so the source, the policy and the handlers share it.
//
// A chosen peer counts the request in flight from the moment it is chosen
// until finish, exactly once whoever is on the route: backhand_track and
// the backhand directive say they will finish it (handlerEnds) before the
// proxy runs; without them, the policy has the end of the request's
// context finish it.
type requestState struct {
	offered  [maxKeep]*peerSlot
	nOffered int
	dial0    string // Dial of the first offered upstream, to recognise the pool

	tried  [maxTries]*peerSlot
	nTried int

	// planned is the ordered candidates that the backhand directive's
	// chain left, for `dynamic backhand` to offer on the first attempt.
	planned  [maxKeep]Candidate
	nPlanned int

	// mu guards the fields below it that finish writes: when the
	// context ends the request, finish runs on another goroutine.
	mu       sync.Mutex
	chosen   *peerSlot
	chosenAt time.Time
	inFlight bool        // chosen's in-flight count includes this request
	ending   ending      // who finishes the request
	stats    *localStats // counts a forward that the context finishes

	// counted is set by the first handler that counts the request into
	// this node's figures, so that backhand_track and the backhand
	// directive on one route do not count it twice.
	counted bool
	// busy is the counter of requests served here that this request is
	// in, if any: the directive takes it out while a peer serves it.
	busy *atomic.Int64
	// decided is set once the request's outcome is counted: the backhand
	// directive counts its own; reverse_proxy's policy counts the first
	// choice of a request it balances alone.
	decided bool
}

// ending says who finishes a request's count in flight.
type ending uint8

const (
	endUnset     ending = iota
	endByHandler        // backhand_track or the directive, when the rest of the route returns
	endByContext        // the end of the request's context
	endDone             // finished: a later choice is not counted
)

// count claims the counting of the request for the caller: true if no
// handler has counted it yet. A nil state (a request from outside Caddy's
// server) is always counted.
func (st *requestState) count() bool {
	if st == nil {
		return true
	}
	if st.counted {
		return false
	}
	st.counted = true
	return true
}

// holdBusy counts the request as served here in busy until releaseBusy.
func (st *requestState) holdBusy(busy *atomic.Int64) {
	if st.busy == nil {
		busy.Add(1)
		st.busy = busy
	}
}

// releaseBusy takes the request out of the busy count it is in.
func (st *requestState) releaseBusy() {
	if st.busy != nil {
		st.busy.Add(-1)
		st.busy = nil
	}
}

// maxTries bounds the peers remembered as tried; beyond that, retries may
// pick a peer again.
const maxTries = 8

const stateVar = "backhand.state"

// stateOf returns the request's state, or nil when the request carries no
// variables (unit tests, or a request that did not come through Caddy's
// HTTP server).
func stateOf(r *http.Request) *requestState {
	if r == nil {
		return nil
	}
	st, _ := caddyhttp.GetVar(r.Context(), stateVar).(*requestState)
	return st
}

// ensureState returns the request's state, creating it if the request has
// variables but no state yet.
func ensureState(r *http.Request) *requestState {
	if st := stateOf(r); st != nil {
		return st
	}
	if r == nil {
		return nil
	}
	if _, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); !ok {
		return nil
	}
	st := new(requestState)
	caddyhttp.SetVar(r.Context(), stateVar, st)
	return st
}

// offer records the candidates handed to reverse_proxy on this attempt.
func (st *requestState) offer(c []Candidate, ups []*reverseproxy.Upstream) {
	st.nOffered = 0
	for i := range c {
		if i == maxKeep {
			break
		}
		st.offered[i] = c[i].slot
		st.nOffered++
	}
	st.dial0 = ""
	if len(ups) > 0 {
		st.dial0 = ups[0].Dial
	}
}

// plan keeps the chain's best candidates for the source's first attempt.
func (st *requestState) plan(c []Candidate) {
	st.nPlanned = copy(st.planned[:], c)
}

// takePlan returns the plan once; later attempts run the chain again.
func (st *requestState) takePlan() []Candidate {
	p := st.planned[:st.nPlanned]
	st.nPlanned = 0
	return p
}

// offeredFor reports whether pool is what this state offered on this
// attempt (the policy may also see pools from other sources).
func (st *requestState) offeredFor(pool reverseproxy.UpstreamPool) bool {
	return st.nOffered > 0 && len(pool) == st.nOffered && pool[0].Dial == st.dial0
}

// wasTried reports whether s was already tried by this request.
func (st *requestState) wasTried(s *peerSlot) bool {
	for _, t := range st.tried[:st.nTried] {
		if t == s {
			return true
		}
	}
	return false
}

// handlerEnds tells the policy that the calling handler will finish the
// request when the rest of its route returns.
func (st *requestState) handlerEnds() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ending == endUnset {
		st.ending = endByHandler
	}
}

// choose records that s serves the request from now on, counting it in
// flight there. A previous choice failed (Caddy retries only failed
// attempts): it is no candidate until it announces again, and its count
// drops without a latency sample, since a fast failure is no sign of
// speed. When no handler finishes the request, the end of ctx does.
func (st *requestState) choose(ctx context.Context, s *peerSlot, now time.Time, stats *localStats) {
	st.nOffered = 0
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.chosen != nil {
		st.chosen.local.failed(now)
		if st.inFlight {
			st.chosen.local.inflight.Add(-1)
		}
	}
	st.chosen, st.chosenAt, st.inFlight = s, now, st.ending != endDone
	if st.inFlight {
		s.local.begin()
	}
	if st.ending == endUnset {
		st.ending, st.stats = endByContext, stats
		context.AfterFunc(ctx, func() { st.finish(time.Now()) })
	}
	if !st.wasTried(s) && st.nTried < maxTries {
		st.tried[st.nTried] = s
		st.nTried++
	}
}

// finish ends the request: the chosen peer's in-flight count drops and its
// response times take the sample (not for this node itself, reached
// through its own site: it learns its speed from the requests it serves,
// without the hop). Later calls do nothing.
func (st *requestState) finish(now time.Time) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.inFlight {
		self := st.chosen.cur.Load().Self
		st.chosen.local.end(now.Sub(st.chosenAt), now, !self)
		st.inFlight = false
		if st.ending == endByContext && !self {
			st.stats.forwarded.Add(1)
		}
	}
	st.ending = endDone
}

// servedHere records that this node serves the request after all (every
// peer tried failed), so that it does not count as forwarded.
func (st *requestState) servedHere() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.chosen = nil
}

// forwarded reports whether a peer other than this node serves the
// request, and ok when a backhand policy chose at all.
func (st *requestState) forwarded() (fwd, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.chosen == nil {
		return false, false
	}
	return !st.chosen.cur.Load().Self, true
}
