package backhand

import (
	"encoding/json"
	"net/http"
	"regexp"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-backhand/backhand/candidacy"
)

func init() {
	caddy.RegisterModule(Upstreams{})
}

// Upstreams is a dynamic upstream source for reverse_proxy that returns the
// live peers of the backhand app's table: those heard from within MaxAge
// and not draining, in the stable order of their names, with their
// advertised address as the dial address. It works with every selection
// policy; `lb_policy backhand` adds the candidacy functions.
//
// It needs the backhand app (the `backhand` global option).
type Upstreams struct {
	// MaxAge is how recently a peer must have announced to be returned.
	// Default: the app's max_age (3 intervals).
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Tags keeps only peers that carry every one of these tags.
	Tags []string `json:"tags,omitempty"`

	// Name keeps only peers whose node name matches this regular
	// expression (RE2 syntax), like mod_backhand's byHostname.
	Name string `json:"name,omitempty"`

	// ExcludeSelf leaves this node out, for a dedicated balancer that
	// should not serve requests itself (mod_backhand's removeSelf).
	ExcludeSelf bool `json:"exclude_self,omitempty"`

	node   *node
	table  *candidacy.Table
	maxAge time.Duration
	name   *regexp.Regexp
	policy *Selection // the handler's lb_policy, when it is backhand
}

// CaddyModule returns the Caddy module information.
func (Upstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.backhand",
		New: func() caddy.Module { return new(Upstreams) },
	}
}

// Provision finds the backhand app and compiles the filters.
func (u *Upstreams) Provision(ctx caddy.Context) error {
	app, err := backhandApp(ctx, "dynamic backhand")
	if err != nil {
		return err
	}
	u.node, u.table = app.node, app.node.table
	if err := u.linkPolicy(parentProxy(ctx)); err != nil {
		return err
	}
	u.maxAge = time.Duration(u.MaxAge)
	if u.maxAge == 0 {
		u.maxAge = time.Duration(app.MaxAge)
	}
	if u.maxAge < 0 {
		return errModule("dynamic backhand", "max_age must be positive, got %v", u.maxAge)
	}
	if u.Name != "" {
		re, err := regexp.Compile(u.Name)
		if err != nil {
			return errModule("dynamic backhand", "name %q: %v", u.Name, err)
		}
		u.name = re
	}
	return nil
}

// linkPolicy links the source to the `lb_policy backhand` of the
// reverse_proxy handler h it belongs to, if that is its policy: the source
// then runs the policy's chain and offers only its best candidates.
// reverse_proxy provisions its selection policy before its upstream
// source (and drops the policy's JSON once loaded); should that order
// ever change, this fails with an error that says so instead of
// balancing without the chain.
func (u *Upstreams) linkPolicy(h *reverseproxy.Handler) error {
	if h == nil || h.LoadBalancing == nil {
		return nil
	}
	switch s := h.LoadBalancing.SelectionPolicy.(type) {
	case *Selection:
		u.policy = s
	case nil:
		if namesModule(h.LoadBalancing.SelectionPolicyRaw, "policy", "backhand") {
			return errModule("dynamic backhand", "the reverse_proxy's lb_policy backhand is not provisioned before its upstream source; this Caddy version is not supported")
		}
	}
	return nil
}

// namesModule reports whether raw, a module's JSON object, names module in
// its inline key.
func namesModule(raw json.RawMessage, key, module string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	var name string
	return json.Unmarshal(m[key], &name) == nil && name == module
}

// parentProxy returns the reverse_proxy handler that the module being
// provisioned belongs to, or nil.
func parentProxy(ctx caddy.Context) *reverseproxy.Handler {
	mods := ctx.Modules()
	if len(mods) < 2 {
		return nil
	}
	h, _ := mods[len(mods)-2].(*reverseproxy.Handler)
	return h
}

// GetUpstreams returns fresh upstreams: reverse_proxy writes into each
// Upstream it is given, so sharing them between requests would race. With
// the backhand policy, they are the chain's best few candidates, so the
// cost does not grow with the number of peers; otherwise all live peers,
// in one allocation.
func (u *Upstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	if u.policy != nil {
		if ups := u.candidates(r); ups != nil {
			return ups, nil
		}
	}
	return u.all(r), nil
}

