package candidacy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"
)

// Function is one step of a backhand candidacy chain, as in mod_backhand:
// it filters, reorders or truncates the candidate list. Other Caddy
// modules can add functions by registering a module in the
// `backhand.functions` namespace that implements this interface (and
// caddyfile.Unmarshaler, to be written as a line of `lb_policy backhand`);
// examples/byheader is a complete, tested example.
type Function interface {
	Candidates(c *Candidates)
}

// Chain is a candidacy chain ready to run: its functions, in order, and
// how its list starts and estimates load.
type Chain struct {
	// Functions run in order over the list.
	Functions []Function

	// MaxAge is how recently a peer must have announced to start on the
	// list.
	MaxAge time.Duration

	// Predict is how load-like functions estimate a peer's requests in
	// flight between its announcements.
	Predict Predict

	// Timed, when set, is given how long a run took, for one run in
	// timingSample: reading the clock costs about a sixth of a default
	// chain's run, so a duration histogram takes a sample rather than
	// every run.
	Timed func(took time.Duration)
}

// FollowByAge makes the list start from the peers that the chain's byAge
// allows, when one allows older peers than MaxAge (mod_backhand's `byAge
// 10` would otherwise be a silent no-op under a 3 s max_age). With
// explicit set (the policy's own max_age was configured) such a byAge is
// an error instead, since the two contradict each other.
func (c *Chain) FollowByAge(explicit bool) error {
	for _, f := range c.Functions {
		a, ok := f.(*ByAge)
		if !ok || time.Duration(a.MaxAge) <= c.MaxAge {
			continue
		}
		if explicit {
			return fmt.Errorf("byAge %v allows older peers than the policy's max_age %v: raise max_age or lower byAge", time.Duration(a.MaxAge), c.MaxAge)
		}
		c.MaxAge = time.Duration(a.MaxAge)
	}
	return nil
}

// timingSample is how many runs of a chain one timed run stands for.
const timingSample = 8

// Run is what one run of a chain works with besides the table: the
// request, and what the caller knows of it and of this node.
type Run struct {
	Request *http.Request
	Now     time.Time

	// Rand draws random numbers, uniform in [0, n). Default: math/rand/v2.
	Rand func(n int) int

	// Tried are the peers this request already tried: no candidates again.
	Tried []*Slot

	// Scope, if set, admits the peers the caller allows (an upstream
	// source's own filters), before any function runs.
	Scope Scope

	// Busy is this node's live count of the requests it serves, fresher
	// than its own announcement; nil: its announcement counts.
	Busy *atomic.Int64

	// SelfCounted says that Busy already counts the request being
	// decided, which must not weigh against serving it here.
	SelfCounted bool

	// Cookies checks byCookie's cookie; nil: byCookie names its cookie
	// but keeps no client.
	Cookies Cookies
}

// Scope admits the peers a run may consider, one at a time, so the list
// can apply it lazily.
type Scope interface {
	Admits(p *Peer, now time.Time) bool
}

// Cookies checks the value of byCookie's cookie (signed by the caller)
// and returns the node it names.
type Cookies interface {
	CookieNode(value string) (node string, ok bool)
}

// Evaluate runs the chain over t's table for run: the one place every
// caller (the policy, the source, the directive, offline boards) runs it.
// The caller releases the list.
func (ch *Chain) Evaluate(t *Table, run *Run) *Candidates {
	c := newCandidates(t, run, ch.MaxAge, ch.Predict)
	for _, f := range ch.Functions {
		f.Candidates(c)
		if c.decision.off {
			break
		}
	}
	if ch.Timed != nil && rand.Uint32()%timingSample == 0 {
		ch.Timed(time.Since(run.Now))
	}
	return c
}

// Predict is how estimates account for the age of announcements.
type Predict uint8

// The prediction modes; see ParsePredict.
const (
	PredictOff Predict = iota
	PredictBlend
	PredictDecay
)

// DefaultPredict is the prediction mode used unless one is configured.
const DefaultPredict = "decay"

// ParsePredict reads a prediction mode: "off", "blend" (or "on"), "decay";
// "" is DefaultPredict.
func ParsePredict(s string) (Predict, error) {
	if s == "" {
		s = DefaultPredict
	}
	switch s {
	case "off":
		return PredictOff, nil
	case "blend", "on":
		return PredictBlend, nil
	case "decay":
		return PredictDecay, nil
	}
	return 0, fmt.Errorf("predict: want off, blend or decay, got %q", s)
}

// DefaultChain is the chain used when none is configured: drop peers heard
// from too long ago, shuffle, keep a sample of three when other deciders
// crowd the peers (else all; see BySample), and take the one whose
// estimated wait is shortest (requests in flight, estimated as the
// prediction mode says, relative to capacity, speed, weight and pace). A
// small random sample rather than log2(n) or all keeps stale figures read
// by many deciders from herding traffic onto one peer; a node that decides
// most of what its peers serve counts its own requests exactly and
// compares them all, as Caddy's least_conn does (the simulator's sweep in
// BENCHMARKS.md).
func DefaultChain() []Function {
	return []Function{&ByAge{}, &ByRandom{}, &BySample{N: 3, Max: 16}, &ByWait{}}
}
