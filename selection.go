package backhand

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
)

func init() {
	caddy.RegisterModule(Selection{})
}

// CandidacyFunction is one step of a backhand candidacy chain: it filters,
// reorders or truncates the candidate list. It is candidacy.Function, the
// interface that modules in the `backhand.functions` namespace implement
// (see package candidacy; examples/byheader is a complete, tested example).
type CandidacyFunction = candidacy.Function

// Selection is the `backhand` selection policy for reverse_proxy: it runs a
// chain of candidacy functions over the live peers of the backhand app's
// table, and the first candidate left wins. Upstreams that Caddy reports as
// not available (passive health checks, max requests) are never chosen.
//
// With `dynamic backhand` in the same reverse_proxy, the source runs the
// chain and hands reverse_proxy only the best `keep` candidates, so the
// work per request does not grow with the number of peers. With other
// upstreams, the chain's candidates are matched to the pool by their
// advertised address.
//
// When the chain leaves no candidate (or `off` ran), or none of its
// candidates is available, the fallback policy chooses among the pool's
// upstreams (with `dynamic backhand`, every live peer). In the `backhand`
// directive an empty chain means this node serves the request itself.
type Selection struct {
	// The chain: its candidacy functions ("chain"; default:
	// candidacy.DefaultChain), how recently a peer must have announced to
	// start on the list ("max_age"; default: the backhand app's max_age)
	// and how load-like functions estimate a peer's requests in flight
	// between its announcements ("predict"; default:
	// candidacy.DefaultPredict).
	candidacy.ChainConfig

	// Keep is how many of the chain's best candidates reverse_proxy gets
	// from `dynamic backhand` on each attempt: the first available one wins,
	// the others stand in when Caddy reports it unavailable. Default: 4.
	Keep int `json:"keep,omitempty"`

	// Fallback is the policy used when the chain leaves no available
	// candidate. Default: random.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	chain    candidacy.Chain
	fallback reverseproxy.Selector
	node     *node
	keep     int
	what     string // how errors name it: "lb_policy backhand", or "backhand" in the directive
}

const (
	defaultKeep = 4
	maxKeep     = 8
)

// CaddyModule returns the Caddy module information.
func (Selection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.backhand",
		New: func() caddy.Module { return new(Selection) },
	}
}

