package backhand

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// requestState follows one request through the backhand modules: which
// candidates `dynamic backhand` offered on this attempt, which peers were
// tried, and which one is serving it now. It lives in the request's
// variables, so the source, the policy and the handler that counts the
// request share it without locks (one request is one goroutine at a time).
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

	chosen   *peerSlot
	chosenAt time.Time
	// tracked is set by a handler that ends the request (backhand_track,
	// the backhand directive): only then may the chosen peer's in-flight
	// count go up, since someone will bring it down again.
	tracked bool
	// counted is set by the first handler that counts the request into
	// this node's figures, so that backhand_track and the backhand
	// directive on one route do not count it twice.
	counted bool
	// decided is set once the request's outcome is counted: the backhand
	// directive counts its own; reverse_proxy's policy counts the first
	// choice of a request it balances alone.
	decided bool
}

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

// choose records that s serves the request from now on. A previous choice
// failed (Caddy retries only failed attempts): it is no candidate until it
// announces again, and its in-flight count drops, without a latency
// sample, since a fast failure is no sign of speed.
func (st *requestState) choose(s *peerSlot, now time.Time) {
	st.nOffered = 0
	if st.chosen != nil {
		st.chosen.local.failed(now)
	}
	if st.tracked {
		if st.chosen != nil {
			st.chosen.local.inflight.Add(-1)
		}
		s.local.begin()
	}
	st.chosen, st.chosenAt = s, now
	if !st.wasTried(s) && st.nTried < maxTries {
		st.tried[st.nTried] = s
		st.nTried++
	}
}

// finish ends the request: the chosen peer's in-flight count drops and its
// latency takes the sample.
func (st *requestState) finish(now time.Time) {
	if st.tracked && st.chosen != nil {
		st.chosen.local.end(now.Sub(st.chosenAt), now)
	}
	st.tracked = false
}
