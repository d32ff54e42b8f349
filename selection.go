package backhand

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(Selection{})
}

// CandidacyFunction is one step of a backhand candidacy chain, as in
// mod_backhand: it filters, reorders or truncates the candidate list. Other
// Caddy modules can add functions by registering a module in the
// `backhand.functions` namespace that implements this interface (and
// caddyfile.Unmarshaler, to be written as a line of `lb_policy backhand`);
// examples/byheader is a complete, tested example.
type CandidacyFunction interface {
	Candidates(c *Candidates)
}

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
	// Chain is the list of candidacy functions, in order, each an object
	// with its name in "function" and its arguments, e.g.
	// {"function": "byAge", "max_age": "6s"}. Default: the recommended chain
	// (see DefaultChain).
	ChainRaw []json.RawMessage `json:"chain,omitempty" caddy:"namespace=backhand.functions inline_key=function"`

	// MaxAge is how recently a peer must have announced to start on the
	// list. Default: the backhand app's max_age.
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Predict says how load-like functions estimate a peer's requests in
	// flight between its announcements, which are up to an interval old:
	//
	//   - "off": the announced figure as it is (mod_backhand);
	//   - "blend": the announced figure plus the requests this node has
	//     sent the peer since that announcement and still has in flight
	//     (addPrediction; exact while the announcement is fresh);
	//   - "decay": this node's own requests in flight there, exactly, plus
	//     the others' share, which starts at what the announcement showed
	//     and decays, as the announcement ages, towards its long-run mean
	//     for that peer (time constant: the peer's announced response
	//     time). Stale figures then weigh little, persistent load from
	//     elsewhere still counts.
	//
	// Default: see DefaultPredict.
	Predict string `json:"predict,omitempty"`

	// Keep is how many of the chain's best candidates reverse_proxy gets
	// from `dynamic backhand` on each attempt: the first available one wins,
	// the others stand in when Caddy reports it unavailable. Default: 4.
	Keep int `json:"keep,omitempty"`

	// Fallback is the policy used when the chain leaves no available
	// candidate. Default: random.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	chain    []CandidacyFunction
	fallback reverseproxy.Selector
	node     *node
	maxAge   time.Duration
	predict  predictMode
	keep     int
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
	app, err := backhandApp(ctx, "lb_policy backhand")
	if err != nil {
		return err
	}
	s.node = app.node
	s.maxAge = time.Duration(s.MaxAge)
	if s.maxAge == 0 {
		s.maxAge = time.Duration(app.MaxAge)
	}
	if s.maxAge < 0 {
		return errOption("lb_policy backhand", "max_age must be positive, got %v", s.maxAge)
	}
	if s.predict, err = parsePredict(s.Predict); err != nil {
		return errOption("lb_policy backhand", "%v", err)
	}
	s.keep = s.Keep
	if s.keep == 0 {
		s.keep = defaultKeep
	}
	if s.keep < 1 || s.keep > maxKeep {
		return errOption("lb_policy backhand", "keep must be 1-%d, got %d", maxKeep, s.Keep)
	}
	if err := s.loadChain(ctx); err != nil {
		return err
	}
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("lb_policy backhand: loading fallback policy: %v", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	s.warnWithoutPeers(ctx)
	return nil
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
		s.chain = DefaultChain()
		return nil
	}
	mods, err := ctx.LoadModule(s, "ChainRaw")
	if err != nil {
		return fmt.Errorf("lb_policy backhand: loading candidacy functions: %v", err)
	}
	for _, m := range mods.([]any) {
		f, ok := m.(CandidacyFunction)
		if !ok {
			return fmt.Errorf("lb_policy backhand: module %T is not a candidacy function", m)
		}
		s.chain = append(s.chain, f)
	}
	return nil
}

// predictMode is how estimates account for the age of announcements.
type predictMode uint8

const (
	predictOff predictMode = iota
	predictBlend
	predictDecay
)

