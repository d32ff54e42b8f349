package backhand

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
	"github.com/caddy-backhand/backhand/internal/wire"
)

// requestState is the hand-over between the backhand modules that one
// request passes through. It lives in the request's variables. Its steps,
// in the order a request takes them:
//
//   - plan (the backhand directive): the chain's best candidates, which
//     the source offers on the first attempt instead of running the chain
//     again;
//   - offer (`dynamic backhand`, on every attempt): the upstreams handed to
//     reverse_proxy, each with the peer behind it, so the policy knows the
//     pool for its own by identity;
//   - choose (`lb_policy backhand`): the peer that serves this attempt,
//     counted in flight there from now on; a later choice means that the
//     previous one failed;
//   - finish (whoever ends the request): the count drops and the response
//     time is learnt, exactly once.
//
// Two jobs are claimed once per request, by the first module that gets
// there: counting the request into this node's own figures (backhand_track
// or the directive), and recording its outcome (the directive, or the
// policy when it balances alone).
type requestState struct {
	planned  [maxKeep]candidacy.Candidate
	nPlanned int

	offered  [maxKeep]offering
	nOffered int

	tried  [maxTries]*candidacy.Slot
	nTried int

	// hop is the marker the directive asks every attempt to carry (its
	// receiver and time are set per attempt); none without the directive
	// (From empty: a node always has a name).
	hop wire.Hop

	// mu guards the fields below it that finish writes: when the
	// context ends the request, finish runs on another goroutine.
	mu       sync.Mutex
	chosen   *candidacy.Slot
	chosenAt time.Time
	inFlight bool        // chosen's in-flight count includes this request
	ending   ending      // who finishes the request
	stats    *localStats // counts a forward that the context finishes

	counter  role          // who counts the request into this node's figures
	busy     *atomic.Int64 // the served-here count the request is in, if any
	recorder role          // who records the request's outcome
}

// offering is one upstream offered to reverse_proxy and the peer behind it.
type offering struct {
	up   *reverseproxy.Upstream
	slot *candidacy.Slot
}

// role names a backhand module that takes on a job for a request.
type role uint8

const (
	roleNone role = iota
	roleTrack
	roleDirective
	rolePolicy
)

// ending says who finishes a request's count in flight.
type ending uint8

const (
	endUnset     ending = iota
	endByHandler        // backhand_track or the directive, when the rest of the route returns
	endByContext        // the end of the request's context
	endDone             // finished: a later choice is not counted
)

// maxTries bounds the peers remembered as tried; beyond that, retries may
// pick a peer again.
const maxTries = 8

const stateVar = "backhand.state"

// stateOf returns the request's state, or nil when the request carries no
// variables (unit tests, or a request that did not come through Caddy's
// HTTP server). Every method is safe on a nil state.
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

// claimCounting gives the job of counting the request into this node's
// figures to r, unless another module has it, and returns who has it. A
// nil state (no variables to share) leaves every module to count alone.
func (st *requestState) claimCounting(r role) role {
	if st == nil {
		return r
	}
	if st.counter == roleNone {
		st.counter = r
	}
	return st.counter
}

// countedHere reports whether a module already counts the request as
// served by this node (so the chain must not weigh it against this node).
func (st *requestState) countedHere() bool {
	return st != nil && st.counter != roleNone
}