// Provision loads the chain and the fallback policy.
func (s *Selection) Provision(ctx caddy.Context) error {
	s.what = policyName(ctx)
	app, err := backhandApp(ctx, s.what)
	if err != nil {
		return err
	}
	s.node = app.node
	s.chain.Timed = app.node.decisions.timeChain
	s.chain.MaxAge = time.Duration(s.MaxAge)
	if s.chain.MaxAge == 0 {
		s.chain.MaxAge = time.Duration(app.MaxAge)
	}
	if s.chain.MaxAge < 0 {
		return errModule(s.what, "max_age must be positive, got %v", s.chain.MaxAge)
	}
	if s.chain.Predict, err = candidacy.ParsePredict(s.Predict); err != nil {
		return errModule(s.what, "%v", err)
	}
	s.keep = s.Keep
	if s.keep == 0 {
		s.keep = defaultKeep
	}
	if s.keep < 1 || s.keep > maxKeep {
		return errModule(s.what, "keep must be 1-%d, got %d", maxKeep, s.Keep)
	}
	if err := s.loadChain(ctx); err != nil {
		return err
	}
	if err := s.chain.FollowByAge(s.MaxAge != 0); err != nil {
		return errModule(s.what, "%v", err)
	}
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("%s: loading fallback policy: %v", s.what, err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	s.warnWithoutPeers(ctx)
	return nil
}

// policyName is how errors name the policy: as the user wrote it, the
// `backhand` directive's block or `lb_policy backhand`.
func policyName(ctx caddy.Context) string {
	mods := ctx.Modules()
	if len(mods) >= 3 {
		if _, ok := mods[len(mods)-3].(*Handler); ok {
			return "backhand"
		}
	}
	return "lb_policy backhand"
}

// warnWithoutPeers warns when the policy is not fed by `dynamic backhand`:
// it can then only choose among reverse_proxy's upstreams whose address a
// peer advertises, and leaves the others to the fallback policy.
func (s *Selection) warnWithoutPeers(ctx caddy.Context) {
	h := parentProxy(ctx)
	if h == nil {
		return
	}
	var src struct {
		Source string `json:"source"`
	}
	if json.Unmarshal(h.DynamicUpstreamsRaw, &src) == nil && src.Source == "backhand" {
		return
	}
	ctx.Logger().Warn("lb_policy backhand without `dynamic backhand`: the chain can choose only upstreams whose address a live peer advertises; " +
		"requests to other upstreams are left to the fallback policy and balanced without the peers' figures")
}

func (s *Selection) loadChain(ctx caddy.Context) error {
	if len(s.ChainRaw) == 0 {
		s.chain.Functions = candidacy.DefaultChain()
		return nil
	}
	mods, err := ctx.LoadModule(s, "ChainRaw")
	if err != nil {
		return fmt.Errorf("%s: candidacy chain: %v", s.what, err)
	}
	for _, m := range mods.([]any) {
		f, ok := m.(candidacy.Function)
		if !ok {
			return fmt.Errorf("%s: module %T is not a candidacy function", s.what, m)
		}
		s.chain.Functions = append(s.chain.Functions, f)
	}
	return nil
}

// evaluate runs the chain for run over this node's table, with what this
// node knows that the chain needs: its live busy count (and whether the
// request is already in it) and the check of byCookie's cookie. The
// caller releases the list.
func (s *Selection) evaluate(run candidacy.Run) *candidacy.Candidates {
	run.Busy, run.Cookies = &s.node.stats.busy, s.node
	run.SelfCounted = stateOf(run.Request).countedHere()
	return s.chain.Evaluate(s.node.table, &run)
}

// Select chooses an upstream from pool. When `dynamic backhand` already ran
// the chain for this attempt, the pool is the chain's best candidates in
// order and the first available one wins; otherwise the chain runs here
// and its candidates are matched to the pool by advertised address.
func (s *Selection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	st := ensureState(r)
	if offer := st.offerFor(pool); offer != nil {
		for _, o := range offer {
			if o.up.Available() {
				s.chose(r, st, o.slot, time.Now())
				return o.up
			}
		}
		return s.fallbackSelect(pool, r, w)
	}
	now := time.Now()
	c := s.evaluate(candidacy.Run{Request: r, Now: now, Tried: st.triedSlots()})
	defer c.Release()
	// Every candidate in order (none after off), ordered only as far as
	// read: the winner is mostly in the pool.
	for i := 0; ; i++ {
		head := c.Head(i + 1)
		if i >= len(head) {
			break
		}
		x := head[i]
		for _, up := range pool {
			if up.Dial == x.Peer.Advertise && up.Available() {
				s.chose(r, st, x.Slot(), now)
				return up
			}
		}
	}
	return s.fallbackSelect(pool, r, w)
}

// chose records the chosen peer in the request's state, which counts the
// request in flight there until it ends, and the outcome.
func (s *Selection) chose(r *http.Request, st *requestState, slot *candidacy.Slot, now time.Time) {
	o := outcomeForwarded
	if slot.Peer().Self {
		o = outcomeLocal
	}
	if st != nil {
		st.choose(r.Context(), slot, now, &s.node.stats)
	}
	markAttempt(r, st, slot.Name(), s.node.keys.Load(), now)
	s.record(st, o)
}

// record counts the outcome of a request the policy balances alone, once
// (the first choice; retries are not new decisions). The backhand
// directive records its own.
func (s *Selection) record(st *requestState, o outcome) {
	if st.claimRecording(rolePolicy) {
		s.node.decisions.record(o)
	}
}

// fallbackSelect lets the fallback policy choose, and counts it.
func (s *Selection) fallbackSelect(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	st := stateOf(r)
	s.record(st, outcomeFallback)
	up := s.fallback.Select(pool, r, w)
	if up != nil && st != nil && st.hop.From != "" {
		if p := s.node.table.ByAdvertise(up.Dial); p != nil {
			markAttempt(r, st, p.Name, s.node.keys.Load(), time.Now())
		}
	}
	return up
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Selection)(nil)
	_ reverseproxy.Selector = (*Selection)(nil)
)