// DefaultPredict is the prediction mode used unless one is configured.
const DefaultPredict = "decay"

func parsePredict(s string) (predictMode, error) {
	if s == "" {
		s = DefaultPredict
	}
	switch s {
	case "off":
		return predictOff, nil
	case "blend", "on":
		return predictBlend, nil
	case "decay":
		return predictDecay, nil
	}
	return 0, fmt.Errorf("predict: want off, blend or decay, got %q", s)
}

// DefaultChain is the chain used when none is configured: drop peers heard
// from too long ago, sample three at random, and take the one whose
// estimated wait is shortest (requests in flight, estimated as the
// prediction mode says, relative to capacity, speed, weight and pace). A
// small random sample rather than log2(n) or all keeps stale figures from
// herding traffic onto one peer, and keeps the cost per request flat; with
// the decay estimate, three choices beat two in the simulator at every
// staleness and entry-point count tried, and in the real-process benchmark
// (BENCHMARKS.md).
func DefaultChain() []CandidacyFunction {
	return []CandidacyFunction{&ByAge{}, &ByRandom{}, &ByWindow{N: 3}, &ByWait{}}
}

// chainRun is what one run of the chain works with besides the table.
type chainRun struct {
	req   *http.Request
	now   time.Time
	tried *requestState   // peers this request already tried are no candidates
	scope peerFilter      // the upstream source's filters, if any
	rnd   func(n int) int // random numbers; nil: math/rand/v2
}

// evaluate runs the chain over n's table: the one place every caller (the
// policy, the source, the directive and the offline Board) runs it. The
// caller releases the list.
func (s *Selection) evaluate(n *node, run chainRun) *Candidates {
	c := newCandidates(run.req, run.now, n, s)
	c.exclude = run.tried
	if run.rnd != nil {
		c.rnd = run.rnd
	}
	if run.scope != nil {
		c.filter(run.scope)
	}
	for _, f := range s.chain {
		f.Candidates(c)
		if c.decision.off {
			break
		}
	}
	if rand.Uint32()%chainTimingSample == 0 {
		n.decisions.timeChain(time.Since(run.now))
	}
	return c
}

// chainTimingSample is how many runs of the chain one timed run stands
// for: reading the clock costs about a sixth of a default chain's run, so
// the duration histogram takes a sample rather than every run.
const chainTimingSample = 8

// Select chooses an upstream from pool. When `dynamic backhand` already ran
// the chain for this attempt, the pool is the chain's best candidates in
// order and the first available one wins; otherwise the chain runs here
// and its candidates are matched to the pool by advertised address.
func (s *Selection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	st := ensureState(r)
	if st.isOffered(pool) {
		for _, up := range pool {
			if up.Available() {
				s.chose(r, st, st.offeredPeer(pool, up), time.Now())
				return up
			}
		}
		return s.fallbackSelect(pool, r, w)
	}
	c := s.evaluate(s.node, chainRun{req: r, now: time.Now(), tried: st})
	defer c.release()
	for _, x := range c.head(len(c.view)) {
		for _, up := range pool {
			if up.Dial == x.Peer.Advertise && up.Available() {
				s.chose(r, st, x.slot, c.now)
				return up
			}
		}
	}
	return s.fallbackSelect(pool, r, w)
}

// chose records the chosen peer in the request's state, which counts the
// request in flight there until it ends, and the outcome.
func (s *Selection) chose(r *http.Request, st *requestState, slot *peerSlot, now time.Time) {
	o := outcomeForwarded
	if slot.cur.Load().Self {
		o = outcomeLocal
	}
	if st != nil {
		st.choose(r.Context(), slot, now, &s.node.stats)
	}
	markAttempt(r, st, slot.name, s.node.keys.Load(), now)
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
	if up != nil && st != nil && st.hop != nil {
		if p := s.node.table.byAdvertise(up.Dial); p != nil {
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