// claimRecording gives the job of recording the request's outcome to r if
// nobody has it yet, and reports whether it did: an outcome is recorded
// once per request, not once per attempt.
func (st *requestState) claimRecording(r role) bool {
	if st == nil {
		return true
	}
	if st.recorder != roleNone {
		return false
	}
	st.recorder = r
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

// plan keeps the chain's best candidates for the source's first attempt.
func (st *requestState) plan(c []candidacy.Candidate) {
	st.nPlanned = copy(st.planned[:], c)
}

// takePlan returns the plan once (nil if there is none); later attempts
// run the chain again.
func (st *requestState) takePlan() []candidacy.Candidate {
	if st == nil || st.nPlanned == 0 {
		return nil
	}
	p := st.planned[:st.nPlanned]
	st.nPlanned = 0
	return p
}

// offer records the upstreams handed to reverse_proxy on this attempt and
// the candidates behind them.
func (st *requestState) offer(c []candidacy.Candidate, ups []*reverseproxy.Upstream) {
	if st == nil {
		return
	}
	st.nOffered = min(len(ups), len(c), maxKeep)
	for i := range st.nOffered {
		st.offered[i] = offering{up: ups[i], slot: c[i].Slot()}
	}
}

// offerFor returns what this attempt offered, each upstream with the peer
// behind it, if pool is that offer (the same upstream values, not only the
// same addresses: the policy may also see pools from other sources);
// else nil.
func (st *requestState) offerFor(pool reverseproxy.UpstreamPool) []offering {
	if st == nil || len(pool) == 0 || len(pool) != st.nOffered {
		return nil
	}
	offer := st.offered[:st.nOffered]
	for i, o := range offer {
		if pool[i] != o.up {
			return nil
		}
	}
	return offer
}

// wasTried reports whether s was already tried by this request.
func (st *requestState) wasTried(s *candidacy.Slot) bool {
	if st == nil {
		return false
	}
	for _, t := range st.tried[:st.nTried] {
		if t == s {
			return true
		}
	}
	return false
}

// triedSlots are the peers this request already tried, which are no
// candidates again (nil on a nil state).
func (st *requestState) triedSlots() []*candidacy.Slot {
	if st == nil {
		return nil
	}
	return st.tried[:st.nTried]
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
// attempts): it is no candidate for a while (Slot.Failed), and its count
// drops without a latency sample, since a fast failure is no sign of
// speed. When no handler finishes the request, the end of ctx does.
func (st *requestState) choose(ctx context.Context, s *candidacy.Slot, now time.Time, stats *localStats) {
	st.nOffered = 0
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.chosen != nil {
		st.chosen.Failed(now)
		if st.inFlight {
			st.chosen.End(0, now, false)
		}
	}
	st.chosen, st.chosenAt, st.inFlight = s, now, st.ending != endDone
	if st.inFlight {
		s.Begin()
	}
	if st.ending == endUnset {
		st.ending, st.stats = endByContext, stats
		context.AfterFunc(ctx, func() { st.end(time.Now(), false, answered(ctx)) })
	}
	if !st.wasTried(s) && st.nTried < maxTries {
		st.tried[st.nTried] = s
		st.nTried++
	}
}

// finish ends the request: the chosen peer's in-flight count drops and,
// if it answered, its response times take the sample (not for this node
// itself, reached through its own site: it learns its speed from the
// requests it serves, without the hop). A peer that failed (the route
// ended in an error, or broke off) takes no sample and is no candidate
// for a while, as a failed attempt that Caddy retried. Later
// calls do nothing.
func (st *requestState) finish(now time.Time, failed bool) { st.end(now, failed, !failed) }

// answered reports whether reverse_proxy had a response for the request
// whose context is ctx: it sets the upstream latency once response
// headers come. When the context ends the request (the policy balancing
// alone), a last attempt that failed (a response header timeout, a
// connection broken off) is known only by its absence, and its time is
// no sample of the peer's speed: after a hang bounded by a 2 s
// response_header_timeout, the balancer ranked the node by its 2 s
// timeouts and sent it nothing for the 10 s after it recovered. Without
// a replacer (no Caddy server), the request counts as answered.
func answered(ctx context.Context) bool {
	repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return true
	}
	_, ok = repl.Get("http.reverse_proxy.upstream.latency")
	return ok
}

// end is finish, with whether the time counts as a sample of the
// chosen peer's speed (not for this node itself, never for a failure).
func (st *requestState) end(now time.Time, failed, sample bool) {
	if st == nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.inFlight {
		self := st.chosen.Peer().Self
		if failed {
			st.chosen.Failed(now)
		}
		st.chosen.End(now.Sub(st.chosenAt), now, !self && !failed && sample)
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
// request, and ok when a backhand policy chose at all (a request served
// here after every peer failed is not forwarded).
func (st *requestState) forwarded() (fwd, ok bool) {
	if st == nil {
		return false, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.chosen == nil {
		return false, st.nTried > 0
	}
	return !st.chosen.Peer().Self, true
}