// candidates offers the policy's best candidates: the plan that the
// backhand directive made with the chain on the first attempt, else what
// the chain leaves now. It returns nil when the chain leaves none, so
// that the fallback gets every live peer.
func (u *Upstreams) candidates(r *http.Request) []*reverseproxy.Upstream {
	st := ensureState(r)
	if plan := st.takePlan(); plan != nil {
		return u.offer(st, plan)
	}
	c := u.policy.evaluate(candidacy.Run{Request: r, Now: time.Now(), Tried: st.triedSlots(), Scope: (*sourceScope)(u)})
	defer c.Release()
	best := c.Head(u.policy.keep)
	if len(best) == 0 {
		return nil
	}
	return u.offer(st, best)
}

// offer turns the first keep candidates into upstreams.
func (u *Upstreams) offer(st *requestState, c []candidacy.Candidate) []*reverseproxy.Upstream {
	k := min(len(c), u.policy.keep)
	ups := make([]reverseproxy.Upstream, k)
	out := make([]*reverseproxy.Upstream, k)
	for i := range k {
		ups[i].Dial = c[i].Peer.Advertise
		out[i] = &ups[i]
	}
	st.offer(c[:k], out)
	return out
}

// all returns upstreams for every live peer that passes the filters.
func (u *Upstreams) all(r *http.Request) []*reverseproxy.Upstream {
	now := time.Now()
	out := u.within(u.maxAge, now)
	if len(out) == 0 {
		// No peer heard within max_age: announcements are being lost, or
		// every node restarted at once. A peer still in the table (heard
		// within evict_after) is likelier up than not, and reverse_proxy
		// retries one that is not; an empty pool would fail every request.
		out = u.within(u.table.Limits().EvictAfter, now)
	}
	markBackhanded(r, u.table)
	return out
}

// within returns upstreams for every peer heard within maxAge that passes
// the filters: two allocations, whatever the number of peers.
func (u *Upstreams) within(maxAge time.Duration, now time.Time) []*reverseproxy.Upstream {
	view := u.table.Peers()
	n := 0
	for _, s := range view {
		if u.keepWithin(s.Peer(), now, maxAge) {
			n++
		}
	}
	ups := make([]reverseproxy.Upstream, n)
	out := make([]*reverseproxy.Upstream, 0, n)
	for _, s := range view {
		if p := s.Peer(); len(out) < n && u.keepWithin(p, now, maxAge) {
			ups[len(out)].Dial = p.Advertise
			out = append(out, &ups[len(out)])
		}
	}
	return out
}

// sourceScope is the source's filters as a scope of the chain's run.
type sourceScope Upstreams

// Admits applies the source's filters. Unless the source sets its own
// max_age, the age limit is then the policy's (its starting list), which
// may differ from the app's.
func (s *sourceScope) Admits(p *candidacy.Peer, now time.Time) bool {
	u := (*Upstreams)(s)
	if u.MaxAge == 0 {
		return u.passes(p)
	}
	return u.keepWithin(p, now, u.maxAge)
}

// keepWithin reports whether p, usable under maxAge (Table.Usable: heard
// within it or a patience, or answering through a cluster-wide silence),
// is a candidate under this source's filters.
func (u *Upstreams) keepWithin(p *candidacy.Peer, now time.Time, maxAge time.Duration) bool {
	return u.passes(p) && u.table.Usable(p, now, maxAge)
}

// passes applies the source's own filters.
func (u *Upstreams) passes(p *candidacy.Peer) bool {
	switch {
	case p.Self && u.ExcludeSelf:
		return false
	case len(u.Tags) > 0 && !p.HasTags(u.Tags):
		return false
	case u.name != nil && !u.name.MatchString(p.Name):
		return false
	}
	return true
}

// backhandedVar marks, in the request's variables, that its upstreams came
// from the peer table, so backhand_track can tell a forward to a peer from
// a reverse_proxy to anything else.
const backhandedVar = "backhand.table"

func markBackhanded(r *http.Request, t *candidacy.Table) {
	if r != nil {
		caddyhttp.SetVar(r.Context(), backhandedVar, t)
	}
}

// forwardedToPeer reports whether r was proxied to a peer other than this
// node, through a backhand source.
func forwardedToPeer(r *http.Request) bool {
	if st := stateOf(r); st != nil {
		if fwd, ok := st.forwarded(); ok {
			return fwd
		}
	}
	t, ok := caddyhttp.GetVar(r.Context(), backhandedVar).(*candidacy.Table)
	if !ok {
		return false
	}
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return false
	}
	hostport, _ := repl.GetString("http.reverse_proxy.upstream.hostport")
	return hostport != "" && hostport != t.SelfAdvertise()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Upstreams)(nil)
	_ reverseproxy.UpstreamSource = (*Upstreams)(nil)
	_ candidacy.Scope             = (*sourceScope)(nil)
)
